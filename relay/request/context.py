"""The one object a request's steps pass along, and how a step refuses it.

Each step (``relay.request.route``, ``authenticate``, ``admit``,
``upstream``, ``dispatch``) reads what the steps before it established from
the ``Request`` and adds its own result; a step that will not let the request
go on raises ``Refused``, which ``relay.request.serve`` turns into the
client's answer, in the error shape of the provider the request was for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn, Protocol

from relay.asgi import Headers, Receive, Scope, Send, send_response
from relay.intercept.base import send_error
from relay.providers.kinds import error_style_for
from relay.routes import ErrorStyle

if TYPE_CHECKING:
    from relay.intercept.session import Prepared
    from relay.limits import RequestGuards
    from relay.request.authenticate import Caller
    from relay.request.route import Route
    from relay.request.upstream import Upstream
    from relay.services import Services


class Gateway(Protocol):
    """What the steps need of the running app (``relay.app.RelayApp`` is one)."""

    services: Services | None  # None while starting or shutting down
    guards: RequestGuards | None  # built with the services
    kind_states: dict[str, Any]  # each provider kind's per-process state, by type
    failure: str | None  # a background service failed: nothing new is taken on


class Refused(Exception):
    """A step's refusal: the status and message the client is answered with.

    ``body`` replaces the error body built from ``message`` in the request's
    error style, for the few answers whose body is fixed.
    """

    def __init__(
        self,
        status: int,
        message: str = "",
        headers: Headers | None = None,
        *,
        body: bytes | None = None,
    ) -> None:
        super().__init__(status, message)
        self.status = status
        self.message = message
        self.headers = headers
        self.body = body

    async def answer(self, send: Send, style: ErrorStyle) -> None:
        if self.body is not None:
            await send_response(send, self.status, self.body, extra_headers=self.headers)
        else:
            await send_error(send, style, self.status, self.message, self.headers)


def refuse(status: int, message: str, headers: Headers | None = None) -> NoReturn:
    raise Refused(status, message, headers)


@dataclass(slots=True, eq=False)
class Request:
    """One HTTP request on its way through the steps.

    The fields after ``gateway`` start empty and are filled by the step that
    establishes them, in order; a step reads only what earlier steps filled
    (the accessors below say so when one is missing: a bug, not a refusal).
    """

    scope: Scope
    receive: Receive
    send: Send
    gateway: Gateway
    # The path as sent: an escaped "/" (a Bedrock inference profile ARN's
    # %2F) stays inside its segment, and escapes reach the provider unchanged.
    path: str = ""
    method: str = ""
    # The error shape refusals are answered in: guessed from the path until
    # the provider is known (route), then the provider's.
    style: ErrorStyle = "openai"
    route: Route | None = None  # route
    caller: Caller | None = None  # authenticate
    body: bytes | None = None  # admit (None: a passthrough request without a body)
    interception: Prepared | None = None  # admit, for intercepted routes
    upstream: Upstream | None = None  # build_upstream

    @classmethod
    def of(cls, gateway: Gateway, scope: Scope, receive: Receive, send: Send) -> Request:
        raw_path: bytes | None = scope.get("raw_path")
        path: str = raw_path.decode("latin-1") if raw_path else scope["path"]
        return cls(
            scope,
            receive,
            send,
            gateway,
            path=path,
            method=scope["method"],
            style=error_style_for(None, path),
        )

    @property
    def headers(self) -> Headers:
        headers: Headers = self.scope["headers"]
        return headers

    @property
    def query_string(self) -> bytes:
        query: bytes = self.scope.get("query_string", b"")
        return query

    @property
    def services(self) -> Services:
        services = self.gateway.services
        assert services is not None, "routed before the services were open"
        return services

    @property
    def guards(self) -> RequestGuards:
        guards = self.gateway.guards
        assert guards is not None, "routed before the guards were built"
        return guards

    @property
    def routed(self) -> Route:
        assert self.route is not None, "a step ran before route"
        return self.route

    @property
    def authenticated(self) -> Caller:
        assert self.caller is not None, "a step ran before authenticate"
        return self.caller
