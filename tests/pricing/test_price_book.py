"""The price book: matching rules, cost arithmetic, the default book, and the
cost of every captured fixture against a hand computation."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from fractions import Fraction

import pytest

from relay.facts import Facts, Usage
from relay.pricing.book import (
    Price,
    PriceBook,
    candidate_names,
    cost_micros,
    format_dollars,
    parse_dollars,
)
from relay.pricing.store import PriceFileError, default_prices, prices_from_document
from relay.record.events import InterceptionMeta, TokenUsageRecord, records_for
from tests.intercept.test_accumulators import EXPECTED, facts_of

BOOK = PriceBook(default_prices())
AT = datetime(2026, 6, 1, tzinfo=UTC)


def p(model: str, inp: int, out: int, ptype: str = "anthropic", **kw: object) -> Price:
    return Price(
        provider_type=ptype,
        model=model,
        effective_from=kw.pop("since", date(2024, 1, 1)),  # type: ignore[arg-type]
        input=inp,
        output=out,
        **kw,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    ("model", "names"),
    [
        (
            "global.anthropic.claude-sonnet-4-5-20250929-v1:0",
            [
                "global.anthropic.claude-sonnet-4-5-20250929-v1:0",
                "claude-sonnet-4-5-20250929",
                "claude-sonnet-4-5",
            ],
        ),
        ("us.anthropic.claude-3-5-haiku-20241022-v1:0", None),
        (
            "arn:aws:bedrock:us-east-1:123:inference-profile/eu.anthropic.claude-opus-4-1-20250805-v1:0",
            None,
        ),
        ("gpt-4o-2024-08-06", ["gpt-4o-2024-08-06", "gpt-4o"]),
        ("claude-sonnet-4-5@20250929", ["claude-sonnet-4-5@20250929", "claude-sonnet-4-5"]),
        ("Claude-3-7-Sonnet-Latest", ["claude-3-7-sonnet-latest", "claude-3-7-sonnet"]),
        ("gpt-4o-mini", ["gpt-4o-mini"]),
    ],
)
def test_candidate_names(model: str, names: list[str] | None) -> None:
    if names is not None:
        assert candidate_names(model) == names
    else:
        assert candidate_names(model)[-1].startswith("claude-")


@pytest.mark.parametrize(
    ("ptype", "model", "family"),
    [
        ("anthropic", "claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
        ("anthropic", "claude-sonnet-4-5", "claude-sonnet-4-5"),
        ("bedrock", "global.anthropic.claude-sonnet-4-5-20250929-v1:0", "claude-sonnet-4-5"),
        ("bedrock", "us.anthropic.claude-3-5-haiku-20241022-v1:0", "claude-3-5-haiku"),
        ("anthropic", "claude-opus-4-1-20250805", "claude-opus-4-1"),
        ("anthropic", "claude-opus-4-20250514", "claude-opus-4"),
        ("openai", "gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("openai", "gpt-4o-2024-08-06", "gpt-4o"),
        ("openai", "o4-mini-2025-04-16", "o4-mini"),
        ("openai", "gpt-5-codex", "gpt-5-codex"),
    ],
)
def test_default_book_matches_snapshots_and_bedrock_ids(
    ptype: str, model: str, family: str
) -> None:
    price = BOOK.lookup(ptype, model, AT)
    assert price is not None and price.model == family


@pytest.mark.parametrize(
    ("ptype", "model"),
    [
        ("openai", "deepseek-reasoner"),
        ("openai", "gpt-4o-mini-tts"),  # no prefix guessing: not gpt-4o-mini
        ("anthropic", "gpt-4o"),  # another type's model
        ("openai", "claude-sonnet-4-5"),  # only bedrock falls back to anthropic
        ("anthropic", ""),
    ],
)
def test_unmatched_models_are_unpriced(ptype: str, model: str) -> None:
    assert BOOK.lookup(ptype, model, AT) is None


def test_effective_from_picks_the_price_in_force() -> None:
    book = PriceBook(
        [
            p("m", 1_000_000, 2_000_000, since=date(2025, 1, 1)),
            p("m", 3_000_000, 4_000_000, since=date(2026, 1, 1)),
        ]
    )
    assert book.lookup("anthropic", "m", datetime(2024, 12, 31, tzinfo=UTC)) is None
    assert book.lookup("anthropic", "m", datetime(2025, 6, 1, tzinfo=UTC)).input == 1_000_000  # type: ignore[union-attr]
    assert book.lookup("anthropic", "m", datetime(2026, 1, 1, tzinfo=UTC)).input == 3_000_000  # type: ignore[union-attr]


def test_patterns_longest_prefix_wins_and_exact_beats_patterns() -> None:
    book = PriceBook(
        [
            p("ft:*", 1, 1, "openai"),
            p("ft:gpt-4o*", 2, 2, "openai"),
            p("ft:gpt-4o:acme", 3, 3, "openai"),
        ]
    )
    assert book.lookup("openai", "ft:gpt-4o-mini:x", AT).input == 2  # type: ignore[union-attr]
    assert book.lookup("openai", "ft:o3:x", AT).input == 1  # type: ignore[union-attr]
    assert book.lookup("openai", "ft:gpt-4o:acme", AT).input == 3  # type: ignore[union-attr]
    assert book.lookup("openai", "gpt-4o", AT) is None


def test_bedrock_prices_of_its_own_win_over_anthropics() -> None:
    book = PriceBook(
        [p("claude-sonnet-4-5", 3_000_000, 1), p("claude-sonnet-4-5", 3_300_000, 1, "bedrock")]
    )
    price = book.lookup("bedrock", "us.anthropic.claude-sonnet-4-5-20250929-v1:0", AT)
    assert price is not None and price.input == 3_300_000


def test_cost_arithmetic_by_hand() -> None:
    # Sonnet 4.5: $3 in, $15 out, $0.30 cache read, $3.75 5m write, $6 1h write.
    price = BOOK.lookup("anthropic", "claude-sonnet-4-5", AT)
    assert price is not None
    usage = Usage(
        input_tokens=1000,
        output_tokens=500,
        cache_read_tokens=20_000,
        cache_write_tokens=3000,
        extra={"cache_creation_1h": 1000, "reasoning": 100},
    )
    # 1000×3 + 500×15 + 20000×0.30 + 2000×3.75 + 1000×6 = 3000+7500+6000+7500+6000 = 30000 µ$
    assert cost_micros(usage, price) == 30_000
    # Reasoning priced apart: taken out of the output.
    apart = Price(**{**_fields(price), "reasoning": 60_000_000})
    assert cost_micros(usage, apart) == 30_000 - 100 * 15 + 100 * 60
    # Rounded half up, once: 1 token at $0.25/M = 0.25 µ$ → 0; 2 tokens at $0.25 → 0.5 → 1.
    haiku3 = BOOK.lookup("anthropic", "claude-3-haiku", AT)
    assert haiku3 is not None
    assert cost_micros(Usage(input_tokens=1), haiku3) == 0
    assert cost_micros(Usage(input_tokens=2), haiku3) == 1


def _fields(price: Price) -> dict[str, object]:
    return {f: getattr(price, f) for f in price.__struct_fields__}


def test_parse_and_format_dollars_without_floats() -> None:
    assert parse_dollars("3.75") == 3_750_000
    assert parse_dollars("$0.000001") == 1
    assert parse_dollars(15) == 15_000_000
    for bad in ("0.0000001", "-1", "abc", "nan", 1.5, True):
        with pytest.raises(ValueError):
            parse_dollars(bad)  # type: ignore[arg-type]
    assert format_dollars(1_234_567_891) == "1,234.567891"
    assert format_dollars(5) == "0.000005"
    assert format_dollars(None) == "-"


def test_price_files_are_checked() -> None:
    good = {
        "effective_from": "2025-01-01",
        "prices": [{"provider_type": "openai", "model": "X", "input": "1", "output": "2"}],
    }
    (price,) = prices_from_document(good, source="admin")
    assert (price.model, price.input, price.output, price.cache_read) == (
        "x",
        1_000_000,
        2_000_000,
        None,
    )
    for bad in (
        {},
        {"prices": [{"provider_type": "openai", "model": "x", "input": "1", "output": "2"}]},
        {
            "effective_from": "2025-01-01",
            "prices": [{"provider_type": "openai", "model": "x", "input": 0.1, "output": "2"}],
        },
        {
            "effective_from": "2025-01-01",
            "prices": [{"provider_type": "openai", "model": "x", "input": "1"}],
        },
        {
            "effective_from": "2025-01-01",
            "prices": [
                {"provider_type": "openai", "model": "x", "input": "1", "output": "1", "typo": "1"}
            ],
        },
    ):
        with pytest.raises(PriceFileError):
            prices_from_document(json.loads(json.dumps(bad)), source="admin")


# --- every captured fixture, priced, against a hand computation -----------------------

# Dollars per million tokens, written from the providers' price pages (not read
# from the package's book): input, output, cache read, 5m cache write, 1h write.
HAND_PRICES = {
    "claude-sonnet-4-5": ("3", "15", "0.30", "3.75", "6"),
    "claude-opus-4-1": ("15", "75", "1.50", "18.75", "30"),
    "gpt-4o": ("2.50", "10", "1.25", "2.50", None),
    "gpt-4o-mini": ("0.15", "0.60", "0.075", "0.15", None),
    "gpt-4.1": ("2", "8", "0.50", "2", None),
    "o4-mini": ("1.10", "4.40", "0.275", "1.10", None),
    "o3": ("2", "8", "0.50", "2", None),
    "gpt-5-codex": ("1.25", "10", "0.125", "1.25", None),
}


def hand_cost(usage: Usage, family: str) -> int:
    inp, out, read, write, write_1h = (Fraction(x) if x else None for x in HAND_PRICES[family])
    one_hour = usage.extra.get("cache_creation_1h", 0) if write_1h is not None else 0
    dollars = (
        usage.input_tokens * inp
        + usage.output_tokens * out  # reasoning is billed as the output it is counted in
        + usage.cache_read_tokens * read
        + (usage.cache_write_tokens - one_hour) * write
        + one_hour * (write_1h or 0)
    ) / 1_000_000
    micros = dollars * 1_000_000
    return int(micros + Fraction(1, 2))  # half up


PRICED_FIXTURES = sorted(
    name for name, facts in EXPECTED.items() if facts.usage is not None and facts.model
)


@pytest.mark.parametrize("name", PRICED_FIXTURES)
def test_fixture_cost_equals_hand_computation(name: str) -> None:
    facts = facts_of(name)
    assert facts.usage is not None and facts.model is not None
    ptype = "anthropic" if name.startswith("messages/") else "openai"
    meta = InterceptionMeta(provider_name=ptype, provider_type=ptype, model=facts.model, route="/x")
    usage_rows = [
        r
        for r in records_for(meta, facts, None, "completed", prices=BOOK)
        if isinstance(r, TokenUsageRecord)
    ]
    (row,) = usage_rows
    if facts.model == "deepseek-reasoner":
        assert (row.price_model, row.cost_micros) == (None, None)  # unpriced, not $0
        return
    family = candidate_names(facts.model)[-1]
    assert row.price_model == family
    assert row.cost_micros == hand_cost(facts.usage, family)
    assert row.cost_micros > 0


def test_a_few_fixture_costs_literally() -> None:
    # messages/thinking.sse, Opus 4.1: 12 in × $15 + 215 out (180 of them thinking) × $75
    # + 500 read × $1.50 + 1000 5m-write × $18.75 + 2000 1h-write × $30
    # = 180 + 16125 + 750 + 18750 + 60000 µ$
    assert _cost("messages/thinking.sse") == 95_805
    # chatcompletions/text.json, gpt-4o: 1117 × $2.50 + 46 × $10 = 2792.5 + 460 → 3253 µ$
    assert _cost("chatcompletions/text.json") == 3253


def _cost(name: str) -> int | None:
    facts = facts_of(name)
    ptype = "anthropic" if name.startswith("messages/") else "openai"
    meta = InterceptionMeta(
        provider_name=ptype, provider_type=ptype, model=facts.model or "", route="/x"
    )
    rows = records_for(meta, facts, None, "completed", prices=BOOK)
    return next(r.cost_micros for r in rows if isinstance(r, TokenUsageRecord))


def test_without_a_book_usage_is_recorded_unpriced() -> None:
    meta = InterceptionMeta(
        provider_name="a", provider_type="anthropic", model="claude-sonnet-4-5", route="/x"
    )
    rows = records_for(meta, Facts(usage=Usage(input_tokens=5)), None, "completed")
    usage = next(r for r in rows if isinstance(r, TokenUsageRecord))
    assert usage.cost_micros is None and usage.price_model is None
