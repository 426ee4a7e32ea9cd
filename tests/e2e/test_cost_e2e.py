"""Cost per record, end to end: the official SDKs through the relay against the
mock upstream, and the cost the relay recorded for each, against a hand
computation from the mock's own usage figures.

Among them the cases where LiteLLM's spend is known to go wrong: usage on the
last chunk with non-empty ``choices`` (its issue 36168), streamed calls logged
as $0 (40100), Responses calls logged as $0 (36523), plus a stream the client
cut, and a model without a price (recorded as unpriced, not $0).
"""

from __future__ import annotations

from datetime import date
from fractions import Fraction

import anthropic
import httpx
import openai
import pytest
import trio

from relay.pricing.book import Price
from relay.pricing.store import set_prices, unpriced_models
from relay.testing.mock_upstream import scenarios
from relay.testing.mock_upstream.scenarios import ScenarioUsage
from tests.relay_harness import mock_and_relay

pytestmark = pytest.mark.usefixtures("pg_dsn")

# $1 in (and cache read: none given), $2 out per million: micro-dollars per token 1 and 2.
MYSTERY = Price(
    provider_type="openai",
    model="mystery-model-*",
    effective_from=date(2024, 1, 1),
    input=1_000_000,
    output=2_000_000,
)
USER = [{"role": "user", "content": "What is the weather in Paris?"}]
# Dollars per million tokens from the providers' pages: input, output, cache
# read, 5m cache write, 1h cache write (OpenAI: no separate write price).
SONNET = ("3", "15", "0.30", "3.75", "6")
HAIKU = ("1", "5", "0.10", "1.25", "2")
MINI = ("0.15", "0.60", "0.075", None, None)
O4_MINI = ("1.10", "4.40", "0.275", None, None)
GPT41 = ("2", "8", "0.50", None, None)


def hand(usage: ScenarioUsage, prices: tuple[str | None, ...], *, openai_wire: bool) -> int:
    inp, out, read, w5, w1h = (Fraction(x) if x else Fraction(0) for x in prices)
    micros = usage.input_tokens * inp + usage.output_tokens * out + usage.cache_read_tokens * read
    if not openai_wire:  # OpenAI's wire carries no cache writes
        micros += usage.cache_write_5m_tokens * w5 + usage.cache_write_1h_tokens * w1h
    return int(micros + Fraction(1, 2))


COST_SQL = (
    "SELECT i.model, i.status, i.route, t.price_model, t.cost_micros, t.input_tokens,"
    " t.output_tokens, t.cache_read_tokens, t.cache_write_tokens"
    " FROM interceptions i JOIN token_usages t ON t.interception_id = i.id"
    " ORDER BY i.started_at"
)


