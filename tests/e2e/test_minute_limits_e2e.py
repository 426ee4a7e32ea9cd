"""Per-minute limits end to end: two relays (separate apps, separate pools)
sharing one PostgreSQL enforce one REQUESTS_PER_MINUTE and one
TOKENS_PER_MINUTE limit for a user, refused in each provider's shape with
Retry-After and recorded as refused, while a stream already running finishes.

The limits' wall clock is fixed mid-minute in both relays, so a test never
straddles the minute's reset."""

from __future__ import annotations

from pathlib import Path

import anthropic
import openai
import pytest
import trio

from relay.auth import create_token
from relay.budgets.minute import wall_now, window_of
from tests.e2e.test_budgets_e2e import long_stream
from tests.relay_harness import mock_and_relay, mock_providers_env, running_relay

pytestmark = pytest.mark.usefixtures("pg_dsn")

USER = [{"role": "user", "content": "What is the weather in Paris?"}]
SONNET = "claude-sonnet-4-5-20250929"
NOW = window_of(wall_now()) + 30.0  # half a minute to the reset: Retry-After is 30


def fast(**limits: str) -> dict[str, str]:
    return {"CODER_AI_GATEWAY_MINUTE_LIMITS_SYNC_INTERVAL": "50ms", **limits}


OPENED: list[anthropic.AsyncAnthropic | openai.AsyncOpenAI] = []


@pytest.fixture(autouse=True)
async def close_clients():  # type: ignore[no-untyped-def]
    """Every SDK client a test opened is closed in its own loop, not by the garbage collector."""
    yield
    while OPENED:
        await OPENED.pop().close()


def claude(url: str, token: str) -> anthropic.AsyncAnthropic:
    # No retries: a 429 with Retry-After 30 would be waited out by the SDK.
    client = anthropic.AsyncAnthropic(api_key=token, base_url=url, max_retries=0)
    OPENED.append(client)
    return client


def gpt(url: str, token: str) -> openai.AsyncOpenAI:
    client = openai.AsyncOpenAI(api_key=token, base_url=url + "/v1", max_retries=0)
    OPENED.append(client)
    return client


async def until(condition, timeout: float = 10) -> None:  # type: ignore[no-untyped-def]
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.01)


def limits(relay):  # type: ignore[no-untyped-def]
    found = relay.app.services.minute_limits
    assert found is not None
    found.clock = lambda: NOW
    return found


async def test_two_relays_enforce_one_requests_per_minute_limit(pg_dsn, tmp_path: Path):
    env = fast(CODER_AI_GATEWAY_REQUESTS_PER_MINUTE="3")
    async with mock_and_relay(pg_dsn, tmp_path / "a", extra_env=env) as (mock, a):
        async with running_relay(
            pg_dsn, tmp_path / "b", {**mock_providers_env(mock), **env}, user="bob"
        ) as b:
            on_a, on_b = limits(a), limits(b)
            alice_b, _ = await create_token(b.db, "alice")  # alice's second token, used on b
            user = str(await a.db.fetchval("SELECT id FROM users WHERE name = 'alice'"))
            via_a = claude(a.gateway("anthropic"), a.token)
            via_b = claude(b.gateway("anthropic"), alice_b)
            await via_a.messages.create(model=SONNET, max_tokens=100, messages=USER)
            await via_a.messages.create(model=SONNET, max_tokens=100, messages=USER)
            await via_b.messages.create(model=SONNET, max_tokens=100, messages=USER)
            # Each relay learns the other's requests from PostgreSQL within two syncs.
            await until(lambda: on_a.counted(user, NOW)[0] == 3)
            await until(lambda: on_b.counted(user, NOW)[0] == 3)
            upstream = len(mock.requests)

            with pytest.raises(anthropic.RateLimitError) as refused:
                await via_b.messages.create(model=SONNET, max_tokens=100, messages=USER)
            assert refused.value.status_code == 429
            assert refused.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
            assert "requests-per-minute limit exceeded: 3 of 3" in refused.value.message
            assert refused.value.response.headers["retry-after"] == "30"
            with pytest.raises(openai.RateLimitError) as refused_openai:
                await gpt(a.gateway("openai"), a.token).chat.completions.create(
                    model="gpt-4.1", messages=USER, stream=True
                )
            assert refused_openai.value.code == "rate_limit_exceeded"
            assert refused_openai.value.type == "requests"
            assert refused_openai.value.response.headers["retry-after"] == "30"
            assert len(mock.requests) == upstream  # nothing refused went upstream
            refusals = a.app.services.metrics.minute_refusals.labels("requests")._value.get()
            assert refusals == 1  # relay a refused the openai request; b the other

            # Another user is not limited by alice's minute.
            bob = claude(b.gateway("anthropic"), b.token)
            await bob.messages.create(model=SONNET, max_tokens=100, messages=USER)

            rows = await a.wait_for_rows(
                "SELECT error_type, model FROM interceptions WHERE status = 'refused'"
                " ORDER BY started_at",
                count=2,
            )
            assert [(r["error_type"], r["model"]) for r in rows] == [
                ("rate_limited", SONNET),
                ("rate_limited", "gpt-4.1"),
            ]
            await until(lambda: on_b.counted(user, NOW)[0] == 3)
            counted = await a.db.fetchval(
                "SELECT requests FROM rate_windows WHERE subject = $1", user
            )
            assert counted == 3  # refused requests are not counted


