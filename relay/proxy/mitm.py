"""Decrypting: TLS terminated with a minted leaf, the requests inside served by the relay's app.

After ``200 Connection Established`` to a host of the decrypted set, the
client's TLS is terminated with a leaf certificate for that host
(``relay.proxy.ca.LeafContexts``, minted in a worker thread; ALPN
``http/1.1`` only) and the plaintext is served by hypercorn's own HTTP/1.1
server (the same ``RelayTCPServer`` and ``RelayH11Protocol`` as the relay's
listener). Every request is handed to the relay's ASGI app as if it had been
sent to ``/api/v2/ai-gateway/<provider>/<path>``: it goes through the one
request path (``relay.request.serve``: route, authenticate, admit, build
upstream, dispatch), so it is authenticated, limited, recorded, dumped and
streamed byte for byte exactly like a direct request. The path is always put
under that prefix, so nothing inside a tunnel reaches the relay's own
endpoints (health, metrics, admin). A WebSocket upgrade inside the tunnel
(Codex's ``wss://api.openai.com/v1/responses``) is handed over the same way
and served by ``relay.request.websocket``, as a direct upgrade would be.

Credentials: the proxy user's relay token goes with each request. A request
whose own ``Authorization`` / ``X-Api-Key`` is that token, or that carries
none, is centralized (the provider's key is used); one that carries a
credential of its own is BYOK: the proxy adds the governance header with the
relay token (as Coder's proxy does) and the client's credential goes upstream.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, cast

import trio
from hypercorn.app_wrappers import ASGIWrapper
from hypercorn.config import Config
from hypercorn.trio.worker_context import WorkerContext

from relay import hypercorn_fixes
from relay.access import GOVERNANCE_HEADERS, read_client_credential
from relay.asgi import RESPONSE_STARTS, Headers, Message, Receive, Scope, Send, send_response
from relay.identity import Principal
from relay.providers.registry import ProviderRegistry
from relay.proxy.ca import LeafContexts
from relay.proxy.guard import Target
from relay.proxy.hosts import HostMap, build_host_map

log = logging.getLogger("relay.proxy")

GATEWAY_PREFIX = "/api/v2/ai-gateway/"
REQUEST_ID_HEADER = b"x-relay-proxy-request-id"
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class MitmMetrics(Protocol):
    def proxy_mitm_request(self, provider: str) -> None: ...

    def proxy_mitm_response(self, provider: str, code: int) -> None: ...


def mitm_config(handshake_timeout: float) -> Config:
    config = Config()
    config.accesslog = None
    config.errorlog = "-"
    config.loglevel = "WARNING"
    config.keep_alive_timeout = 75
    config.ssl_handshake_timeout = handshake_timeout
    return config


def with_proxy_credential(headers: Headers, token: str) -> Headers:
    """The request's headers with the proxy user's relay token where the relay reads it."""
    if any(k in GOVERNANCE_HEADERS for k, _ in headers):
        return headers  # the client chose how it authenticates: as sent
    credential = read_client_credential(headers)
    if credential.relay_token == token:
        return headers  # the relay token itself: centralized
    has_own = any(k in (b"authorization", b"x-api-key") for k, _ in headers)
    if has_own:
        # The client's own provider credential: BYOK, the proxy's token says who it is.
        return [*headers, (GOVERNANCE_HEADERS[0], token.encode("latin-1"))]
    return [*headers, (b"authorization", b"Bearer " + token.encode("latin-1"))]


class GatewayHandoff:
    """The ASGI app one decrypted tunnel is served by: the relay's app, under the provider's prefix."""

    def __init__(
        self,
        app: ASGIApp,
        provider: str,
        token: str,
        principal: Principal,
        host: str,
        metrics: Callable[[], MitmMetrics | None],
    ) -> None:
        self.app = app
        self.provider = provider
        self.token = token
        self.principal = principal
        self.host = host
        self._metrics = metrics
        self._prefix = f"{GATEWAY_PREFIX}{provider}"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            return
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode("latin-1")
        if not raw_path.startswith(b"/"):
            if kind == "http":
                await send_response(send, 400, b'{"error":"origin-form request targets only"}')
            else:
                await send({"type": "websocket.close", "code": 1008})
            return
        request_id = uuid.uuid4().hex[:16]
        handed = dict(scope)
        handed["path"] = self._prefix + scope["path"]
        handed["raw_path"] = self._prefix.encode("ascii") + raw_path
        handed["headers"] = with_proxy_credential(list(scope["headers"]), self.token)
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            # (websocket.http.response.start: a refused upgrade, answered over HTTP)
            if message["type"] in RESPONSE_STARTS:
                status = message.get("status", 101)
                message = {
                    **message,
                    "headers": [
                        *message.get("headers", []),
                        (REQUEST_ID_HEADER, request_id.encode()),
                    ],
                }
            await send(message)

        metrics = self._metrics()
        if metrics is not None:
            metrics.proxy_mitm_request(self.provider)
        log.info(
            "proxy: %s %s %s%s for %s (provider %s)",
            request_id,
            scope.get("method", "GET") if kind == "http" else "WEBSOCKET",
            self.host,
            scope["path"],
            self.principal.user_name,
            self.provider,
        )
        try:
            await self.app(handed, receive, send_with_id)
        finally:
            if metrics is not None:
                metrics.proxy_mitm_response(self.provider, status)


class Decryptor:
    """The ``Interceptor`` of ``relay.proxy.server``: the decrypted host set and the TLS server."""

    def __init__(
        self,
        app: ASGIApp,
        leaves: LeafContexts,
        registry: Callable[[], ProviderRegistry | None],
        *,
        metrics: Callable[[], MitmMetrics | None] = lambda: None,
        handshake_timeout: float = 10.0,
    ) -> None:
        hypercorn_fixes.install()  # `relay proxy` alone has not installed them
        self.app = app
        self.leaves = leaves
        self._registry = registry
        self._metrics = metrics
        self.config = mitm_config(handshake_timeout)
        self.context = WorkerContext(None)
        self._hosts = HostMap()
        self._version: tuple[int, int] | None = None

    @property
    def hosts(self) -> HostMap:
        """The current host map, rebuilt when the registry's snapshot was replaced."""
        registry = self._registry()
        if registry is None:
            return HostMap()
        version = (id(registry), registry.version)
        if version != self._version:
            hosts = build_host_map(registry.all())
            for line in hosts.warnings:
                log.warning("%s", line)
            # One assignment: a lookup sees the old map or the new one, whole.
            self._hosts, self._version = hosts, version
        return self._hosts

    def provider_for(self, host: str) -> str | None:
        return self.hosts.provider_for(host)

    async def serve(
        self, stream: trio.abc.Stream, target: Target, token: str, principal: Principal
    ) -> None:
        provider = self.provider_for(target.host)
        if provider is None:  # gone between the check and now: nothing to serve it with
            return
        context = self.leaves.cached(target.host)
        if context is None:
            context = await trio.to_thread.run_sync(self.leaves.context_for, target.host)
        if not isinstance(stream, trio.SocketStream):
            stream = _OverTLS(stream)  # TLS to the proxy itself: TLS inside TLS
        tls = trio.SSLStream(stream, context, server_side=True, https_compatible=True)
        app = GatewayHandoff(self.app, provider, token, principal, target.host, self._metrics)
        server = hypercorn_fixes.RelayTCPServer(
            ASGIWrapper(cast(Any, app)), self.config, self.context, _state(), cast(Any, tls)
        )
        await server.run()


def _state() -> Any:
    return {}


class _OverTLS(trio.abc.Stream):
    """The client's TLS stream to the proxy, with the ``socket`` hypercorn reads addresses from."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        inner: Any = stream
        while not isinstance(inner, trio.SocketStream):
            inner = inner.transport_stream
        self.socket = inner.socket

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.stream.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.stream.aclose()
