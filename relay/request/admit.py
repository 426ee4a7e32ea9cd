"""Step 3, admit: every guard a request must pass, taken in one place.

What is taken and must be given back (the body's share of the body budget,
a concurrency slot, a circuit breaker ticket) is handed to the request's
``Admission`` the moment it is taken; ``relay.request.serve`` gives it all
back, in reverse order, in the one ``finally`` around admit and the steps
after it. So nothing is held outside that ``try``: a refusal, a bug or a
cancellation anywhere after a guard was taken still gives it back.

The order is the order a refusal is decided in: the rate limit (it costs
nothing), whether usage can be recorded, the body (read against its
deadline before a slot is taken: a client trickling its body holds its
connection, not a slot), the concurrency slot, then, for an intercepted
route, the body decoded (the breaker is keyed by the model it names), the
budgets (relay.budgets: spend in memory, no query) and the circuit breaker. ``limit_headers`` runs earlier, before authenticate reads
any header.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable

import msgspec
import trio

from relay.asgi import BodyTimeout, BodyTooLarge, read_body
from relay.budgets.minute import MinuteExceeded
from relay.budgets.tracker import BudgetExceeded
from relay.clients import client_session_id, detect_client
from relay.facts import Facts
from relay.intercept.base import Outcome
from relay.intercept.session import Prepared, prepare
from relay.limits import (
    MAX_HEADER_BLOCK,
    BodyBudgetExceeded,
    BodyClaim,
    RequestGuards,
    has_body,
    header_block_size,
)
from relay.providers.kinds import kind_for
from relay.record.events import InterceptionMeta, records_for
from relay.request.context import Refused, Request, refuse
from relay.routes import RouteKind
from relay.upstream.breaker import OPEN_MESSAGE, CircuitBreaker, is_failure
from relay.upstream.keypool import retry_after_header
from relay.wire.common import InvalidRequestBody
from relay.wire.errors import renderer_for

UNRECORDABLE_MESSAGE = (
    "the relay cannot record usage right now (database and spool unavailable); try again later"
)


class Admission:
    """What admit took for one request; ``release`` gives it all back, last taken first.

    Every release runs even when one before it raises (the error is raised
    after the others ran); releasing twice gives nothing back twice.
    """

    def __init__(self) -> None:
        self._stack = contextlib.ExitStack()

    def hold(self, release: Callable[[], object]) -> None:
        """Remember how to give back what was just taken."""
        self._stack.callback(release)

    def release(self) -> None:
        self._stack.close()


def limit_headers(req: Request) -> None:
    """431 for a header block larger than hypercorn's own limit (whatever TCP's split)."""
    if header_block_size(req.headers) > MAX_HEADER_BLOCK:
        refuse(431, "request header fields too large")


async def admit(req: Request, admission: Admission) -> None:
    """Take every guard for ``req`` into ``admission``, or refuse (429, 503, 413, 408, 400, 501)."""
    route, caller = req.routed, req.authenticated
    guards, services = req.guards, req.services
    options = services.options
    if guards.rate is not None:
        wait = guards.rate.check(caller.principal.api_key_id, trio.current_time())
        if wait is not None:
            retry = [(b"retry-after", retry_after_header(wait))]
            refuse(429, "relay rate limit exceeded", retry)
    if route.intercepted and options.require_recording and services.recorder.cannot_record:
        # REQUIRE_RECORDING: no usage may go unrecorded, so serve nothing new.
        refuse(503, UNRECORDABLE_MESSAGE, [(b"retry-after", b"5")])
    # From its first byte the body counts against the process's budget for
    # bodies in flight, until the request ends.
    claim = guards.body_budget.claim()
    admission.hold(claim.release)
    if route.intercepted or has_body(req.headers):
        req.body = await read_request_body(req, claim)
    if not guards.concurrency.try_acquire():
        refuse(503, f"too many concurrent requests (at most {guards.concurrency.limit})")
    admission.hold(guards.concurrency.release)
    if route.intercepted:
        req.interception = admit_interception(req, admission, claim, guards)


async def read_request_body(req: Request, claim: BodyClaim) -> bytes:
    """The whole body, within its size cap, its deadlines and the body budget."""
    options = req.services.options
    try:
        return await read_body(
            claim.counting(req.receive),
            options.max_request_body,
            total=options.request_body_timeout,
            idle=options.request_body_idle_timeout,
        )
    except BodyTooLarge as exc:
        refuse(413, str(exc))
    except BodyBudgetExceeded as exc:
        refuse(503, str(exc), [(b"retry-after", b"1")])
    except BodyTimeout as exc:
        refuse(408, str(exc), [(b"connection", b"close")])
    # ClientDisconnected goes through: there is no one left to answer.


def admit_interception(
    req: Request, admission: Admission, claim: BodyClaim, guards: RequestGuards
) -> Prepared:
    """Decode an intercepted request's body, then take its circuit breaker ticket."""
    route = req.routed
    provider = route.provider
    spec = kind_for(provider.type).specs.get(route.kind)
    if spec is None:
        refuse(501, f"route not implemented yet: {req.method} {route.api_path}")
    req.style = spec.error_style
    body = req.body
    assert body is not None  # an intercepted route's body is always read
    metrics = req.services.metrics
    try:
        prepared = prepare(
            spec,
            provider.type,
            route.kind,
            route.api_path,
            body,
            max_stored_prompt=req.services.options.max_stored_prompt or None,
            hold_rewrite=claim.grow,  # a rewritten body is held next to the original
            fold_model=metrics.models.fold,
        )
    except InvalidRequestBody as exc:
        refuse(400, str(exc))
    except BodyBudgetExceeded as exc:
        refuse(503, str(exc), [(b"retry-after", b"1")])
    budgets = req.services.budgets
    caller = req.authenticated
    if budgets is not None and budgets.budgets and not caller.credential.byok:
        principal = caller.principal
        exceeded = budgets.check(principal.user_id, principal.api_key_id, prepared.model)
        if exceeded is not None:
            refuse_over_budget(req, prepared, exceeded)
    minute = req.services.minute_limits
    if minute is not None and not caller.credential.byok:
        over = minute.admit(caller.principal.user_id, caller.principal.api_key_id)
        if over is not None:
            refuse_over_minute_limit(req, prepared, over)
    if guards.breakers is not None:
        now = trio.current_time()
        breaker = guards.breakers.get(provider.name, prepared.route, prepared.model_label, now)
        ticket = breaker.allow(now)
        if ticket is None:
            metrics.circuit_breaker_reject(provider.name, prepared.route, prepared.model_label)
            retry = [(b"retry-after", retry_after_header(breaker.retry_after(now)))]
            refuse(503, OPEN_MESSAGE, retry)
        outcome = prepared.outcome
        admission.hold(lambda: settle_breaker(breaker, ticket, outcome, provider.type))
    return prepared


