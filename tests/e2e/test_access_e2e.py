"""Access control and resilience end to end: the official SDKs through the real relay.

BYOK with each governance header and each provider, allow-byok off, key-pool
failover (rate-limited and revoked keys, exhaustion), circuit breakers, the
concurrency and rate limits, actor headers, and that neither a relay token
nor a BYOK key is ever stored, logged or dumped. The relay runs on a loopback
port in front of the bundled mock upstream, which answers 429 (with
Retry-After) or 401 per key in each provider's own shape.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import anthropic
import httpx
import openai
import pytest
import trio

from relay.access import BYOK_DISABLED_BODY
from relay.auth import create_token, create_user
from relay.testing.mock_upstream import scenarios
from relay.testing.mock_upstream.server import MockUpstream
from relay.upstream.breaker import BreakerState
from tests.relay_harness import RunningRelay, running_relay

pytestmark = pytest.mark.usefixtures("pg_dsn")

USER = [{"role": "user", "content": "What is the weather in Paris?"}]
GOVERNANCE_HEADERS = ("X-Coder-AI-Governance-Token", "X-AI-Gov-Token")

CENTRAL_KEY = "sk-central-key-0000000001"
RATE_LIMITED_KEY = "sk-rate-limited-key-00001"
REVOKED_KEY = "sk-revoked-key-0000000001"
OTHER_REVOKED_KEY = "sk-revoked-key-0000000002"
WORKING_KEY = "sk-working-key-0000000001"
BYOK_ANTHROPIC_KEY = "sk-ant-byok-person-key-0001"
BYOK_OAUTH_TOKEN = "sk-ant-oat01-byok-subscription-0001"
BYOK_OPENAI_KEY = "sk-proj-byok-person-key-0001"
BYOK_RATE_LIMITED_KEY = "sk-ant-byok-rate-limited-0001"


# SDK clients made by the helpers below; closed before the relay stops, because an
# idle keep-alive connection left after a GET holds hypercorn's graceful shutdown
# for its whole grace period.
_clients: list[anthropic.AsyncAnthropic | openai.AsyncOpenAI] = []


def _track(client):  # type: ignore[no-untyped-def]
    _clients.append(client)
    return client


@contextlib.asynccontextmanager
async def relay_with(
    pg_dsn: str,
    data_dir: Path,
    providers: Mapping[str, tuple[str, tuple[str, ...]]],
    extra_env: Mapping[str, str] | None = None,
    **mock_kwargs: object,
) -> AsyncIterator[tuple[MockUpstream, RunningRelay]]:
    """The relay with ``providers`` ({name: (type, keys)}) in front of one mock."""
    mock = MockUpstream(**mock_kwargs)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        await nursery.start(mock.serve, 0)
        env: dict[str, str] = {}
        for i, (name, (kind, keys)) in enumerate(providers.items()):
            prefix = f"CODER_AI_GATEWAY_PROVIDER_{i}_"
            env[prefix + "TYPE"] = kind
            env[prefix + "NAME"] = name
            env[prefix + "KEYS"] = ",".join(keys)
            base = mock.base_url if kind == "anthropic" else mock.openai_base_url + "/"
            env[prefix + "BASE_URL"] = base
        env.update(extra_env or {})
        async with running_relay(pg_dsn, data_dir, env) as relay:
            try:
                yield mock, relay
            finally:
                while _clients:
                    await _clients.pop().close()
        nursery.cancel_scope.cancel()


BOTH = {"anthropic": ("anthropic", (CENTRAL_KEY,)), "openai": ("openai", (CENTRAL_KEY,))}


def anthropic_client(relay: RunningRelay, provider: str = "anthropic", **kw: object):  # type: ignore[no-untyped-def]
    kw.setdefault("api_key", relay.token)
    return _track(anthropic.AsyncAnthropic(base_url=relay.gateway(provider), max_retries=0, **kw))  # type: ignore[arg-type]


def openai_client(relay: RunningRelay, provider: str = "openai", **kw: object):  # type: ignore[no-untyped-def]
    kw.setdefault("api_key", relay.token)
    return _track(openai.AsyncOpenAI(base_url=relay.gateway(provider) + "/v1", max_retries=0, **kw))  # type: ignore[arg-type]


async def ask_anthropic(client, **kw: object):  # type: ignore[no-untyped-def]
    return await client.messages.create(model="mock-text", max_tokens=10, messages=USER, **kw)


def upstream_keys(mock: MockUpstream, start: int = 0) -> list[str | None]:
    """The credential each upstream request carried, in order."""
    return [
        r.header("x-api-key") or (r.header("authorization") or "").removeprefix("Bearer ") or None
        for r in mock.requests[start:]
    ]


def all_header_text(mock: MockUpstream) -> str:
    return "\n".join(f"{n}: {v}" for r in mock.requests for n, v in r.headers)


# -- BYOK ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("governance", GOVERNANCE_HEADERS)
async def test_byok_with_each_header_and_each_provider(pg_dsn, tmp_path, governance):
    async with relay_with(pg_dsn, tmp_path, BOTH) as (mock, relay):
        own = {governance: relay.token}
        # Anthropic API key (x-api-key), streaming.
        client = anthropic_client(relay, api_key=BYOK_ANTHROPIC_KEY, default_headers=own)
        async with client.messages.stream(
            model="mock-text", max_tokens=10, messages=USER
        ) as stream:
            text = "".join([t async for t in stream.text_stream])
        assert text == scenarios.TEXT
        # Anthropic subscription (OAuth bearer), blocking.
        oauth = anthropic_client(
            relay, api_key=None, auth_token=BYOK_OAUTH_TOKEN, default_headers=own
        )
        assert (await ask_anthropic(oauth)).content[0].text == scenarios.TEXT
        # OpenAI key (Authorization: Bearer), chat and responses.
        o = openai_client(relay, api_key=BYOK_OPENAI_KEY, default_headers=own)
        chat = await o.chat.completions.create(model="mock-text", messages=USER)
        assert chat.choices[0].message.content == scenarios.TEXT
        response = await o.responses.create(model="mock-text", input="hi")
        assert response.output_text == scenarios.TEXT
        # Passthrough routes carry the person's key too.
        assert len((await o.models.list()).data) > 0

        assert upstream_keys(mock) == [
            BYOK_ANTHROPIC_KEY,
            BYOK_OAUTH_TOKEN,
            BYOK_OPENAI_KEY,
            BYOK_OPENAI_KEY,
            BYOK_OPENAI_KEY,
        ]
        oauth_request = mock.requests[1]
        assert oauth_request.header("x-api-key") is None
        # The governance header and the relay token stay at the relay.
        sent = all_header_text(mock)
        assert relay.token not in sent
        assert "governance" not in sent.lower() and "gov-token" not in sent.lower()
        assert CENTRAL_KEY not in sent

        rows = await relay.wait_for_rows(
            "SELECT credential_kind, credential_hint FROM interceptions ORDER BY started_at",
            count=4,
        )
        assert {r["credential_kind"] for r in rows} == {"byok"}
        assert {r["credential_hint"] for r in rows} == {
            "sk-…0001",  # every BYOK credential above ends in 0001
        }


async def test_byok_never_fails_over(pg_dsn, tmp_path):
    pool = (RATE_LIMITED_KEY, WORKING_KEY)
    providers = {"anthropic": ("anthropic", pool)}
    async with relay_with(
        pg_dsn, tmp_path, providers, rate_limited_keys={BYOK_RATE_LIMITED_KEY, RATE_LIMITED_KEY}
    ) as (mock, relay):
        client = anthropic_client(
            relay,
            api_key=BYOK_RATE_LIMITED_KEY,
            default_headers={"X-Coder-AI-Governance-Token": relay.token},
        )
        with pytest.raises(anthropic.RateLimitError) as info:
            await ask_anthropic(client)
        # The provider's own answer, passed through; the pool's keys were not tried.
        assert info.value.response.headers["retry-after"] == str(scenarios.RETRY_AFTER_SECONDS)
        assert upstream_keys(mock) == [BYOK_RATE_LIMITED_KEY]
        assert relay.app.guards is not None
        assert relay.app.guards.key_pools.items() == []  # BYOK never touched a pool
        # A centralized request still starts with the pool's first key.
        await ask_anthropic(anthropic_client(relay))
        assert upstream_keys(mock, 1) == [RATE_LIMITED_KEY, WORKING_KEY]


async def test_allow_byok_off(pg_dsn, tmp_path):
    env = {"CODER_AI_GATEWAY_ALLOW_BYOK": "false"}
    async with relay_with(pg_dsn, tmp_path, BOTH, env) as (mock, relay):
        async with httpx.AsyncClient() as http:
            for governance in GOVERNANCE_HEADERS:
                for provider, path, credential in [
                    ("anthropic", "/v1/messages", {"x-api-key": BYOK_ANTHROPIC_KEY}),
                    (
                        "openai",
                        "/v1/chat/completions",
                        {"authorization": "Bearer " + BYOK_OPENAI_KEY},
                    ),
                    ("openai", "/v1/models", {"authorization": "Bearer " + BYOK_OPENAI_KEY}),
                ]:
                    method = "GET" if path.endswith("models") else "POST"
                    r = await http.request(
                        method,
                        relay.gateway(provider) + path,
                        headers={governance: relay.token, **credential},
                        json=None if method == "GET" else {"model": "mock-text", "messages": USER},
                    )
                    assert r.status_code == 403
                    assert r.content == BYOK_DISABLED_BODY
                    assert r.json() == {
                        "message": "Bring Your Own Key (BYOK) mode is not enabled.",
                        "detail": "Contact your administrator to enable it with "
                        "--ai-gateway-allow-byok.",
                    }
        client = anthropic_client(
            relay, api_key=BYOK_ANTHROPIC_KEY, default_headers={"X-AI-Gov-Token": relay.token}
        )
        with pytest.raises(anthropic.PermissionDeniedError):
            await ask_anthropic(client)
        assert mock.requests == []  # nothing went upstream
        # Centralized requests are unaffected.
        assert (await ask_anthropic(anthropic_client(relay))).content[0].text == scenarios.TEXT
        chat = await openai_client(relay).chat.completions.create(model="mock-text", messages=USER)
        assert chat.choices[0].message.content == scenarios.TEXT
        assert upstream_keys(mock) == [CENTRAL_KEY, CENTRAL_KEY]


# -- key pool ------------------------------------------------------------------------------------


async def test_failover_through_rate_limited_and_revoked_keys(pg_dsn, tmp_path):
    providers = {
        "anthropic": ("anthropic", (RATE_LIMITED_KEY, REVOKED_KEY, WORKING_KEY)),
        "openai": ("openai", (REVOKED_KEY, RATE_LIMITED_KEY, WORKING_KEY)),
    }
    async with relay_with(
        pg_dsn,
        tmp_path,
        providers,
        chunking="random",
        rate_limited_keys={RATE_LIMITED_KEY},
        revoked_keys={REVOKED_KEY},
    ) as (mock, relay):
        client = anthropic_client(relay)
        async with client.messages.stream(
            model="mock-tool", max_tokens=100, messages=USER
        ) as stream:
            final = await stream.get_final_message()
        assert any(b.type == "tool_use" for b in final.content)
        assert upstream_keys(mock) == [RATE_LIMITED_KEY, REVOKED_KEY, WORKING_KEY]
        # The buffered body was replayed unchanged to each key.
        assert len({r.body for r in mock.requests}) == 1
        # The refused keys now rest: the next request goes straight to the working key.
        await ask_anthropic(client)
        assert upstream_keys(mock, 3) == [WORKING_KEY]

        o = openai_client(relay)
        stream = await o.chat.completions.create(model="mock-text", messages=USER, stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert text == scenarios.TEXT
        assert upstream_keys(mock, 4) == [REVOKED_KEY, RATE_LIMITED_KEY, WORKING_KEY]
        # Passthrough routes use the same pool.
        models = await o.models.list()
        assert len(models.data) > 0
        assert upstream_keys(mock, 7) == [WORKING_KEY]

        rows = await relay.wait_for_rows(
            "SELECT credential_kind, credential_hint FROM interceptions", count=3
        )
        assert {(r["credential_kind"], r["credential_hint"]) for r in rows} == {
            ("centralized", "sk-…0001")
        }


async def test_passthrough_failover_replays_the_body(pg_dsn, tmp_path):
    providers = {"anthropic": ("anthropic", (RATE_LIMITED_KEY, WORKING_KEY))}
    async with relay_with(pg_dsn, tmp_path, providers, rate_limited_keys={RATE_LIMITED_KEY}) as (
        mock,
        relay,
    ):
        client = anthropic_client(relay)
        count = await client.messages.count_tokens(model="mock-text", messages=USER)
        assert count.input_tokens > 0
        assert upstream_keys(mock) == [RATE_LIMITED_KEY, WORKING_KEY]
        assert mock.requests[0].body == mock.requests[1].body
        assert json.loads(mock.requests[1].body)["messages"] == USER


async def test_a_single_key_passes_refusals_through(pg_dsn, tmp_path):
    """One key has nothing to fail over to: the provider's answer reaches the client
    unchanged and the key is not rested (the provider decides each time)."""
    providers = {"anthropic": ("anthropic", (RATE_LIMITED_KEY,))}
    async with relay_with(pg_dsn, tmp_path, providers, rate_limited_keys={RATE_LIMITED_KEY}) as (
        mock,
        relay,
    ):
        client = anthropic_client(relay)
        for _ in range(2):
            with pytest.raises(anthropic.RateLimitError) as info:
                await ask_anthropic(client)
            assert info.value.response.content == mock.requests[-1].response_body
        assert upstream_keys(mock) == [RATE_LIMITED_KEY, RATE_LIMITED_KEY]
        assert relay.app.guards is not None
        assert relay.app.guards.key_pools.items() == []


async def test_key_pool_exhaustion(pg_dsn, tmp_path):
    providers = {
        "limited": ("openai", (RATE_LIMITED_KEY, REVOKED_KEY)),
        "refused": ("anthropic", (REVOKED_KEY, OTHER_REVOKED_KEY)),
    }
    async with relay_with(
        pg_dsn,
        tmp_path,
        providers,
        rate_limited_keys={RATE_LIMITED_KEY},
        revoked_keys={REVOKED_KEY, OTHER_REVOKED_KEY},
        # The key rests this long: longer than a loaded machine takes to the last assertion.
        retry_after=60,
    ) as (mock, relay):
        o = openai_client(relay, "limited")
        with pytest.raises(openai.RateLimitError) as info:
            await o.chat.completions.create(model="mock-text", messages=USER)
        response = info.value.response
        assert response.headers["retry-after"] == "60"  # the mock's Retry-After
        assert response.json()["error"]["code"] == "rate_limit_exceeded"
        assert upstream_keys(mock) == [RATE_LIMITED_KEY, REVOKED_KEY]
        # Every key rests: refused at once, nothing goes upstream.
        with pytest.raises(openai.RateLimitError) as again:
            await o.responses.create(model="mock-text", input="hi")
        assert int(again.value.response.headers["retry-after"]) >= 1
        assert len(mock.requests) == 2

        # Only refused keys: 502, provider-shaped.
        a = anthropic_client(relay, "refused")
        with pytest.raises(anthropic.APIStatusError) as refused:
            await ask_anthropic(a)
        assert refused.value.status_code == 502
        assert "retry-after" not in refused.value.response.headers
        body = refused.value.response.json()
        assert body["type"] == "error" and body["error"]["type"] == "api_error"
        assert upstream_keys(mock, 2) == [REVOKED_KEY, OTHER_REVOKED_KEY]

        pools = dict(relay.app.guards.key_pools.items())  # type: ignore[union-attr]
        now = trio.current_time()
        assert pools["limited"].counts(now) == {"valid": 0, "temporary": 1, "permanent": 1}
        assert pools["limited"].exhaustions["rate_limited"] == 2
        assert pools["refused"].exhaustions["auth_failed"] == 1
        rows = await relay.wait_for_rows(
            "SELECT status, error_type FROM interceptions WHERE provider_name = 'limited'", count=2
        )
        assert {(r["status"], r["error_type"]) for r in rows} == {("failed", "key_pool_exhausted")}
        # Keys tried per request: 2 for the first of each pool; none while every key rests.
        attempts = failover_attempts(relay)
        assert attempts == {"limited": (1, 2.0), "refused": (1, 2.0)}


def failover_attempts(relay: RunningRelay) -> dict[str, tuple[int, float]]:
    """provider -> (count, sum) of the key_pool_failover_attempts histogram, as scraped."""
    from prometheus_client.parser import text_string_to_metric_families

    assert relay.app.services is not None
    found: dict[str, list[float]] = {}
    text = relay.app.services.metrics.render().decode()
    for family in text_string_to_metric_families(text):
        if family.name != "coder_ai_gateway_key_pool_failover_attempts":
            continue
        for sample in family.samples:
            entry = found.setdefault(sample.labels["provider"], [0, 0.0])
            if sample.name.endswith("_count"):
                entry[0] = int(sample.value)
            elif sample.name.endswith("_sum"):
                entry[1] = sample.value
    return {name: (int(count), total) for name, (count, total) in found.items()}


# -- circuit breaker ---------------------------------------------------------------------------

BREAKER_ENV = {
    "CODER_AI_GATEWAY_CIRCUIT_BREAKER_ENABLED": "true",
    "CODER_AI_GATEWAY_CIRCUIT_BREAKER_FAILURE_THRESHOLD": "2",
    "CODER_AI_GATEWAY_CIRCUIT_BREAKER_INTERVAL": "1m",
    "CODER_AI_GATEWAY_CIRCUIT_BREAKER_TIMEOUT": "300ms",
    "CODER_AI_GATEWAY_CIRCUIT_BREAKER_MAX_REQUESTS": "2",
}


async def circuit_settles(
    relay: RunningRelay, key: tuple[str, str, str], expected: BreakerState
) -> None:
    """Wait until the circuit ``key`` is in ``expected``.

    The relay tells the circuit once the exchange is over, just after the
    client has its answer.
    """
    breakers = relay.app.guards.breakers  # type: ignore[union-attr]
    with trio.fail_after(5):
        while True:
            circuit = dict(breakers.items()).get(key)
            if circuit is not None and circuit.state is expected:
                return
            await trio.sleep(0.01)


def failing(status: int) -> dict[str, str]:
    return {"x-mock-scenario": "error-status", "x-mock-status": str(status)}


async def test_circuit_breaker_opens_half_opens_and_closes(pg_dsn, tmp_path):
    async with relay_with(pg_dsn, tmp_path, BOTH, BREAKER_ENV) as (mock, relay):
        client = anthropic_client(relay)
        model = "claude-breaker-test"

        async def settled(expected: BreakerState) -> None:
            await circuit_settles(relay, ("anthropic", "/v1/messages", model), expected)

        async def ask(headers: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
            return await client.messages.create(
                model=model, max_tokens=10, messages=USER, extra_headers=headers
            )

        for status in (529, 503):  # Anthropic's overloaded status counts too
            with pytest.raises(anthropic.APIStatusError) as info:
                await ask(failing(status))
            assert info.value.status_code == status  # the provider's own answer
        await settled(BreakerState.OPEN)
        sent = len(mock.requests)
        with pytest.raises(anthropic.APIStatusError) as refused:
            await ask()
        assert refused.value.status_code == 503
        assert refused.value.response.json() == {
            "type": "error",
            "error": {"type": "overloaded_error", "message": "circuit breaker is open"},
        }
        assert refused.value.response.headers["retry-after"] == "1"
        assert len(mock.requests) == sent  # refused without asking the provider
        # Other models, routes and providers have circuits of their own.
        await ask_anthropic(client)
        await openai_client(relay).chat.completions.create(model=model, messages=USER)

        await trio.sleep(0.35)  # the open timeout passes: trial requests go through
        await ask()
        await settled(BreakerState.HALF_OPEN)
        await ask()
        await settled(BreakerState.CLOSED)

        # A failure in half-open opens the circuit again.
        for _ in range(2):
            with pytest.raises(anthropic.APIStatusError):
                await ask(failing(503))
        await settled(BreakerState.OPEN)
        await trio.sleep(0.35)
        with pytest.raises(anthropic.APIStatusError):
            await ask(failing(504))
        await settled(BreakerState.OPEN)
        with pytest.raises(anthropic.APIStatusError) as again:
            await ask()
        assert again.value.response.json()["error"]["message"] == "circuit breaker is open"


async def test_circuit_breaker_openai_shape_and_other_failures(pg_dsn, tmp_path):
    async with relay_with(pg_dsn, tmp_path, BOTH, BREAKER_ENV) as (mock, relay):
        o = openai_client(relay)
        # 500 and 529 are not overload for OpenAI; 429 and 504 are.
        for status in (500, 529, 500):
            with pytest.raises(openai.APIStatusError):
                await o.chat.completions.create(
                    model="gpt-x", messages=USER, extra_headers=failing(status)
                )
        for status in (429, 504):
            with pytest.raises(openai.APIStatusError):
                await o.chat.completions.create(
                    model="gpt-x", messages=USER, extra_headers=failing(status)
                )
        await circuit_settles(relay, ("openai", "/v1/chat/completions", "gpt-x"), BreakerState.OPEN)
        sent = len(mock.requests)
        with pytest.raises(openai.APIStatusError) as refused:
            await o.chat.completions.create(model="gpt-x", messages=USER)
        assert refused.value.status_code == 503
        assert refused.value.response.json()["error"] == {
            "message": "circuit breaker is open",
            "type": "server_error",
            "param": None,
            "code": None,
        }
        assert int(refused.value.response.headers["retry-after"]) >= 1
        assert len(mock.requests) == sent


async def test_circuit_breaker_off_by_default(pg_dsn, tmp_path):
    async with relay_with(pg_dsn, tmp_path, BOTH) as (mock, relay):
        client = anthropic_client(relay)
        for _ in range(6):
            with pytest.raises(anthropic.APIStatusError) as info:
                await ask_anthropic(client, extra_headers=failing(503))
            assert info.value.status_code == 503
        assert len(mock.requests) == 6


# -- limits --------------------------------------------------------------------------------------


async def test_max_concurrency_refuses_at_once(pg_dsn, tmp_path):
    env = {"CODER_AI_GATEWAY_MAX_CONCURRENCY": "1"}
    async with relay_with(pg_dsn, tmp_path, BOTH, env) as (mock, relay):
        client = anthropic_client(relay)
        done: list[str] = []

        async def slow() -> None:
            async with client.messages.stream(
                model="mock-text",
                max_tokens=10,
                messages=USER,
                # Holds the slot while the two refusals below are made: 400 ms was
                # outlasted by a loaded machine (the passthrough then got the slot).
                extra_headers={"x-mock-first-token-ms": "3000"},
            ) as stream:
                done.append("".join([t async for t in stream.text_stream]))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(slow)
            await mock.wait_for_request(0)  # the slow stream holds the only slot
            with pytest.raises(anthropic.APIStatusError) as refused:
                await ask_anthropic(client)
            assert refused.value.status_code == 503
            assert refused.value.response.json()["error"]["type"] == "overloaded_error"
            with pytest.raises(openai.APIStatusError) as passthrough:
                await openai_client(relay).models.list()
            assert passthrough.value.status_code == 503
            assert len(mock.requests) == 1
        assert done == [scenarios.TEXT]
        guards = relay.app.guards
        assert guards is not None
        with trio.fail_after(5):
            while guards.concurrency.active:
                await trio.sleep(0.01)
        assert (await ask_anthropic(client)).content[0].text == scenarios.TEXT
        assert guards.concurrency.rejected == 2


async def test_rate_limit_per_token(pg_dsn, tmp_path):
    env = {"CODER_AI_GATEWAY_RATE_LIMIT": "1"}
    async with relay_with(pg_dsn, tmp_path, BOTH, env) as (mock, relay):
        assert relay.app.services is not None
        await create_user(relay.db, "bob")
        bob_token, _ = await create_token(relay.db, "bob")
        alice = anthropic_client(relay)
        statuses = []
        for _ in range(3):
            try:
                await ask_anthropic(alice)
                statuses.append(200)
            except anthropic.RateLimitError as exc:
                statuses.append(exc.status_code)
                assert int(exc.response.headers["retry-after"]) >= 1
                assert exc.response.json()["error"]["type"] == "rate_limit_error"
        assert statuses[0] == 200 and 429 in statuses[1:]
        # Another person's token has a bucket of its own.
        bob = anthropic_client(relay, api_key=bob_token)
        assert (await ask_anthropic(bob)).content[0].text == scenarios.TEXT
        # OpenAI shape for an OpenAI route (bob's bucket is empty by now).
        o = openai_client(relay, api_key=bob_token)
        passed = 0
        with pytest.raises(openai.RateLimitError) as info:
            for _ in range(3):
                await o.chat.completions.create(model="mock-text", messages=USER)
                passed += 1
        assert info.value.response.json()["error"]["code"] == "rate_limit_exceeded"
        # Refused requests never reached the provider.
        assert len(mock.requests) == statuses.count(200) + 1 + passed


# -- actor headers -------------------------------------------------------------------------------


async def test_actor_headers_on_intercepted_routes_only(pg_dsn, tmp_path):
    env = {"CODER_AI_GATEWAY_SEND_ACTOR_HEADERS": "true"}
    async with relay_with(pg_dsn, tmp_path, BOTH, env) as (mock, relay):
        user = await relay.db.fetchrow("SELECT id::text AS id FROM users WHERE name = 'alice'")
        spoof = {"X-AI-Bridge-Actor-ID": "someone-else", "X-AI-Bridge-Actor-Metadata-Username": "x"}
        await ask_anthropic(anthropic_client(relay, default_headers=spoof))
        o = openai_client(relay, default_headers=spoof)
        await o.responses.create(model="mock-text", input="hi")
        await o.models.list()  # passthrough
        for request in mock.requests[:2]:
            ids = [v for n, v in request.headers if n.lower() == "x-ai-bridge-actor-id"]
            names = [
                v for n, v in request.headers if n.lower() == "x-ai-bridge-actor-metadata-username"
            ]
            assert (ids, names) == ([user["id"]], ["alice"])
        passthrough = mock.requests[2]
        assert passthrough.path == "/v1/models"
        assert not any(n.lower().startswith("x-ai-bridge-actor") for n, _ in passthrough.headers)


async def test_actor_headers_off_by_default(pg_dsn, tmp_path):
    spoof = {"X-AI-Bridge-Actor-ID": "someone-else"}
    async with relay_with(pg_dsn, tmp_path, BOTH) as (mock, relay):
        await ask_anthropic(anthropic_client(relay, default_headers=spoof))
        await openai_client(relay, default_headers=spoof).models.list()
        assert len(mock.requests) == 2
        for request in mock.requests:
            assert not any(n.lower().startswith("x-ai-bridge-actor") for n, _ in request.headers)


async def test_actor_header_names_are_options(pg_dsn, tmp_path):
    spoof = {"X-Who": "spoofed"}
    env = {
        "CODER_AI_GATEWAY_SEND_ACTOR_HEADERS": "true",
        "CODER_AI_GATEWAY_ACTOR_ID_HEADER": "X-Who",
        "CODER_AI_GATEWAY_ACTOR_USERNAME_HEADER": "X-Who-Name",
    }
    async with relay_with(pg_dsn, tmp_path, BOTH, env) as (mock, relay):
        await ask_anthropic(anthropic_client(relay, default_headers=spoof))
        request = mock.requests[0]
        assert request.header("x-who") not in (None, "spoofed")
        assert [v for n, v in request.headers if n.lower() == "x-who"] == [request.header("x-who")]
        assert request.header("x-who-name") == "alice"


# -- secrets -------------------------------------------------------------------------------------


async def text_in_database(relay: RunningRelay) -> str:
    """Every value of every text-like column of every table, as one string."""
    columns = await relay.db.fetch(
        "SELECT table_schema, table_name, column_name FROM information_schema.columns "
        "WHERE table_schema NOT IN ('pg_catalog', 'information_schema') "
        "AND data_type IN ('text', 'character varying', 'character', 'json', 'jsonb', 'bytea', "
        "'ARRAY', 'USER-DEFINED')"
    )
    assert columns, "no text columns found"
    parts: list[str] = []
    for c in columns:
        rows = await relay.db.fetch(
            f'SELECT "{c["column_name"]}"::text AS v FROM "{c["table_schema"]}"."{c["table_name"]}"'
        )
        parts += [r["v"] for r in rows if r["v"] is not None]
    return "\n".join(parts)


async def exercise_every_credential_path(mock: MockUpstream, relay: RunningRelay) -> None:
    """Centralized and BYOK requests, streaming and not, failing and not, on each provider."""
    await ask_anthropic(anthropic_client(relay))
    byok = {"X-Coder-AI-Governance-Token": relay.token}
    a = anthropic_client(relay, api_key=BYOK_ANTHROPIC_KEY, default_headers=byok)
    async with a.messages.stream(model="mock-tool", max_tokens=10, messages=USER) as stream:
        await stream.get_final_message()
    with pytest.raises(anthropic.APIStatusError):
        await ask_anthropic(a, extra_headers=failing(500))
    oauth = anthropic_client(
        relay,
        api_key=None,
        auth_token=BYOK_OAUTH_TOKEN,
        default_headers={"X-AI-Gov-Token": relay.token},
    )
    await ask_anthropic(oauth)
    o = openai_client(relay, api_key=BYOK_OPENAI_KEY, default_headers=byok)
    stream = await o.chat.completions.create(model="mock-text", messages=USER, stream=True)
    _ = [c async for c in stream]
    await o.responses.create(model="mock-thinking", input="hi")
    await o.models.list()
    # A rate-limited BYOK key (the provider's 429 passes through) and a wrong token.
    limited = anthropic_client(relay, api_key=BYOK_RATE_LIMITED_KEY, default_headers=byok)
    with pytest.raises(anthropic.RateLimitError):
        await ask_anthropic(limited)
    bad = anthropic_client(relay, api_key=relay.token[:-4] + "AAAA")
    with pytest.raises(anthropic.AuthenticationError):
        await ask_anthropic(bad)


SECRET_NAMES = ("relay token", "BYOK anthropic key", "BYOK OAuth token", "BYOK OpenAI key")


def secrets_of(relay: RunningRelay) -> dict[str, str]:
    values = (relay.token, BYOK_ANTHROPIC_KEY, BYOK_OAUTH_TOKEN, BYOK_OPENAI_KEY)
    found = dict(zip(SECRET_NAMES, values, strict=True))
    found["rate-limited BYOK key"] = BYOK_RATE_LIMITED_KEY
    # The token's secret part alone must not appear either.
    found["relay token secret"] = relay.token[len("relay_") + 13 :]
    return found


async def test_tokens_and_byok_keys_never_stored_or_logged(pg_dsn, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    env = {"CODER_AI_GATEWAY_DUMP_DIR": str(tmp_path / "dumps")}
    async with relay_with(
        pg_dsn, tmp_path, BOTH, env, rate_limited_keys={BYOK_RATE_LIMITED_KEY}
    ) as (mock, relay):
        await exercise_every_credential_path(mock, relay)
        await relay.wait_for_rows("SELECT 1 FROM interceptions", count=7)
        await relay.wait_for_rows("SELECT 1 FROM tool_usages")
        stored = await text_in_database(relay)
        # The scan sees what was recorded (so a secret there would be seen too).
        assert "What is the weather in Paris?" in stored
        assert "sk-…0001" in stored
        sent_upstream = all_header_text(mock)
        secrets = secrets_of(relay)
    logged = caplog.text + "\n".join(
        f"{r.getMessage()} {r.args!r} {r.exc_text or ''}" for r in caplog.records
    )
    assert caplog.records, "nothing was logged: the log check would be vacuous"
    for name, secret in secrets.items():
        assert secret not in stored, f"{name} found in the database"
        assert secret not in logged, f"{name} found in the logs"
    assert relay.token not in sent_upstream


async def test_tokens_and_byok_keys_never_dumped(pg_dsn, tmp_path):
    dumps = tmp_path / "dumps"
    env = {"CODER_AI_GATEWAY_DUMP_DIR": str(dumps)}
    async with relay_with(
        pg_dsn, tmp_path, BOTH, env, rate_limited_keys={BYOK_RATE_LIMITED_KEY}
    ) as (mock, relay):
        await exercise_every_credential_path(mock, relay)
        secrets = secrets_of(relay)
        with trio.move_on_after(2):
            while not any(p.is_file() for p in dumps.rglob("*")):
                await trio.sleep(0.05)
    files = [p for p in dumps.rglob("*") if p.is_file()]
    assert files, "no dump files were written"
    dumped = "\n".join(p.read_bytes().decode("utf-8", "replace") for p in files)
    assert "mock-text" in dumped
    for name, secret in secrets.items():
        assert secret not in dumped, f"{name} found in a dump"
