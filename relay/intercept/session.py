"""One intercepted request, from its decoded body to its records.

``prepare`` decodes the body (only the fields the relay needs) and rewrites
it when the API asks for it; the request's admit step calls it, since the
circuit breaker is keyed by the model it names. ``run_interception`` has the
provider's kind prepare the exchange and the interception shell run it, and in one
``finally`` block settles what the interception leaves behind: the dump, the
recorder's rows and the metrics. A cancelled request goes through the same
block. The guards (concurrency slot, body budget, breaker ticket) are the
request's, taken and given back by ``relay.request.admit``.

The interception reaches the rest of the relay only through its ports
(``relay.intercept.ports``): it knows nothing of the services that implement them.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import msgspec

from relay.access import ClientCredential
from relay.asgi import Headers, Receive, Scope, Send, header_str
from relay.clients import client_session_id, detect_client
from relay.dump import DumpHandle
from relay.identity import Principal
from relay.intercept.base import ApiSpec, Outcome, mark_interrupted, run_exchange
from relay.intercept.injection import run_tool_loop
from relay.intercept.ports import InterceptionPorts
from relay.observe import tracing
from relay.observe.context import current_ids
from relay.providers.kinds import ExchangeContext, kind_for
from relay.providers.types import Provider, mask_secret
from relay.record.events import (
    CappedPrompt,
    InterceptionMeta,
    cap_prompt,
    interception_started,
    new_id,
    records_for,
)
from relay.routes import RouteKind
from relay.upstream.http11 import HTTP11Client
from relay.upstream.keypool import Failover
from relay.wire.common import InvalidRequestBody, RequestInfo

if TYPE_CHECKING:
    from relay.metrics import InterceptionTimer  # the metrics sink's, opaque here

# Native Bedrock routes carry the model in the path, not in the body.
_MODEL_IN_PATH = frozenset({RouteKind.BEDROCK_INVOKE, RouteKind.BEDROCK_INVOKE_STREAM})
MISSING_MODEL = "model: a model name (a string) is required"


@dataclass(slots=True, eq=False)
class Prepared:
    """An intercepted request, decoded and ready to go upstream."""

    spec: ApiSpec
    info: RequestInfo  # its prompt already moved to ``prompt``
    prompt: CappedPrompt | None  # the last user prompt, cut to what is stored
    upstream_body: bytes  # the client's body, or the API's rewrite of it
    drop_injected: bool  # the rewrite caused events the client must not see
    route: str  # the route pattern: metric label and circuit key
    model_label: str  # the model, folded into "other" beyond the metrics' cap
    outcome: Outcome = field(default_factory=Outcome)  # filled as it goes
    # The model the request names: its body's, or a native Bedrock path's
    # (/model/{id}/invoke); what budgets on one model are checked against.
    model: str = ""


def prepare(
    spec: ApiSpec,
    provider_type: str,
    kind: RouteKind,
    api_path: str,
    body: bytes,
    *,
    max_stored_prompt: int | None,
    hold_rewrite: Callable[[int], None],
    fold_model: Callable[[str], str],
) -> Prepared:
    """Decode ``body`` for the interception; ``InvalidRequestBody`` (a 400) when it cannot.

    A rewritten body is held next to the original: ``hold_rewrite(size)``
    claims it from the body budget (and raises when it cannot).
    """
    info = spec.parse_request(body)
    if info.model is None and kind not in _MODEL_IN_PATH:
        # The provider would refuse it too; forwarding it would only spend a call.
        raise InvalidRequestBody(MISSING_MODEL)
    # Cut now: the whole text of a multi-megabyte prompt need not live as long as the stream.
    prompt = (
        cap_prompt(info.last_user_prompt, max_stored_prompt)
        if info.last_user_prompt is not None
        else None
    )
    info.last_user_prompt = None
    upstream_body, drop_injected = (
        spec.prepare_body(body, info) if spec.prepare_body else (body, False)
    )
    if upstream_body is not body:
        hold_rewrite(len(upstream_body))
    # Metric labels and circuit keys: the route pattern, and the model name folded
    # into "other" beyond the cap (both are chosen by the client).
    route = kind_for(provider_type).route_label("POST", api_path)
    model = info.model or _model_in_path(kind, api_path)
    model_label = fold_model(model)
    return Prepared(
        spec, info, prompt, upstream_body, drop_injected, route, model_label, model=model
    )


@dataclass(frozen=True, slots=True)
class InterceptionContext:
    """What the request's steps established about an intercepted request."""

    scope: Scope
    receive: Receive
    send: Send
    ports: InterceptionPorts
    provider: Provider
    kind: RouteKind
    api_path: str
    principal: Principal
    credential: ClientCredential
    upstream_headers: Headers  # credentials swapped; without the actor headers
    actor_headers: Headers  # who is asking, for the provider (empty when the option is off)
    client: HTTP11Client
    url: str
    failover: Failover | None
    body: bytes  # as the client sent it (the Bedrock handler translates it itself)
    prepared: Prepared
    keepalive_interval: float
    instance_id: uuid.UUID | None  # this process in relay_instances
    kind_state: Any  # the provider kind's per-process state (Bedrock: its AWS auths)