async def test_two_relays_enforce_one_tokens_per_minute_limit_without_cutting_a_stream(
    pg_dsn, tmp_path: Path
):
    env = fast(CODER_AI_GATEWAY_TOKENS_PER_MINUTE="1", CODER_AI_GATEWAY_MINUTE_LIMITS_PER="token")
    async with mock_and_relay(pg_dsn, tmp_path / "a", extra_env=env) as (mock, a):
        async with running_relay(
            pg_dsn, tmp_path / "b", {**mock_providers_env(mock), **env}, user="bob"
        ) as b:
            on_a, on_b = limits(a), limits(b)
            key = await a.db.fetchval(
                "SELECT k.id FROM api_keys k JOIN users u ON u.id = k.user_id"
                " WHERE u.name = 'alice'"
            )
            via_a = claude(a.gateway("anthropic"), a.token)
            via_b = claude(b.gateway("anthropic"), a.token)  # the same token on both relays
            text: list[str] = []

            async with trio.open_nursery() as nursery:
                nursery.start_soon(long_stream, via_a, text)
                await until(lambda: len(mock.requests) == 1)  # admitted: no tokens yet
                await via_b.messages.create(model=SONNET, max_tokens=100, messages=USER)
                # b's usage reaches a through PostgreSQL: the token's minute is spent.
                await until(lambda: on_a.counted(key, NOW)[1] >= 1)
                with pytest.raises(anthropic.RateLimitError) as refused:
                    await via_a.messages.create(model=SONNET, max_tokens=100, messages=USER)
                assert "tokens-per-minute limit exceeded" in refused.value.message
                assert refused.value.response.headers["retry-after"] == "30"
                with pytest.raises(openai.RateLimitError) as refused_openai:
                    await gpt(b.gateway("openai"), a.token).chat.completions.create(
                        model="gpt-4.1", messages=USER
                    )
                assert refused_openai.value.code == "rate_limit_exceeded"
                assert refused_openai.value.type == "tokens"
            # The stream admitted before the minute's tokens were spent ran to its end.
            assert len(text) == 30
            assert len(mock.requests) == 2
            usage = await a.wait_for_rows("SELECT * FROM token_usages", count=2)
            total = sum(
                u["input_tokens"]
                + u["output_tokens"]
                + u["cache_read_tokens"]
                + u["cache_write_tokens"]
                for u in usage
            )
            await until(lambda: on_b.counted(key, NOW)[1] == total)
            counted = await a.db.fetchval("SELECT tokens FROM rate_windows WHERE subject = $1", key)
            assert counted == total


