"""Step 1, route: which endpoint or provider route a request is for.

``answer_local`` serves what is the relay's own (health, readiness, metrics,
the admin API and the console) and what is refused before anything else (a failing relay, an
ambiguous framing). ``route`` finds the provider and the route kind of a
gateway path, normalising the path first: what matched is what runs upstream.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from functools import partial

from relay import client_errors
from relay.admin.api import handle_admin
from relay.asgi import BodyTimeout, BodyTooLarge, ClientDisconnected, read_body, send_response
from relay.console.app import handle_console
from relay.console.auth import admin_api_check
from relay.limits import ambiguous_framing
from relay.providers.kinds import error_style_for, kind_for
from relay.providers.types import Provider
from relay.readiness import readiness
from relay.request.context import Refused, Request, refuse
from relay.routes import (
    ErrorStyle,
    PathRefused,
    RouteKind,
    check_passthrough_path,
    normalise_api_path,
    split_gateway_path,
)

AMBIGUOUS_FRAMING = "a request may not have both Content-Length and Transfer-Encoding"


@dataclass(frozen=True, slots=True)
class Route:
    """A provider route: the provider, what kind of route, and the path as forwarded."""

    provider: Provider
    kind: RouteKind
    api_path: str  # normalised

    @property
    def intercepted(self) -> bool:
        return self.kind is not RouteKind.PASSTHROUGH


async def answer_local(req: Request) -> bool:
    """Answer the relay's own endpoints; True when the request was answered here."""
    path = req.path
    gateway = req.gateway
    if gateway.failure is not None:
        # Shutting down after a service failed: nothing new is taken on.
        if path == "/healthz":
            await send_response(req.send, 503, b'{"status":"failing"}')
            return True
        refuse(503, "the relay is restarting; retry shortly")
    if ambiguous_framing(req.headers):
        # A front end may frame this request by Content-Length, hypercorn frames
        # it by Transfer-Encoding: what one takes for the body the other runs as
        # the next request. Refused, and the connection with it. The body (as
        # hypercorn frames it) is read first: answering mid-body races
        # hypercorn's own close of the connection, and the answer is lost.
        with contextlib.suppress(BodyTooLarge, BodyTimeout, ClientDisconnected):
            await read_body(req.receive, 64 * 1024, total=2.0, idle=1.0)
        req.style = _style_before_routing(req)
        refuse(400, AMBIGUOUS_FRAMING, [(b"connection", b"close")])
    if path == "/healthz":
        await send_response(req.send, 200, b'{"status":"ok"}')
        return True
    services = gateway.services
    if path == "/readyz":
        status, body = await readiness(services)
        await send_response(req.send, status, body)
        return True
    if services is None:
        return False
    if path == "/metrics" and not services.options.metrics_address:
        await services.metrics.metrics_endpoint(req.scope, req.receive, req.send)
        return True
    split = split_gateway_path(path)
    if split is not None and split[0] == "proxy":  # reserved: the AI Gateway Proxy's CA
        ca_pem: bytes | None = getattr(gateway, "proxy_ca_pem", None)
        if split[1] == "/ca-cert.pem" and ca_pem is not None and req.method in ("GET", "HEAD"):
            await send_response(req.send, 200, ca_pem, content_type=b"application/x-pem-file")
            return True
        refuse(404, "the AI Gateway Proxy is not running here (PROXY_ENABLED)")
    if split is not None and split[0] == "admin":  # reserved: the admin API, not a provider
        if split[1] == "/ui" or split[1].startswith("/ui/"):
            await handle_console(req.scope, req.receive, req.send, services)
            return True
        await handle_admin(
            req.scope,
            req.receive,
            req.send,
            services.db,
            services.options.admin_token,
            check_user=partial(admin_api_check, services.db),
        )
        return True
    return False


def route(req: Request) -> Route:
    """The provider route of a gateway path, or ``Refused`` (404, 400, 503)."""
    provider, api_path = find_provider(req)
    try:
        kind = kind_for(provider.type).match(req.method, api_path)
        if kind is RouteKind.PASSTHROUGH:
            check_passthrough_path(api_path)
    except PathRefused as exc:
        refuse(400, str(exc))
    if kind is None:
        refuse(404, client_errors.route_not_supported(provider, req.method, api_path))
    return Route(provider, kind, api_path)


def find_provider(req: Request) -> tuple[Provider, str]:
    """The provider a gateway path names and its API path, normalised; or ``Refused``."""
    split = split_gateway_path(req.path)
    services = req.gateway.services
    if services is None:
        refuse(503, "the relay is starting or shutting down")
    if split is None:
        message = client_errors.outside_the_gateway(req.method, req.path, services.providers.all())
        refuse(404, message)
    name, api_path = split
    provider = services.providers.get(name)
    req.style = error_style_for(provider.type if provider else None, api_path)
    if provider is None:
        if name in services.providers.disabled:
            raise Refused(503, body=client_errors.disabled_provider_body(req.style, name))
        refuse(404, client_errors.unknown_provider(name, services.providers.all()))
    try:
        # Matched, forwarded and dumped as normalised: what matched is what runs upstream.
        return provider, normalise_api_path(api_path)
    except PathRefused as exc:
        refuse(400, str(exc))


def _style_before_routing(req: Request) -> ErrorStyle:
    """The error shape for a path before it is routed (its provider's, when known)."""
    split = split_gateway_path(req.path)
    services = req.gateway.services
    provider = services.providers.get(split[0]) if split and services is not None else None
    return error_style_for(provider.type if provider else None, split[1] if split else req.path)