async def test_cost_rows_of_streamed_and_blocking_calls(pg_dsn, tmp_path):
    async with mock_and_relay(pg_dsn, tmp_path, chunking="random") as (_mock, relay):
        claude = anthropic.AsyncAnthropic(
            api_key=relay.token, base_url=relay.gateway("anthropic"), max_retries=0
        )
        gpt = openai.AsyncOpenAI(
            api_key=relay.token, base_url=relay.gateway("openai") + "/v1", max_retries=0
        )
        # 1. Anthropic, streamed, with 5m and 1h cache writes.
        async with claude.messages.stream(
            model="claude-sonnet-4-5-20250929", max_tokens=100, messages=USER
        ) as stream:
            await stream.get_final_message()
        # 2. Chat, streamed, the usage on the finish chunk (choices not empty): LiteLLM 36168.
        chunks = await gpt.chat.completions.create(
            model="gpt-4o-mini-2024-07-18",
            messages=USER,
            stream=True,
            stream_options={"include_usage": True},
            extra_headers={"x-mock-usage-on-finish": "1"},
        )
        with_usage = [c async for c in chunks if c.usage is not None]
        assert len(with_usage) == 1 and with_usage[0].choices  # on a chunk with a choice
        assert with_usage[0].usage.prompt_tokens == 125  # type: ignore[union-attr]
        # 3. Chat, streamed, the client never asked for usage (the relay asks): LiteLLM 40100.
        chunks = await gpt.chat.completions.create(
            model="o4-mini-2025-04-16",
            messages=USER,
            stream=True,
            extra_headers={"x-mock-scenario": "thinking"},
        )
        assert all([c.usage is None async for c in chunks])
        # 4. Responses, streamed and blocking: LiteLLM 36523 logged these at $0.
        async with gpt.responses.stream(model="gpt-4.1-2025-04-14", input="hi") as rstream:
            await rstream.get_final_response()
        await gpt.responses.create(model="gpt-4.1-2025-04-14", input="hi")
        # 5. Anthropic and chat, blocking.
        await claude.messages.create(
            model="claude-haiku-4-5-20251001",
            max_tokens=100,
            messages=USER,
            extra_headers={"x-mock-scenario": "tool"},
        )
        await gpt.chat.completions.create(model="gpt-4o-mini", messages=USER)

        rows = await relay.wait_for_rows(COST_SQL, count=7)
    text, tool, thinking = (scenarios.usage_for(s) for s in ("text", "tool", "thinking"))
    expected = [
        ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5", hand(text, SONNET, openai_wire=False)),
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini", hand(text, MINI, openai_wire=True)),
        ("o4-mini-2025-04-16", "o4-mini", hand(thinking, O4_MINI, openai_wire=True)),
        ("gpt-4.1-2025-04-14", "gpt-4.1", hand(text, GPT41, openai_wire=True)),
        ("gpt-4.1-2025-04-14", "gpt-4.1", hand(text, GPT41, openai_wire=True)),
        ("claude-haiku-4-5-20251001", "claude-haiku-4-5", hand(tool, HAIKU, openai_wire=False)),
        ("gpt-4o-mini", "gpt-4o-mini", hand(text, MINI, openai_wire=True)),
    ]
    got = [(r["model"], r["price_model"], r["cost_micros"]) for r in rows]
    assert got == expected
    # Sonnet, by hand: 25×3 + 12×15 + 100×0.30 + 30×3.75 + 10×6 = 457.5 → 458 µ$
    assert got[0][2] == 458
    assert all(r["status"] == "completed" for r in rows)


async def test_a_cut_stream_is_charged_for_what_was_used_and_unpriced_is_listed(pg_dsn, tmp_path):
    async with mock_and_relay(pg_dsn, tmp_path) as (_mock, relay):
        headers = {
            "x-api-key": relay.token,
            "anthropic-version": "2023-06-01",
            "x-mock-scenario": "long",
            "x-mock-events": "200",
            "x-mock-gap-ms": "20",
        }
        body = {"model": "claude-haiku-4-5", "max_tokens": 10, "stream": True, "messages": USER}
        async with httpx.AsyncClient() as client:
            async with client.stream(
                "POST", relay.gateway("anthropic") + "/v1/messages", headers=headers, json=body
            ) as r:
                async for _chunk in r.aiter_raw():
                    break  # the client leaves after its first read
            gpt = openai.AsyncOpenAI(
                api_key=relay.token, base_url=relay.gateway("openai") + "/v1", max_retries=0
            )
            await gpt.chat.completions.create(model="mystery-model-7", messages=USER)
        rows = await relay.wait_for_rows(COST_SQL, count=2)
        cut, unpriced = rows
        assert cut["status"] == "cancelled"
        assert cut["price_model"] == "claude-haiku-4-5"
        # What message_start reported before the cut, at Haiku 4.5's prices.
        used = (
            cut["input_tokens"] * Fraction(1)
            + cut["output_tokens"] * 5
            + cut["cache_read_tokens"] * Fraction("0.10")
            + cut["cache_write_tokens"] * Fraction("1.25")
        )
        assert cut["input_tokens"] == scenarios.LONG_INPUT_TOKENS
        assert cut["cost_micros"] == int(used + Fraction(1, 2)) > 0
        assert (unpriced["price_model"], unpriced["cost_micros"]) == (None, None)
        listed = await unpriced_models(relay.db, None)
        assert [(m["provider_type"], m["model"], m["usages"]) for m in listed] == [
            ("openai", "mystery-model-7", 1)
        ]
        # A price set now reaches the running relay (NOTIFY) and prices what
        # comes next; the row recorded before keeps what it was recorded with.
        await set_prices(relay.db, [MYSTERY])
        cache = relay.app.services.prices
        with trio.fail_after(5):
            while cache.lookup("openai", "mystery-model-7") is None:
                await trio.sleep(0.01)
        await gpt.chat.completions.create(model="mystery-model-7", messages=USER)
        rows = await relay.wait_for_rows(COST_SQL, count=3)
        text = scenarios.usage_for("text")
        assert [(r["price_model"], r["cost_micros"]) for r in rows[1:]] == [
            (None, None),
            (
                "mystery-model-*",
                text.input_tokens * 1 + text.output_tokens * 2 + text.cache_read_tokens * 1,
            ),
        ]