def refuse_over_budget(req: Request, prepared: Prepared, exceeded: BudgetExceeded) -> None:
    """Record the refused request, then refuse it as the provider refuses an exhausted quota.

    429 in both shapes: OpenAI's ``insufficient_quota`` (what its API sends
    when the account's quota or budget is used up), Anthropic's
    ``rate_limit_error`` (it has no quota type). ``x-should-retry: false``
    tells both official SDKs not to retry it: it will not pass until the period resets.
    A native Bedrock route (``/model/{id}/invoke…``) gets Bedrock's own shape:
    ``x-amzn-errortype: ServiceQuotaExceededException`` and ``{"message": …}``.
    """
    message = exceeded.message()
    meta = record_refusal(req, prepared, "budget_exceeded", message)
    headers = [
        (b"x-should-retry", b"false"),
        (
            b"retry-after",
            str(max(int((exceeded.resets_at - meta.started_at).total_seconds()), 1)).encode(),
        ),
    ]
    if _native_bedrock(req):
        # Bedrock's own answer to a spent quota, as the AWS SDKs read it.
        headers.append((b"x-amzn-errortype", b"ServiceQuotaExceededException"))
        raise Refused(429, message, headers, body=msgspec.json.encode({"message": message}))
    renderer = renderer_for(req.style)
    if req.style == "openai":
        body = renderer.body(429, message, type_="insufficient_quota", code="insufficient_quota")
    else:
        body = renderer.body(429, message)
    raise Refused(429, message, headers, body=body)


