"""One intercepted request, from its body to its records.

``run_interception`` reads and checks the body, consults the circuit
breaker, has the provider's kind prepare the exchange and the interception
shell run it, and
in one ``finally`` block settles everything the request leaves behind: the
dump, the breaker ticket, the recorder's rows and the metrics. A cancelled
request goes through the same block.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

import msgspec
import trio

from relay.access import ClientCredential
from relay.asgi import Headers, Receive, Scope, Send, header_str
from relay.auth import Principal
from relay.clients import client_session_id, detect_client
from relay.dump import DumpHandle
from relay.intercept.base import ApiSpec, Outcome, mark_interrupted, run_exchange, send_error
from relay.limits import BodyBudgetExceeded, BodyClaim, RequestGuards
from relay.metrics import InterceptionTimer
from relay.providers.kinds import ExchangeContext, kind_for
from relay.providers.types import Provider, mask_secret
from relay.record.events import (
    InterceptionMeta,
    cap_prompt,
    interception_started,
    new_id,
    records_for,
)
from relay.routes import RouteKind
from relay.services import Services
from relay.upstream.breaker import OPEN_MESSAGE, CircuitBreaker, is_failure
from relay.upstream.http11 import HTTP11Client
from relay.upstream.keypool import Failover, retry_after_header
from relay.wire.common import InvalidRequestBody

# Native Bedrock routes carry the model in the path, not in the body.
_MODEL_IN_PATH = frozenset({RouteKind.BEDROCK_INVOKE, RouteKind.BEDROCK_INVOKE_STREAM})
MISSING_MODEL = "model: a model name (a string) is required"


@dataclass(frozen=True, slots=True)
class RequestContext:
    """What the dispatcher established about a request before it is relayed."""

    scope: Scope
    receive: Receive
    send: Send
    services: Services
    guards: RequestGuards
    provider: Provider
    kind: RouteKind
    api_path: str
    principal: Principal
    credential: ClientCredential
    upstream_headers: Headers
    client: HTTP11Client
    url: str
    failover: Failover | None
    body: bytes  # read (within its deadline) before the concurrency slot was taken
    claim: BodyClaim  # the body's share of the process's budget, released by the dispatcher


async def run_interception(ctx: RequestContext, spec: ApiSpec, kind_state: Any) -> None:
    """Check and relay one intercepted request (its body already read), then record it.

    The body counts against the process's ``BodyBudget`` (``ctx.claim``, taken
    and released by the dispatcher) from its first byte until the request ends:
    it is held that long (forwarded, maybe again on another key, dumped).
    ``kind_state`` is the provider kind's per-process state (Bedrock: its AWS auths).
    """
    send, receive, scope = ctx.send, ctx.receive, ctx.scope
    services, provider, api_path = ctx.services, ctx.provider, ctx.api_path
    principal, credential, failover = ctx.principal, ctx.credential, ctx.failover
    started_at = datetime.now(UTC)
    interception_id = new_id()  # time-ordered (UUID version 7)
    body = ctx.body
    try:
        info = spec.parse_request(body)
    except InvalidRequestBody as exc:
        await send_error(send, spec.error_style, 400, str(exc))
        return
    if info.model is None and ctx.kind not in _MODEL_IN_PATH:
        # The provider would refuse it too; forwarding it would only spend a call.
        await send_error(send, spec.error_style, 400, MISSING_MODEL)
        return
    # Cut now: the whole text of a multi-megabyte prompt need not live as long as the stream.
    prompt = (
        cap_prompt(info.last_user_prompt, services.options.max_stored_prompt or None)
        if info.last_user_prompt is not None
        else None
    )
    info.last_user_prompt = None
    upstream_body, drop_injected = (
        spec.prepare_body(body, info) if spec.prepare_body else (body, False)
    )
    if upstream_body is not body:
        try:
            ctx.claim.grow(len(upstream_body))  # a rewritten body is held next to the original
        except BodyBudgetExceeded as exc:
            await send_error(send, spec.error_style, 503, str(exc), [(b"retry-after", b"1")])
            return
    guards = ctx.guards
    metrics = services.metrics
    # Metric labels and circuit keys: the route pattern, and the model name folded
    # into "other" beyond the cap (both are chosen by the client).
    provider_kind = kind_for(provider.type)
    route = provider_kind.route_label("POST", api_path)
    model_label = metrics.models.fold(info.model or _model_in_path(ctx.kind, api_path))
    breaker: CircuitBreaker | None = None
    ticket: int | None = None
    timer: InterceptionTimer | None = None
    dumps: list[DumpHandle] = []
    outcome = Outcome()
    if guards.breakers is not None:
        now = trio.current_time()
        breaker = guards.breakers.get(provider.name, route, model_label, now)
        ticket = breaker.allow(now)
        if ticket is None:
            metrics.circuit_breaker_reject(provider.name, route, model_label)
            retry = [(b"retry-after", retry_after_header(breaker.retry_after(now)))]
            await send_error(send, spec.error_style, 503, OPEN_MESSAGE, retry)
            return
    instance_id = services.instance.id if services.instance is not None else None

    def credential_hint() -> str | None:
        """The key in use, masked (a key pool may move on to another key meanwhile)."""
        return (
            mask_secret(
                credential.byok_secret
                or (failover.current if failover and failover.current else "")
                or (provider.keys[0] if provider.keys else "")
            )
            or None
        )

    headers = scope["headers"]
    # The request side, known before anything goes upstream; at the end only the
    # model (the upstream may settle it) and the key in use can have changed.
    start_meta = InterceptionMeta(
        id=interception_id,
        initiator_id=uuid.UUID(principal.user_id),
        api_key_id=principal.api_key_id,
        provider_name=provider.name,
        provider_type=str(provider.type),
        model=info.model or "",
        route=api_path,
        started_at=started_at,
        client=detect_client(headers),
        client_session_id=client_session_id(headers, info.metadata_user_id),
        user_agent=header_str(headers, b"user-agent"),
        credential_kind="byok" if credential.byok else "centralized",
        credential_hint=credential_hint(),
        instance_id=instance_id,
    )

    # From the ticket on, everything is inside the try: whatever raises, the
    # finally hands the ticket back and takes the request off the in-flight gauge.
    try:
        # Recorded now, completed in the finally: a process that dies meanwhile
        # leaves an in_progress row, which a surviving relay marks interrupted.
        services.recorder.record([interception_started(start_meta)])
        timer = metrics.interception_started(provider.name, model_label, route)
        actor = guards.actor_headers(principal.user_id, principal.user_name)

        def begin_dump(path: str, headers: Headers, dumped_body: bytes) -> DumpHandle | None:
            """Start the dump of what goes upstream (the Bedrock handler calls it once signed)."""
            handle = services.dumps.begin(
                provider.name, info.model, interception_id, "POST", path, headers, dumped_body
            )
            if handle is not None:
                dumps.append(handle)
            return handle

        # The provider's kind prepares the upstream call (Bedrock: translated and
        # signed) and how its answer is relayed; the shell runs it.
        exchange = await provider_kind.prepare_exchange(
            ExchangeContext(
                send=send,
                scope=scope,
                route=ctx.kind,
                provider=provider,
                spec=spec,
                info=info,
                body=body,
                upstream_body=upstream_body,
                drop_injected=drop_injected,
                upstream_headers=ctx.upstream_headers,
                actor_headers=actor,
                client=ctx.client,
                url=ctx.url,
                api_path=api_path,
                failover=failover,
                byok=credential.byok,
                upstreams=services.upstreams,
                begin_dump=begin_dump,
                outcome=outcome,
                state=kind_state,
            )
        )
        if exchange is not None:
            await run_exchange(
                send,
                receive,
                exchange.call,
                exchange.relay,
                spec.error_style,
                outcome,
                keepalive_interval=services.options.keepalive_interval,
            )
    except BaseException as exc:
        # Cancelled from outside (the shutdown grace period ran out) or a bug,
        # here or in the shell: the record must not claim a completed exchange.
        mark_interrupted(outcome, exc)
        raise
    finally:
        for handle in dumps:
            handle.finish()
        if breaker is not None and ticket is not None:
            settle_breaker(breaker, ticket, outcome, provider.type)
        meta = msgspec.structs.replace(
            start_meta,
            model=outcome.upstream_model or info.model or "",
            credential_hint=credential_hint(),
        )
        error = (outcome.error_type, outcome.error_message or "") if outcome.error_type else None
        services.recorder.record(
            records_for(
                meta,
                outcome.facts,
                prompt,
                outcome.status,
                error,
                ended_at=datetime.now(UTC),
            )
        )
        if timer is not None:
            metrics.interception_finished(
                timer,
                status=outcome.status,
                method="POST",
                initiator_id=principal.user_id,
                client=meta.client,
            )
        metrics.interception_facts(
            provider.name,
            meta.model,
            principal.user_id,
            meta.client,
            outcome.facts,
            prompt.text if prompt is not None else None,
        )
        if outcome.disconnect_phase:
            metrics.disconnect(outcome.disconnect_phase)
        if outcome.first_byte_at is not None and outcome.sent_at is not None:
            metrics.ttfb(provider.name, outcome.first_byte_at - outcome.sent_at)


def settle_breaker(
    breaker: CircuitBreaker, ticket: int, outcome: Outcome, provider_type: str
) -> None:
    """Tell the circuit how the request went.

    An upstream answer counts by its status (429, 503, 504, Anthropic 529:
    failure), a timeout counts as the 504 the client got. No answer at all
    (the client left first, the provider was unreachable, every key was
    resting) says nothing about overload: the ticket is handed back.
    """
    now = trio.current_time()
    if outcome.upstream_status is not None:
        breaker.record(ticket, failure=is_failure(outcome.upstream_status, provider_type), now=now)
    elif outcome.error_type == "upstream_timeout":
        breaker.record(ticket, failure=True, now=now)
    else:
        breaker.release(ticket)


def _model_in_path(kind: RouteKind, api_path: str) -> str:
    """The model id of a native Bedrock path (``/model/{id}/invoke``), else ``""``."""
    if kind not in _MODEL_IN_PATH:
        return ""
    return unquote(api_path.split("/", 3)[2])