async def test_bedrock_native_stream_and_blocking_cost_by_hand(pg_dsn, tmp_path):
    """Bedrock's own API: the binary event stream and the blocking invoke, cache and
    thinking tokens included, priced at Anthropic's list prices (the default book
    has no Bedrock entries: global endpoints cost the same)."""
    from relay.testing import mock_bedrock
    from tests.e2e.test_bedrock_e2e import (
        BEDROCK_VERSION,
        MODEL,
        SMALL_MODEL,
        bedrock_client,
        bedrock_relay,
    )

    async with bedrock_relay(pg_dsn, tmp_path) as (mock, relay):
        client = bedrock_client(relay)
        try:
            mock.scenario = "thinking"
            async with client.messages.stream(
                model=MODEL, max_tokens=64, messages=USER, extra_body=BEDROCK_VERSION
            ) as stream:
                await stream.get_final_message()
            mock.scenario = "text"
            await client.messages.create(
                model=SMALL_MODEL, max_tokens=64, messages=USER, extra_body=BEDROCK_VERSION
            )
        finally:
            await client.close()
        rows = await relay.wait_for_rows(COST_SQL, count=2)
    inp, read, write = (
        mock_bedrock.INPUT_TOKENS,
        mock_bedrock.CACHE_READ_TOKENS,
        mock_bedrock.CACHE_WRITE_TOKENS,
    )
    thinking_out, text_out = (
        mock_bedrock.OUTPUT_TOKENS["thinking"],
        mock_bedrock.OUTPUT_TOKENS["text"],
    )
    # Sonnet 4.5: 25 × $3 + 30 × $15 (thinking is billed as output) + 3400 × $0.30
    # + 1200 × $3.75 (5-minute writes) = 75 + 450 + 1020 + 4500 µ$
    sonnet = inp * 3 + thinking_out * 15 + read * Fraction("0.30") + write * Fraction("3.75")
    # Haiku 4.5: 25 × $1 + 12 × $5 + 3400 × $0.10 + 1200 × $1.25 = 25 + 60 + 340 + 1500 µ$
    haiku = inp * 1 + text_out * 5 + read * Fraction("0.10") + write * Fraction("1.25")
    got = [
        (r["route"].rsplit("/", 1)[-1], r["price_model"], r["cost_micros"], r["output_tokens"])
        for r in rows
    ]
    assert got == [
        ("invoke-with-response-stream", "claude-sonnet-4-5", int(sonnet), thinking_out),
        ("invoke", "claude-haiku-4-5", int(haiku), text_out),
    ]
    assert (int(sonnet), int(haiku)) == (6045, 1925)