def _native_bedrock(req: Request) -> bool:
    return req.routed.kind in (RouteKind.BEDROCK_INVOKE, RouteKind.BEDROCK_INVOKE_STREAM)


def record_refusal(
    req: Request, prepared: Prepared, error_type: str, message: str
) -> InterceptionMeta:
    """Record a request refused before it went upstream (status ``refused``)."""
    route, principal = req.routed, req.authenticated.principal
    meta = InterceptionMeta(
        provider_name=route.provider.name,
        provider_type=str(route.provider.type),
        model=prepared.model,
        route=route.api_path,
        initiator_id=uuid.UUID(principal.user_id),
        api_key_id=principal.api_key_id,
        client=detect_client(req.headers),
        client_session_id=client_session_id(req.headers, prepared.info.metadata_user_id),
        user_agent=_header(req, b"user-agent"),
        instance_id=instance.id if (instance := req.services.instance) is not None else None,
    )
    req.services.recorder.record(
        records_for(meta, Facts(), prepared.prompt, "refused", (error_type, message))
    )
    return meta


def refuse_over_minute_limit(req: Request, prepared: Prepared, over: MinuteExceeded) -> None:
    """Record the refused request, then refuse it as the provider refuses a rate limit.

    429 with Retry-After (the seconds to the next minute) in the request's
    shape: OpenAI's ``rate_limit_exceeded`` (type ``requests`` or
    ``tokens``, as OpenAI sends it), Anthropic's ``rate_limit_error``; on a
    native Bedrock route (``/model/{id}/invoke…``) Bedrock's own
    ``ThrottlingException`` (``x-amzn-errortype`` and ``{"message": …}``).
    The SDKs may retry it after Retry-After.
    """
    message = over.message()
    req.services.metrics.minute_limit_refused(over.what)
    record_refusal(req, prepared, "rate_limited", message)
    headers = [(b"retry-after", retry_after_header(over.retry_after))]
    if _native_bedrock(req):
        # Bedrock's own throttling answer: the AWS SDKs read the code from the header.
        headers.append((b"x-amzn-errortype", b"ThrottlingException"))
        raise Refused(429, message, headers, body=msgspec.json.encode({"message": message}))
    renderer = renderer_for(req.style)
    if req.style == "openai":
        body = renderer.body(429, message, type_=over.what, code="rate_limit_exceeded")
    else:
        body = renderer.body(429, message)
    raise Refused(429, message, headers, body=body)


def _header(req: Request, name: bytes) -> str | None:
    for key, value in req.headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def settle_breaker(
    breaker: CircuitBreaker, ticket: int, outcome: Outcome, provider_type: str
) -> None:
    """Tell the circuit how the request went.

    An upstream answer counts by its status (429, 503, 504, Anthropic 529:
    failure), a timeout counts as the 504 the client got. No answer at all
    (the client left first, the provider was unreachable, every key was
    resting, the request never went upstream) says nothing about overload:
    the ticket is handed back.
    """
    now = trio.current_time()
    if outcome.upstream_status is not None:
        breaker.record(ticket, failure=is_failure(outcome.upstream_status, provider_type), now=now)
    elif outcome.error_type == "upstream_timeout":
        breaker.record(ticket, failure=True, now=now)
    else:
        breaker.release(ticket)