async def run_interception(ctx: InterceptionContext) -> None:
    """Relay one intercepted request (admitted, its body decoded), then record it.

    The body counts against the process's ``BodyBudget`` until the request
    ends (the request's admission gives it back): it is held that long
    (forwarded, maybe again on another key, dumped).
    """
    send, receive, scope = ctx.send, ctx.receive, ctx.scope
    ports, provider, api_path = ctx.ports, ctx.provider, ctx.api_path
    principal, credential, failover = ctx.principal, ctx.credential, ctx.failover
    prepared = ctx.prepared
    spec, info, prompt, outcome = prepared.spec, prepared.info, prepared.prompt, prepared.outcome
    upstream_body, route, model_label = prepared.upstream_body, prepared.route, prepared.model_label
    started_at = datetime.now(UTC)
    interception_id = new_id()  # time-ordered (UUID version 7)
    ids = current_ids()
    if ids is not None:  # from here on in the response head and every log line
        ids.interception_id = str(interception_id)
    body = ctx.body
    metrics = ports.metrics
    timer: InterceptionTimer | None = None
    dumps: list[DumpHandle] = []
    instance_id = ctx.instance_id

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
        request_id=ids.request_id if ids is not None else None,
    )

    # The Intercept span (tracing on): its parent the client's traceparent.
    trace = (
        tracing.begin(
            "Intercept",
            headers,
            tracing.interception_attributes(str(provider.type), info.model or prepared.model),
        )
        if tracing.enabled()
        else None
    )
    # From the in_progress row on, everything is inside the try: whatever raises,
    # the finally completes the row and takes the request off the in-flight gauge.
    try:
        # Recorded now, completed in the finally: a process that dies meanwhile
        # leaves an in_progress row, which a surviving relay marks interrupted.
        with tracing.span("Intercept.RecordInterception"):
            ports.records.record([interception_started(start_meta)])
        timer = metrics.interception_started(provider.name, model_label, route)
        actor = ctx.actor_headers

        def begin_dump(path: str, headers: Headers, dumped_body: bytes) -> DumpHandle | None:
            """Start the dump of what goes upstream (the Bedrock handler calls it once signed)."""
            handle = ports.dumps.begin(
                provider.name,
                info.model,
                interception_id,
                "POST",
                path,
                headers,
                dumped_body,
                request_id=start_meta.request_id,
            )
            if handle is not None:
                dumps.append(handle)
            return handle

        # MCP tool injection: the servers' tools go into the request, and the answer
        # through the tool loop (relay.intercept.injection).
        kind = kind_for(provider.type)
        loop = tool_loop(ctx, kind.injects_tools)
        if loop is not None:
            upstream_body = msgspec.json.encode(loop.body)
        # The provider's kind prepares the upstream call (Bedrock: translated and
        # signed) and how its answer is relayed; the shell runs it.
        exchange = await kind.prepare_exchange(
            ExchangeContext(
                send=send,
                scope=scope,
                route=ctx.kind,
                provider=provider,
                spec=spec,
                info=info,
                body=body,
                upstream_body=upstream_body,
                drop_injected=prepared.drop_injected,
                upstream_headers=ctx.upstream_headers,
                actor_headers=actor,
                client=ctx.client,
                url=ctx.url,
                api_path=api_path,
                failover=failover,
                byok=credential.byok,
                upstreams=ports.upstreams,
                begin_dump=begin_dump,
                outcome=outcome,
                state=ctx.kind_state,
            )
        )
        if exchange is not None and loop is not None and ports.mcp is not None:
            await run_tool_loop(
                send,
                receive,
                exchange.call,
                loop,
                spec,
                outcome,
                ports.mcp,
                keepalive_interval=ctx.keepalive_interval,
            )
        elif exchange is not None:
            await run_exchange(
                send,
                receive,
                exchange.call,
                exchange.relay,
                spec.error_style,
                outcome,
                keepalive_interval=ctx.keepalive_interval,
            )
    except BaseException as exc:
        # Cancelled from outside (the shutdown grace period ran out) or a bug,
        # here or in the shell: the record must not claim a completed exchange.
        mark_interrupted(outcome, exc)
        raise
    finally:
        meta = msgspec.structs.replace(
            start_meta,
            model=outcome.upstream_model or info.model or "",
            credential_hint=credential_hint(),
        )
        try:
            record_interception(ports, meta, principal.user_id, outcome, prompt, timer, dumps)
        finally:
            end_trace(trace, outcome)


