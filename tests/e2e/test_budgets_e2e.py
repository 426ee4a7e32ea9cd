"""Budgets end to end: the official SDKs through the relay against the mock
upstream. A spent budget refuses the next request in each provider's own
shape (and it is recorded as refused) while a stream already running
finishes; two relay processes sharing one PostgreSQL enforce one budget."""

from __future__ import annotations

from pathlib import Path

import anthropic
import openai
import pytest
import trio

from relay.budgets.store import add_member, create_group, set_budget
from tests.relay_harness import mock_and_relay, mock_providers_env, running_relay

pytestmark = pytest.mark.usefixtures("pg_dsn")

USER = [{"role": "user", "content": "What is the weather in Paris?"}]
FAST = {"CODER_AI_GATEWAY_BUDGET_REFRESH_INTERVAL": "100ms"}
SONNET = "claude-sonnet-4-5-20250929"  # the mock's text scenario costs 458 µ$ at its price


def clients(relay):  # type: ignore[no-untyped-def]
    claude = anthropic.AsyncAnthropic(
        api_key=relay.token, base_url=relay.gateway("anthropic"), max_retries=2
    )
    gpt = openai.AsyncOpenAI(
        api_key=relay.token, base_url=relay.gateway("openai") + "/v1", max_retries=2
    )
    return claude, gpt


async def long_stream(claude: anthropic.AsyncAnthropic, text: list[str]) -> None:
    """A 30-event stream that takes ~0.6 s: admitted before a limit is reached, it must finish."""
    async with claude.messages.stream(
        model="claude-haiku-4-5",
        max_tokens=100,
        messages=USER,
        extra_headers={"x-mock-scenario": "long", "x-mock-events": "30", "x-mock-gap-ms": "20"},
    ) as stream:
        text.extend([t async for t in stream.text_stream])


async def until(condition, timeout: float = 10) -> None:  # type: ignore[no-untyped-def]
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.01)


def tracker(relay):  # type: ignore[no-untyped-def]
    return relay.app.services.budgets


async def test_a_spent_budget_refuses_in_each_shape_while_a_stream_finishes(pg_dsn, tmp_path):
    async with mock_and_relay(pg_dsn, tmp_path, extra_env=FAST) as (mock, relay):
        await set_budget(relay.db, "alice-monthly", user="alice", limit_micros=1000)
        budgets = tracker(relay)
        await until(lambda: budgets.budgets)
        claude, gpt = clients(relay)
        stream_text: list[str] = []

        async with trio.open_nursery() as nursery:
            nursery.start_soon(long_stream, claude, stream_text)
            await until(lambda: len(mock.requests) == 1)  # admitted, under the limit
            for _ in range(3):  # 458 µ$ each: the third is admitted at 916 and ends at 1374
                await claude.messages.create(model=SONNET, max_tokens=100, messages=USER)
            (budget,) = budgets.budgets
            await until(lambda: budgets.spent(budget) >= 1000)
            upstream_requests = len(mock.requests)

            with pytest.raises(anthropic.RateLimitError) as refused:
                await claude.messages.create(model=SONNET, max_tokens=100, messages=USER)
            assert refused.value.status_code == 429
            assert refused.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
            assert "budget 'alice-monthly' (user alice) is spent" in refused.value.message
            with pytest.raises(openai.RateLimitError) as refused_openai:
                await gpt.chat.completions.create(model="gpt-4.1", messages=USER, stream=True)
            assert refused_openai.value.status_code == 429
            assert refused_openai.value.code == "insufficient_quota"
            assert refused_openai.value.type == "insufficient_quota"
            assert refused_openai.value.response.headers["x-should-retry"] == "false"
            # Neither SDK retried, and nothing went upstream.
            assert len(mock.requests) == upstream_requests
        # The stream admitted before the limit was crossed ran to its end.
        assert len(stream_text) == 30

        rows = await relay.wait_for_rows(
            "SELECT status, error_type, error_message, model FROM interceptions"
            " WHERE status = 'refused' ORDER BY started_at",
            count=2,
        )
        assert [(r["status"], r["error_type"], r["model"]) for r in rows] == [
            ("refused", "budget_exceeded", SONNET),
            ("refused", "budget_exceeded", "gpt-4.1"),
        ]
        finished = await relay.db.fetch(
            "SELECT i.status FROM interceptions i JOIN token_usages t ON t.interception_id = i.id"
        )
        assert sorted(r["status"] for r in finished) == ["completed"] * 4


async def test_two_relays_sharing_a_database_enforce_one_group_budget(pg_dsn, tmp_path: Path):
    async with mock_and_relay(pg_dsn, tmp_path / "a", extra_env=FAST) as (mock, a):
        env = {**mock_providers_env(mock), **FAST}
        async with running_relay(pg_dsn, tmp_path / "b", env, user="bob") as b:
            await create_group(a.db, "team")
            await add_member(a.db, "team", "alice")
            await add_member(a.db, "team", "bob")
            await set_budget(a.db, "team-daily", group="team", limit_micros=1000, period="day")
            await until(lambda: tracker(a).budgets and tracker(b).budgets)
            alice, _ = clients(a)
            bob, _ = clients(b)
            await bob.messages.create(model=SONNET, max_tokens=100, messages=USER)  # 458
            await alice.messages.create(model=SONNET, max_tokens=100, messages=USER)  # 916
            await alice.messages.create(model=SONNET, max_tokens=100, messages=USER)  # 1374
            (on_a,), (on_b,) = tracker(a).budgets, tracker(b).budgets
            # Relay b learns alice's spend on relay a from PostgreSQL's running
            # totals, and a learns bob's: within a refresh interval plus the
            # other's recorder flush.
            await until(lambda: tracker(b).spent(on_b) >= 1000)
            await until(lambda: tracker(a).spent(on_a) >= 1000)
            with pytest.raises(anthropic.RateLimitError) as refused:
                await bob.messages.create(model=SONNET, max_tokens=100, messages=USER)
            assert "budget 'team-daily' (group team)" in refused.value.message
            with pytest.raises(anthropic.RateLimitError):
                await alice.messages.create(model=SONNET, max_tokens=100, messages=USER)
            spent = await b.db.fetchval("SELECT sum(cost_micros) FROM spend_daily")
            assert spent == 3 * 458
