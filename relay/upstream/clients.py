"""One pooled upstream client per provider instance.

A client is keyed by (provider name, base URL) so that a provider whose URL
changes gets a fresh pool while requests in flight keep the old one.
"""

from __future__ import annotations

from relay.upstream.http11 import HTTP11Client


class UpstreamClients:
    def __init__(self, *, connect_timeout: float, read_timeout: float) -> None:
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._clients: dict[tuple[str, str], HTTP11Client] = {}

    def get(self, provider_name: str, base_url: str) -> HTTP11Client:
        key = (provider_name, base_url)
        client = self._clients.get(key)
        if client is None:
            # Thousands of concurrent long streams share a provider: no cap on
            # connections beyond what the OS allows; idle ones are kept for reuse.
            client = HTTP11Client(
                connect_timeout=self._connect_timeout,
                read_timeout=self._read_timeout,
                max_idle_per_origin=1000,
                idle_expiry=30.0,
            )
            self._clients[key] = client
        return client

    async def aclose(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.aclose()
