"""The request's steps (relay.request), each alone, without a server or a database.

route, authenticate, admit and build_upstream are called on a ``Request``
built from a hand-made ASGI scope; the gateway's services are the real
in-memory ones (provider registry, guards, metrics) with a fake token
verifier and recorder. ``serve`` is run with a later step made to raise or be
cancelled, to check that everything admit took is given back.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio

import relay.request
from relay.access import BYOK_DISABLED_BODY
from relay.asgi import Message
from relay.identity import Principal, Refusal
from relay.limits import RequestGuards
from relay.metrics import Metrics
from relay.options import load_options
from relay.providers.kinds import all_kinds
from relay.providers.registry import ProviderRegistry
from relay.providers.types import Provider, ProviderType
from relay.request import serve
from relay.request.admit import UNRECORDABLE_MESSAGE, Admission, admit, limit_headers
from relay.request.authenticate import Caller, authenticate
from relay.request.context import Refused, Request
from relay.request.route import Route, answer_local, route
from relay.request.upstream import build_upstream
from relay.routes import RouteKind
from relay.services import Services
from relay.upstream.clients import UpstreamClients
from relay.upstream.keypool import Failover

TOKEN = "relay_0123456789ab_" + "A" * 43
PRINCIPAL = Principal(user_id=str(uuid.uuid4()), user_name="ada", api_key_id="0123456789ab")
GATEWAY = "/api/v2/ai-gateway"
MESSAGES_BODY = json.dumps(
    {"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
).encode()


class FakeTokens:
    """A ``TokenVerifier``: one known token; ``down`` makes it unable to tell."""

    def __init__(self) -> None:
        self.down = False
        self.asked: list[str] = []

    async def check(self, token: str) -> Principal | Refusal:
        self.asked.append(token)
        if self.down:
            raise OSError("database unavailable")
        return PRINCIPAL if token == TOKEN else "unknown"


class FakeRecorder:
    """A ``RecordSink``; ``fail`` makes ``record`` raise, as a bug would."""

    def __init__(self) -> None:
        self.cannot_record = False
        self.fail = False
        self.records: list[object] = []

    def record(self, records: Sequence[object]) -> None:
        if self.fail:
            raise RuntimeError("recorder bug")
        self.records.extend(records)


class FakeDumps:
    def begin(self, *args: object, **kwargs: object) -> None:
        return None

    def begin_passthrough(self, *args: object, **kwargs: object) -> None:
        return None


@dataclass
class FakeGateway:
    services: Services | None
    guards: RequestGuards | None
    kind_states: dict[str, Any] = field(
        default_factory=lambda: {kind.type: kind.new_state({}) for kind in all_kinds()}
    )
    failure: str | None = None


PROVIDERS = {
    "anthropic": Provider(
        name="anthropic", type=ProviderType.ANTHROPIC, base_url="http://up.test", keys=("sk-1",)
    ),
    "openai": Provider(
        name="openai", type=ProviderType.OPENAI, base_url="http://up.test/v1", keys=("sk-a", "sk-b")
    ),
}


def gateway(**env: str) -> FakeGateway:
    options = load_options({f"CODER_AI_GATEWAY_{k}": v for k, v in env.items()})
    registry = ProviderRegistry()
    registry.replace(PROVIDERS, disabled=["retired"])
    metrics = Metrics()
    services = Services(
        options=options,
        db=None,  # type: ignore[arg-type]  # the steps under test never reach it
        providers=registry,
        tokens=FakeTokens(),  # type: ignore[arg-type]
        recorder=FakeRecorder(),  # type: ignore[arg-type]
        upstreams=UpstreamClients(connect_timeout=1, read_timeout=1),
        dsn_description="",
        metrics=metrics,
        dumps=FakeDumps(),  # type: ignore[arg-type]
    )
    return FakeGateway(services, RequestGuards.from_options(options))


class Client:
    """The ASGI side of one request: its body, then silence; what was sent back."""

    def __init__(self, body: bytes = b"") -> None:
        self.parts = [body] if body else []
        self.sent: list[Message] = []

    async def receive(self) -> Message:
        if self.parts:
            return {"type": "http.request", "body": self.parts.pop(0), "more_body": False}
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def send(self, message: Message) -> None:
        self.sent.append(message)

    @property
    def status(self) -> int:
        return int(self.sent[0]["status"])

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent[1:])


def request(
    gw: FakeGateway,
    path: str,
    *,
    method: str = "POST",
    headers: list[tuple[bytes, bytes]] | None = None,
    body: bytes = b"",
    query: bytes = b"",
) -> tuple[Request, Client]:
    if headers is None:
        headers = [(b"x-api-key", TOKEN.encode())]
    if body:
        headers = [*headers, (b"content-length", str(len(body)).encode())]
    scope: dict[str, Any] = {
        "type": "http",
        "method": method,
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "headers": headers,
    }
    client = Client(body)
    return Request.of(gw, scope, client.receive, client.send), client


def refusal(exc: pytest.ExceptionInfo[Refused]) -> tuple[int, str]:
    return exc.value.status, exc.value.message


# -- route --------------------------------------------------------------------------------------


def test_route_finds_the_provider_route_on_the_normalised_path():
    gw = gateway()
    req, _ = request(gw, f"{GATEWAY}/anthropic/v1/%6Dessages")
    found = route(req)
    assert found == Route(PROVIDERS["anthropic"], RouteKind.MESSAGES, "/v1/messages")
    assert found.intercepted and req.style == "anthropic"


def test_route_takes_the_legacy_prefix_and_passthrough_routes():
    gw = gateway()
    req, _ = request(gw, "/api/v2/aibridge/openai/v1/models/gpt-4.1", method="GET")
    found = route(req)
    assert (found.kind, found.api_path, found.intercepted) == (
        RouteKind.PASSTHROUGH,
        "/v1/models/gpt-4.1",
        False,
    )
    assert req.style == "openai"


@pytest.mark.parametrize(
    ("path", "method", "status", "says"),
    [
        (f"{GATEWAY}/nobody/v1/messages", "POST", 404, "nobody"),
        (f"{GATEWAY}/anthropic/v1/../v1/messages", "POST", 400, "'..'"),
        (f"{GATEWAY}/anthropic/v1//messages", "POST", 400, "empty segment"),
        (f"{GATEWAY}/openai/v1/models/a%2Fb", "GET", 400, "escaped"),
        (f"{GATEWAY}/anthropic/v1/messages", "GET", 404, "GET /v1/messages"),
        ("/v1/messages", "POST", 404, "/api/v2/ai-gateway/"),
    ],
)
def test_route_refuses_what_it_cannot_route(path, method, status, says):
    req, _ = request(gateway(), path, method=method)
    with pytest.raises(Refused) as exc:
        route(req)
    assert exc.value.status == status and says in exc.value.message


def test_route_tells_a_disabled_provider_apart_and_a_relay_not_started():
    req, _ = request(gateway(), f"{GATEWAY}/retired/v1/messages")
    with pytest.raises(Refused) as exc:
        route(req)
    assert exc.value.status == 503 and b"retired" in (exc.value.body or b"")
    req, _ = request(FakeGateway(None, None), f"{GATEWAY}/anthropic/v1/messages")
    with pytest.raises(Refused) as exc:
        route(req)
    assert refusal(exc) == (503, "the relay is starting or shutting down")


async def test_answer_local_serves_health_and_leaves_gateway_paths_to_route():
    gw = gateway()
    req, client = request(gw, "/healthz", method="GET")
    assert await answer_local(req)
    assert (client.status, client.body) == (200, b'{"status":"ok"}')
    req, client = request(gw, f"{GATEWAY}/anthropic/v1/messages")
    assert not await answer_local(req)
    assert client.sent == []
    gw.failure = "the recorder failed"
    req, _ = request(gw, f"{GATEWAY}/anthropic/v1/messages")
    with pytest.raises(Refused) as exc:
        await answer_local(req)
    assert exc.value.status == 503


# -- authenticate -------------------------------------------------------------------------------


async def test_authenticate_without_a_token_is_401_without_asking_the_verifier():
    gw = gateway()
    req, _ = request(gw, f"{GATEWAY}/anthropic/v1/messages", headers=[])
    with pytest.raises(Refused) as exc:
        await authenticate(req)
    assert exc.value.status == 401
    assert gw.services is not None and gw.services.tokens.asked == []  # type: ignore[attr-defined]


async def test_authenticate_refuses_an_unknown_token_and_accepts_a_known_one():
    gw = gateway()
    req, _ = request(gw, f"{GATEWAY}/anthropic/v1/messages", headers=[(b"x-api-key", b"nope")])
    with pytest.raises(Refused) as exc:
        await authenticate(req)
    assert exc.value.status == 401
    req, _ = request(gw, f"{GATEWAY}/anthropic/v1/messages")
    caller = await authenticate(req)
    assert caller.principal == PRINCIPAL and not caller.byok


async def test_authenticate_says_503_when_the_verifier_cannot_tell():
    gw = gateway()
    assert gw.services is not None
    gw.services.tokens.down = True  # type: ignore[attr-defined]
    req, _ = request(gw, f"{GATEWAY}/anthropic/v1/messages")
    with pytest.raises(Refused) as exc:
        await authenticate(req)
    assert refusal(exc) == (503, "the relay cannot verify tokens right now")


async def test_authenticate_byok_needs_allow_byok():
    byok = [(b"x-coder-ai-governance-token", TOKEN.encode()), (b"x-api-key", b"sk-own")]
    req, _ = request(gateway(ALLOW_BYOK="false"), f"{GATEWAY}/anthropic/v1/messages", headers=byok)
    with pytest.raises(Refused) as exc:
        await authenticate(req)
    assert (exc.value.status, exc.value.body) == (403, BYOK_DISABLED_BODY)
    req, _ = request(gateway(ALLOW_BYOK="true"), f"{GATEWAY}/anthropic/v1/messages", headers=byok)
    caller = await authenticate(req)
    assert caller.byok and caller.credential.byok_secret == "sk-own"


# -- admit --------------------------------------------------------------------------------------


def routed(gw: FakeGateway, path: str, **kwargs: Any) -> tuple[Request, Client]:
    """A request past route and authenticate (the caller is set without a verifier)."""
    req, client = request(gw, path, **kwargs)
    req.route = route(req)
    req.caller = Caller(PRINCIPAL, relay.access.read_client_credential(req.headers))
    return req, client


def test_limit_headers_refuses_a_header_block_over_the_limit():
    req, _ = request(gateway(), "/x", headers=[(b"x-big", b"a" * 17_000)])
    with pytest.raises(Refused) as exc:
        limit_headers(req)
    assert exc.value.status == 431


async def test_admit_takes_the_body_claim_and_a_slot_and_release_gives_them_back():
    gw = gateway(MAX_CONCURRENCY="4", CIRCUIT_BREAKER_ENABLED="true")
    guards = gw.guards
    assert guards is not None and guards.breakers is not None
    req, _ = routed(gw, f"{GATEWAY}/anthropic/v1/messages", body=MESSAGES_BODY)
    admission = Admission()
    await admit(req, admission)
    assert req.body == MESSAGES_BODY and req.interception is not None
    assert req.interception.info.model == "m" and req.interception.route == "/v1/messages"
    assert guards.concurrency.active == 1
    assert guards.body_budget.used == len(MESSAGES_BODY)
    admission.release()
    assert guards.concurrency.active == 0 and guards.body_budget.used == 0
    admission.release()  # twice gives nothing back twice
    assert guards.concurrency.active == 0 and guards.body_budget.used == 0


async def test_admit_reads_no_body_for_a_passthrough_without_one():
    gw = gateway()
    req, _ = routed(gw, f"{GATEWAY}/openai/v1/models", method="GET")
    admission = Admission()
    try:
        await admit(req, admission)
        assert req.body is None and req.interception is None
    finally:
        admission.release()


async def test_a_refusal_after_the_body_gives_back_what_was_taken():
    gw = gateway(MAX_CONCURRENCY="1")
    guards = gw.guards
    assert guards is not None
    assert guards.concurrency.try_acquire()  # someone else holds the only slot
    req, _ = routed(gw, f"{GATEWAY}/anthropic/v1/messages", body=MESSAGES_BODY)
    admission = Admission()
    with pytest.raises(Refused) as exc:
        try:
            await admit(req, admission)
        finally:
            admission.release()
    assert refusal(exc) == (503, "too many concurrent requests (at most 1)")
    assert guards.body_budget.used == 0 and guards.concurrency.active == 1


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        (b"[1]", 400, ""),
        (json.dumps({"messages": []}).encode(), 400, "model"),
        (b"x" * 2048, 413, "larger than 1024 bytes"),
    ],
)
async def test_admit_refuses_bodies_it_cannot_take(body, status, says):
    gw = gateway(MAX_REQUEST_BODY="1024")
    guards = gw.guards
    assert guards is not None
    req, _ = routed(gw, f"{GATEWAY}/anthropic/v1/messages", body=body)
    admission = Admission()
    with pytest.raises(Refused) as exc:
        try:
            await admit(req, admission)
        finally:
            admission.release()
    assert exc.value.status == status and says in exc.value.message
    assert guards.body_budget.used == 0 and guards.concurrency.active == 0


async def test_admit_rate_limit_and_unrecordable_refuse_before_the_body_is_read():
    gw = gateway(RATE_LIMIT="1", REQUIRE_RECORDING="true")
    req, client = routed(gw, f"{GATEWAY}/anthropic/v1/messages", body=MESSAGES_BODY)
    assert gw.services is not None
    gw.services.recorder.cannot_record = True  # type: ignore[misc]
    with pytest.raises(Refused) as exc:
        await admit(req, Admission())
    assert (exc.value.status, exc.value.message) == (503, UNRECORDABLE_MESSAGE)
    assert client.parts == [MESSAGES_BODY]  # unread
    with pytest.raises(Refused) as exc:
        await admit(req, Admission())  # the first call took the one token
    assert exc.value.status == 429 and exc.value.headers is not None
    assert exc.value.headers[0][0] == b"retry-after"


async def test_admit_refuses_an_open_circuit_and_counts_it():
    gw = gateway(CIRCUIT_BREAKER_ENABLED="true", CIRCUIT_BREAKER_FAILURE_THRESHOLD="1")
    guards, services = gw.guards, gw.services
    assert guards is not None and guards.breakers is not None and services is not None
    breaker = guards.breakers.get("anthropic", "/v1/messages", "m", trio.current_time())
    ticket = breaker.allow(trio.current_time())
    assert ticket is not None
    breaker.record(ticket, failure=True, now=trio.current_time())
    req, _ = routed(gw, f"{GATEWAY}/anthropic/v1/messages", body=MESSAGES_BODY)
    admission = Admission()
    with pytest.raises(Refused) as exc:
        try:
            await admit(req, admission)
        finally:
            admission.release()
    assert exc.value.status == 503 and exc.value.headers is not None
    assert exc.value.headers[0][0] == b"retry-after"
    rejects = services.metrics.registry.get_sample_value(
        "coder_ai_gateway_circuit_breaker_rejects_total",
        {"provider": "anthropic", "endpoint": "/v1/messages", "model": "m"},
    )
    assert rejects == 1
    assert guards.concurrency.active == 0 and guards.body_budget.used == 0


def test_admission_releases_in_reverse_order_and_past_a_failing_release():
    admission = Admission()
    order: list[str] = []
    admission.hold(lambda: order.append("claim"))
    admission.hold(lambda: order.append("slot"))

    def broken() -> None:
        order.append("broken")
        raise RuntimeError("release bug")

    admission.hold(broken)
    admission.hold(lambda: order.append("ticket"))
    with pytest.raises(RuntimeError):
        admission.release()
    assert order == ["ticket", "broken", "slot", "claim"]


# -- build the upstream request ---------------------------------------------------------------


async def test_build_upstream_puts_the_provider_key_on_and_the_relay_token_off():
    gw = gateway()
    headers = [
        (b"x-api-key", TOKEN.encode()),
        (b"anthropic-version", b"2023-06-01"),
        (b"x-ai-bridge-actor-id", b"forged"),  # an actor header: the relay's word only
    ]
    req, _ = routed(gw, f"{GATEWAY}/anthropic/v1/messages", headers=headers, query=b"beta=true")
    upstream = build_upstream(req, Admission())
    assert upstream.url == "http://up.test/v1/messages?beta=true"
    assert upstream.failover is None
    assert (b"x-api-key", b"sk-1") in upstream.headers
    assert (b"x-api-key", TOKEN.encode()) not in upstream.headers
    assert (b"anthropic-version", b"2023-06-01") in upstream.headers
    assert all(k != b"x-ai-bridge-actor-id" for k, _ in upstream.headers)


async def test_build_upstream_walks_a_key_pool_and_reports_the_keys_tried_at_release():
    gw = gateway()
    req, _ = routed(gw, f"{GATEWAY}/openai/v1/chat/completions")
    admission = Admission()
    upstream = build_upstream(req, admission)
    assert upstream.url == "http://up.test/v1/chat/completions"
    assert isinstance(upstream.failover, Failover)
    assert all(k != b"authorization" for k, _ in upstream.headers)  # put on per attempt
    assert upstream.failover.next_key(trio.current_time()) == "sk-a"
    admission.release()
    assert gw.services is not None
    attempts = gw.services.metrics.registry.get_sample_value(
        "coder_ai_gateway_key_pool_failover_attempts_count", {"provider": "openai"}
    )
    assert attempts == 1


async def test_build_upstream_byok_keeps_the_callers_own_key():
    gw = gateway(ALLOW_BYOK="true")
    headers = [(b"x-ai-gov-token", TOKEN.encode()), (b"authorization", b"Bearer sk-own")]
    req, _ = request(gw, f"{GATEWAY}/openai/v1/chat/completions", headers=headers)
    req.route = route(req)
    req.caller = await authenticate(req)
    upstream = build_upstream(req, Admission())
    assert upstream.failover is None  # BYOK never fails over
    assert (b"authorization", b"Bearer sk-own") in upstream.headers
    assert all(k != b"x-ai-gov-token" for k, _ in upstream.headers)


# -- serve: nothing admit took outlives the request ----------------------------------------------


def half_open_gateway() -> tuple[FakeGateway, Any]:
    """A gateway whose circuit for the request below allows exactly one trial."""
    gw = gateway(
        MAX_CONCURRENCY="4",
        CIRCUIT_BREAKER_ENABLED="true",
        CIRCUIT_BREAKER_FAILURE_THRESHOLD="1",
        CIRCUIT_BREAKER_TIMEOUT="0s",
        CIRCUIT_BREAKER_MAX_REQUESTS="1",
    )
    assert gw.guards is not None and gw.guards.breakers is not None
    now = trio.current_time()
    breaker = gw.guards.breakers.get("anthropic", "/v1/messages", "m", now)
    ticket = breaker.allow(now)
    assert ticket is not None
    breaker.record(ticket, failure=True, now=now)
    return gw, breaker


def assert_all_given_back(gw: FakeGateway, breaker: Any) -> None:
    guards = gw.guards
    assert guards is not None
    assert guards.concurrency.active == 0, "the concurrency slot leaked"
    assert guards.body_budget.used == 0, "the body claim leaked"
    trial = breaker.allow(trio.current_time())
    assert trial is not None, "the half-open circuit's trial ticket leaked"
    breaker.release(trial)


class StepFailed(Exception):
    pass


async def fail(*args: object) -> None:
    raise StepFailed


async def hang(*args: object) -> None:
    await trio.sleep_forever()


def fail_building(*args: object) -> None:
    raise StepFailed


@pytest.mark.parametrize(
    ("step", "replacement"),
    [("build_upstream", fail_building), ("dispatch", fail), ("dispatch", hang)],
    ids=["build_upstream raises", "dispatch raises", "dispatch cancelled"],
)
async def test_serve_gives_back_every_guard_when_a_later_step_fails(monkeypatch, step, replacement):
    gw, breaker = half_open_gateway()
    monkeypatch.setattr(relay.request, step, replacement)
    _, client = request(gw, f"{GATEWAY}/anthropic/v1/messages", body=MESSAGES_BODY)
    scope = {
        "type": "http",
        "method": "POST",
        "path": f"{GATEWAY}/anthropic/v1/messages",
        "headers": [
            (b"x-api-key", TOKEN.encode()),
            (b"content-length", str(len(MESSAGES_BODY)).encode()),
        ],
    }
    with trio.move_on_after(0.2) as cancelled:
        try:
            await serve(gw, scope, client.receive, client.send)
        except StepFailed:
            pass
    assert cancelled.cancelled_caught == (replacement is hang)
    assert_all_given_back(gw, breaker)


async def test_serve_gives_back_every_guard_when_the_interception_raises():
    gw, breaker = half_open_gateway()
    assert gw.services is not None
    gw.services.recorder.fail = True  # type: ignore[attr-defined]
    req, client = request(gw, f"{GATEWAY}/anthropic/v1/messages", body=MESSAGES_BODY)
    with pytest.raises(RuntimeError, match="recorder bug"):
        await serve(gw, req.scope, client.receive, client.send)
    assert_all_given_back(gw, breaker)


async def test_serve_answers_a_refusal_in_the_providers_error_shape():
    gw = gateway()
    req, client = request(gw, f"{GATEWAY}/anthropic/v1/messages", headers=[])
    await serve(gw, req.scope, client.receive, client.send)
    assert client.status == 401
    error = json.loads(client.body)
    assert error["type"] == "error" and error["error"]["type"] == "authentication_error"
    req, client = request(gw, f"{GATEWAY}/openai/v1/chat/completions", headers=[])
    await serve(gw, req.scope, client.receive, client.send)
    assert client.status == 401 and "type" in json.loads(client.body)["error"]


# -- the interception's dependencies --------------------------------------------------------------


def test_the_interception_loads_neither_the_services_nor_the_database_nor_auth():
    """relay.intercept reaches them only through its ports (relay.intercept.ports)."""
    code = (
        "import sys, relay.intercept.session, relay.intercept.passthrough\n"
        "print(sorted(m for m in ('relay.services', 'relay.auth', 'relay.metrics', 'asyncpg')"
        " if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
