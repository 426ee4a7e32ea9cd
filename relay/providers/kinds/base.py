"""What a provider type is: one object that holds everything that differs by type.

A ``ProviderKind`` says which routes a provider of its type intercepts and
which it passes through, how a provider key goes on the upstream request, how
a client's API path maps onto the provider's base URL, which error shape its
clients read, which ``ApiSpec`` (request parser, accumulator, stream errors)
serves each intercepted route, and how one intercepted exchange is prepared
(``prepare_exchange``: the upstream call and the ``ResponseRelay`` that
carries its answer to the client). The defaults are those of an API the relay
forwards as is (Anthropic, OpenAI); Bedrock overrides the exchange (it signs
the request and translates the answer).

Adding a type: one module in this package with a subclass, registered in
``relay.providers.kinds`` (see docs/architecture.md, "How to add a provider type").
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from relay.asgi import Headers, Scope, Send
from relay.dump import DumpHandle
from relay.intercept.base import ApiSpec, Exchange, Outcome, SSERelay, UpstreamCall
from relay.intercept.ports import UpstreamPool
from relay.providers.types import Provider
from relay.routes import Route, RouteKind, with_query
from relay.upstream.http11 import HTTP11Client
from relay.upstream.keypool import Failover
from relay.wire.common import RequestInfo
from relay.wire.errors import ErrorStyle


@dataclass(frozen=True, slots=True)
class ExchangeContext:
    """What the relay knows of an intercepted request once it is admitted."""

    send: Send
    scope: Scope
    route: RouteKind
    provider: Provider
    spec: ApiSpec
    info: RequestInfo
    body: bytes  # as the client sent it
    upstream_body: bytes  # after the spec's rewrite (the chat include_usage), else ``body``
    drop_injected: bool  # the rewrite caused events the client must not see
    # The client's headers to forward, the provider's credential on them (unless a
    # key pool adds one per attempt, or BYOK), actor headers not yet added.
    upstream_headers: Headers
    actor_headers: Headers
    client: HTTP11Client  # the pool of ``provider.endpoint``
    url: str  # base URL + upstream_path(api path) + the query string
    api_path: str
    failover: Failover | None
    byok: bool
    upstreams: UpstreamPool  # relay.upstream.clients.UpstreamClients
    # begin_dump(path, headers, body): the dump of what goes upstream (None: dumps off).
    begin_dump: Callable[[str, Headers, bytes], DumpHandle | None]
    outcome: Outcome
    state: Any  # the kind's per-process state (``new_state``)


class ProviderKind:
    """One provider type. Subclass it, set the class attributes, override what differs."""

    type: ClassVar[str]
    error_style: ClassVar[ErrorStyle]
    # Bridged (parsed, accounted, recorded) and forwarded-unparsed routes.
    intercepted: ClassVar[tuple[Route, ...]]
    passthrough: ClassVar[tuple[Route, ...]] = ()
    specs: ClassVar[Mapping[RouteKind, ApiSpec]]
    # What a client's base URL adds after /api/v2/ai-gateway/<name> (OpenAI SDKs: /v1).
    client_base_path: ClassVar[str] = ""
    # MCP tools are injected into its requests (the request goes as a JSON body of the
    # API the client speaks, answered by the same upstream for each round).
    injects_tools: ClassVar[bool] = True
    # The API path a Responses WebSocket is bridged on (None: upgrades are answered 426).
    responses_websocket: ClassVar[str | None] = None

    def route(self, method: str, api_path: str) -> Route | None:
        for route in self.intercepted:
            if route.matches(method, api_path):
                return route
        for route in self.passthrough:
            if route.matches(method, api_path):
                return route
        return None

    def match(self, method: str, api_path: str) -> RouteKind | None:
        route = self.route(method, api_path)
        return route.kind if route is not None else None

    def route_label(self, method: str, api_path: str) -> str:
        """The route pattern an API path matched (metrics, circuit keys); ``other`` if none."""
        route = self.route(method, api_path)
        return route.label if route is not None else "other"

    def key_auth_headers(self, key: str) -> Headers:
        """One provider key on the upstream request (default: ``Authorization: Bearer``)."""
        return [(b"authorization", b"Bearer " + key.encode("latin-1"))]

    def upstream_path(self, api_path: str) -> str:
        """The path appended to the provider's base URL for a client's API path."""
        return api_path.lstrip("/")

    def new_state(self, env: Mapping[str, str] | None) -> Any:
        """Per-process state of this type (credentials it resolved, say); None if none."""
        return None

    async def startup(self, state: Any, providers: Iterable[Provider]) -> None:
        """At start, with every provider: raise to stop the start (a provider that cannot work)."""

    async def prepare_exchange(self, ctx: ExchangeContext) -> Exchange | None:
        """The upstream call and the relay of its answer; None when it answered the client itself.

        Default: the request goes as the client sent it (the spec's rewrite
        aside), its answer is relayed and decoded as SSE.
        """
        headers = ctx.upstream_headers + ctx.actor_headers
        dump = ctx.begin_dump(
            with_query(ctx.api_path, ctx.scope.get("query_string", b"")),
            headers,
            ctx.upstream_body,
        )
        call = UpstreamCall(
            ctx.client,
            "POST",
            ctx.url,
            headers,
            ctx.upstream_body,
            failover=ctx.failover,
            dump=dump,
        )
        return Exchange(call, SSERelay(ctx.spec, drop_injected=ctx.drop_injected))