async def test_bedrock_native_routes_are_throttled_in_bedrocks_shape(pg_dsn, tmp_path: Path):
    from tests.e2e.test_bedrock_e2e import (
        BEDROCK_VERSION,
        MODEL,
        anthropic_client,
        bedrock_client,
        bedrock_relay,
    )

    env = fast(CODER_AI_GATEWAY_REQUESTS_PER_MINUTE="1")
    async with bedrock_relay(pg_dsn, tmp_path, extra_env=env) as (mock, relay):
        limits(relay)
        client = bedrock_client(relay)
        OPENED.append(client)  # type: ignore[arg-type]
        await client.messages.create(
            model=MODEL, max_tokens=64, messages=USER, extra_body=BEDROCK_VERSION
        )
        with pytest.raises(anthropic.RateLimitError) as refused:
            await client.messages.create(
                model=MODEL, max_tokens=64, messages=USER, extra_body=BEDROCK_VERSION
            )
        headers = refused.value.response.headers
        assert headers["x-amzn-errortype"] == "ThrottlingException"
        assert headers["retry-after"] == "30"
        assert "requests-per-minute limit exceeded: 1 of 1" in refused.value.body["message"]  # type: ignore[index]
        with pytest.raises(anthropic.RateLimitError) as on_messages:
            on_messages_client = anthropic_client(relay)
            OPENED.append(on_messages_client)
            await on_messages_client.messages.create(model=MODEL, max_tokens=64, messages=USER)
        assert on_messages.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
        assert len(mock.requests) == 1


async def test_a_spent_budget_on_a_native_bedrock_route_answers_in_bedrocks_shape(
    pg_dsn, tmp_path: Path
):
    from relay.budgets.store import set_budget
    from tests.e2e.test_bedrock_e2e import BEDROCK_VERSION, MODEL, bedrock_client, bedrock_relay

    env = {"CODER_AI_GATEWAY_BUDGET_REFRESH_INTERVAL": "100ms"}
    async with bedrock_relay(pg_dsn, tmp_path, extra_env=env) as (mock, relay):
        await set_budget(relay.db, "alice-daily", user="alice", limit_micros=1, period="day")
        budgets = relay.app.services.budgets
        await until(lambda: budgets.budgets)
        client = bedrock_client(relay)
        OPENED.append(client)  # type: ignore[arg-type]
        await client.messages.create(
            model=MODEL, max_tokens=64, messages=USER, extra_body=BEDROCK_VERSION
        )
        (budget,) = budgets.budgets
        await until(lambda: budgets.spent(budget) >= 1)
        with pytest.raises(anthropic.RateLimitError) as refused:
            await client.messages.create(
                model=MODEL, max_tokens=64, messages=USER, extra_body=BEDROCK_VERSION
            )
        headers = refused.value.response.headers
        assert headers["x-amzn-errortype"] == "ServiceQuotaExceededException"
        assert headers["x-should-retry"] == "false"
        assert "budget 'alice-daily' (user alice) is spent" in refused.value.body["message"]  # type: ignore[index]
        assert len(mock.requests) == 1
        rows = await relay.wait_for_rows(
            "SELECT error_type FROM interceptions WHERE status = 'refused'"
        )
        assert [r["error_type"] for r in rows] == ["budget_exceeded"]


async def test_a_responses_websocket_turn_over_the_minute_is_refused(pg_dsn, tmp_path: Path):
    from trio_websocket import open_websocket_url

    from tests.e2e.test_responses_websocket import (
        client_headers,
        create,
        read_turn,
        ws_relay,
        ws_url,
    )

    env = fast(CODER_AI_GATEWAY_REQUESTS_PER_MINUTE="1")
    async with ws_relay(pg_dsn, tmp_path, env) as (mock, relay):
        limits(relay)
        async with open_websocket_url(
            ws_url(relay), extra_headers=client_headers(relay.token)
        ) as ws:
            await ws.send_message(create("gpt-4o", "the minute's one turn"))
            assert (await read_turn(ws))[-1]["type"] == "response.completed"
            await ws.send_message(create("gpt-4o", "one too many"))
            refusal = await read_turn(ws)
            assert refusal[0]["status"] == 429
            assert refusal[0]["error"]["code"] == "rate_limit_exceeded"
            assert "requests-per-minute limit exceeded: 1 of 1" in refusal[0]["error"]["message"]
        assert len([m for m in mock.received if "response.create" in m]) == 1
        [refused] = await relay.wait_for_rows(
            "SELECT error_type FROM interceptions WHERE status = 'refused'", count=1
        )
        assert refused["error_type"] == "rate_limited"
