"""Step 4, build the upstream request: the client pool, URL, headers and credential.

Centralized requests carry the provider's key (its kind's ``key_auth_headers``); a
provider with several keys walks its key pool instead (``key_failover``: the
key goes on at each attempt). BYOK requests keep the person's own
credential. Actor headers are the relay's word: a client may not send its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import trio

from relay.access import upstream_request_headers
from relay.asgi import Headers
from relay.limits import RequestGuards
from relay.providers.kinds import kind_for
from relay.providers.types import Provider
from relay.request.admit import Admission
from relay.request.context import Request
from relay.routes import join_url
from relay.upstream.http11 import HTTP11Client
from relay.upstream.keypool import Failover


@dataclass(frozen=True, slots=True)
class Upstream:
    """Where and how the request goes upstream."""

    client: HTTP11Client  # the provider's pool (for bedrock: its runtime endpoint's)
    url: str
    headers: Headers  # the client's, minus hop-by-hop and relay credentials, plus the key
    actor_headers: Headers  # added to intercepted requests (empty when the option is off)
    failover: Failover | None  # the key pool walk (then ``headers`` carry no key)


def provider_auth_headers(provider: Provider) -> list[tuple[bytes, bytes]]:
    """The provider's first key, in the header its API expects."""
    if not provider.keys:
        return []
    return kind_for(provider.type).key_auth_headers(provider.keys[0])


def key_failover(guards: RequestGuards, provider: Provider, byok: bool) -> Failover | None:
    """The walk through the provider's key pool, or None: BYOK never fails over; a
    single key has nothing to fail over to (its answers pass through unchanged, and
    resting it would only refuse requests the provider might take). For bedrock
    the pool is of Bedrock API keys (access keys are one pair, signed instead)."""
    if byok or len(provider.keys) < 2:
        return None
    pool = guards.key_pools.get(provider.name, provider.keys)
    return Failover(pool, kind_for(provider.type).key_auth_headers, trio.current_time())


def build_upstream(req: Request, admission: Admission) -> Upstream:
    """The upstream request for ``req`` (admitted); the keys it tried are reported at its end."""
    route, caller = req.routed, req.authenticated
    provider = route.provider
    guards, services = req.guards, req.services
    failover = key_failover(guards, provider, caller.byok)
    if failover is not None:
        metrics = services.metrics

        def report_attempts() -> None:
            if failover.attempts:
                # Keys tried by this request (intercepted or passthrough), once it is over.
                metrics.key_pool_attempts(provider.name, failover.attempts)

        admission.hold(report_attempts)
    headers = upstream_request_headers(
        req.headers,
        byok=caller.byok,
        provider_auth=[] if failover else provider_auth_headers(provider),
    )
    actor_names = guards.actor_header_names
    headers = [(k, v) for k, v in headers if k not in actor_names]
    principal = caller.principal
    return Upstream(
        # provider.endpoint: base_url, or for bedrock the runtime endpoint (the handler's pool).
        client=services.upstreams.get(provider.name, provider.endpoint),
        url=join_url(
            provider.base_url,
            kind_for(provider.type).upstream_path(route.api_path),
            req.query_string,
        ),
        headers=headers,
        actor_headers=guards.actor_headers(principal.user_id, principal.user_name),
        failover=failover,
    )
