"""Step 5, dispatch: hand the admitted request to what serves its route kind.

Passthrough routes are forwarded unparsed (``relay.intercept.passthrough``);
intercepted routes go to ``relay.intercept.session.run_interception`` with
the ports it records, counts, dumps and connects through. (A Responses
WebSocket upgrade is served by ``relay.request.websocket``.)
"""

from __future__ import annotations

from relay.intercept.passthrough import relay_passthrough
from relay.intercept.ports import InterceptionPorts
from relay.intercept.session import InterceptionContext, run_interception
from relay.observe.context import current_ids
from relay.providers.kinds import kind_for
from relay.request.context import Request
from relay.routes import with_query
from relay.services import Services


async def dispatch(req: Request) -> None:
    if req.routed.intercepted:
        await intercept(req)
    else:
        await passthrough(req)


async def passthrough(req: Request) -> None:
    route, upstream, services = req.routed, req.upstream, req.services
    assert upstream is not None
    provider, method = route.provider, req.method
    services.metrics.passthrough(
        provider.name, kind_for(provider.type).route_label(method, route.api_path), method
    )
    ids = current_ids()
    dump = services.dumps.begin_passthrough(
        provider.name,
        method,
        with_query(route.api_path, req.query_string),
        upstream.headers,
        request_id=ids.request_id if ids is not None else None,
    )
    await relay_passthrough(
        req.send,
        req.receive,
        upstream.client,
        method,
        upstream.url,
        upstream.headers,
        req.headers,
        req.style,
        req.body,
        failover=upstream.failover,
        dump=dump,
    )


def interception_ports(services: Services) -> InterceptionPorts:
    return InterceptionPorts(
        records=services.records or services.recorder,
        metrics=services.metrics,
        dumps=services.dumps,
        upstreams=services.upstreams,
        prices=services.prices,
        mcp=services.mcp,
    )


async def intercept(req: Request) -> None:
    route, caller, upstream, services = req.routed, req.authenticated, req.upstream, req.services
    assert upstream is not None and req.interception is not None and req.body is not None
    await run_interception(
        InterceptionContext(
            scope=req.scope,
            receive=req.receive,
            send=req.send,
            ports=interception_ports(services),
            provider=route.provider,
            kind=route.kind,
            api_path=route.api_path,
            principal=caller.principal,
            credential=caller.credential,
            upstream_headers=upstream.headers,
            actor_headers=upstream.actor_headers,
            client=upstream.client,
            url=upstream.url,
            failover=upstream.failover,
            body=req.body,
            prepared=req.interception,
            keepalive_interval=services.options.keepalive_interval,
            instance_id=services.instance.id if services.instance is not None else None,
            kind_state=req.gateway.kind_states[route.provider.type],
        )
    )
