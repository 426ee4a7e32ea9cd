"""One pooled httpx client per provider instance.

A client is keyed by (provider name, base URL) so that a provider whose URL
changes gets a fresh pool while requests in flight keep the old one.
"""

from __future__ import annotations

import httpx


class UpstreamClients:
    def __init__(self, *, connect_timeout: float, read_timeout: float) -> None:
        self._timeout = httpx.Timeout(
            connect=connect_timeout, read=read_timeout, write=read_timeout, pool=connect_timeout
        )
        # Thousands of concurrent long streams share a provider: no pool cap
        # beyond what the OS allows; idle connections are kept for reuse.
        self._limits = httpx.Limits(
            max_connections=None, max_keepalive_connections=1000, keepalive_expiry=30.0
        )
        self._clients: dict[tuple[str, str], httpx.AsyncClient] = {}

    def get(self, provider_name: str, base_url: str) -> httpx.AsyncClient:
        key = (provider_name, base_url)
        client = self._clients.get(key)
        if client is None:
            client = httpx.AsyncClient(
                timeout=self._timeout,
                limits=self._limits,
                follow_redirects=False,
                # Headers come from the client request only; no httpx defaults
                # such as its own User-Agent.
                headers={},
                trust_env=False,
            )
            self._clients[key] = client
        return client

    async def aclose(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.aclose()