def end_trace(trace: tracing.Trace | None, outcome: Outcome) -> None:
    """The interception's Intercept span (tracing on) ends with what its outcome says."""
    if trace is not None:
        tracing.end_interception(
            trace,
            outcome.facts,
            outcome.status,
            outcome.error_type or outcome.facts.error_type,
            outcome.error_message or outcome.facts.error_message,
        )


def record_interception(
    ports: InterceptionPorts,
    meta: InterceptionMeta,
    user_id: str,
    outcome: Outcome,
    prompt: CappedPrompt | None,
    timer: InterceptionTimer | None,
    dumps: list[DumpHandle],
) -> None:
    """An interception is over: its dumps finished, its rows recorded, its metrics counted.

    ``meta`` is the request side as it ended (the model the upstream settled,
    the key in use); HTTP interceptions and the turns of a Responses
    WebSocket (``relay.intercept.responses.websocket``) both end here.
    """
    for handle in dumps:
        handle.finish()
    metrics = ports.metrics
    error = (outcome.error_type, outcome.error_message or "") if outcome.error_type else None
    with tracing.span("Intercept.RecordInterceptionEnded") as span:
        rows = records_for(
            meta,
            outcome.facts,
            prompt,
            outcome.status,
            error,
            ended_at=datetime.now(UTC),
            prices=ports.prices,
        )
        ports.records.record(rows)
        if span is not None:
            span.set_attribute("relay.records", len(rows))
    if timer is not None:
        metrics.interception_finished(
            timer,
            status=outcome.status,
            method="POST",
            initiator_id=user_id,
            client=meta.client,
        )
    metrics.interception_facts(
        meta.provider_name,
        meta.model,
        user_id,
        meta.client,
        outcome.facts,
        prompt.text if prompt is not None else None,
    )
    if outcome.disconnect_phase:
        metrics.disconnect(outcome.disconnect_phase)
    if outcome.first_byte_at is not None and outcome.sent_at is not None:
        metrics.ttfb(meta.provider_name, outcome.first_byte_at - outcome.sent_at)


def is_small_fast_model(model: str | None) -> bool:
    """A provider's small, fast model (Claude Code's haiku calls): no tools are injected."""
    return model is not None and "haiku" in model.lower()


def tool_loop(ctx: InterceptionContext, kind_injects: bool) -> Any | None:
    """The API's tool loop when MCP tools are injected into this request, else None.

    Nothing is injected into a small/fast model's request, nor by a provider
    kind or an API without a tool loop; a body that is not a JSON object keeps
    its bytes.
    """
    mcp, spec, info = ctx.ports.mcp, ctx.prepared.spec, ctx.prepared.info
    if mcp is None or spec.tool_loop is None or not kind_injects:
        return None
    if is_small_fast_model(info.model):
        return None
    toolset = mcp.snapshot()
    if not toolset:
        return None
    try:
        # The client's own body: the loop makes its own rewrite (chat's include_usage too).
        body = msgspec.json.decode(ctx.body)
    except msgspec.DecodeError:
        return None
    if not isinstance(body, dict):
        return None
    return spec.tool_loop(body, toolset)


def _model_in_path(kind: RouteKind, api_path: str) -> str:
    """The model id of a native Bedrock path (``/model/{id}/invoke``), else ``""``."""
    if kind not in _MODEL_IN_PATH:
        return ""
    return unquote(api_path.split("/", 3)[2])
