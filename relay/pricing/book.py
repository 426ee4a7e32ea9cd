"""The price book: model prices per million tokens, matched to a recorded model,
and the cost of one usage in integer micro-dollars. Pure: no I/O.

Money is never a float here: prices are integer micro-dollars (1e-6 USD) per
million tokens, so a cost is ``sum(tokens * price) / 1e6`` micro-dollars,
rounded half up once per usage row (at most half a micro-dollar off per row).

Matching a model name (``PriceBook.lookup``), first hit wins:

1. the provider type's entries, then its fallback types (``bedrock`` →
   ``anthropic``: Bedrock's list prices are Anthropic's, global endpoint);
2. within a type, each candidate name of ``candidate_names(model)`` in order,
   exactly: the name as recorded (lower case), then without the Bedrock
   ARN / region / vendor / version parts, then without a date snapshot suffix;
3. then the entries whose name ends in ``*``: the longest prefix of any
   candidate wins;
4. of the entries for that name, the one with the latest ``effective_from``
   not after the usage's time.

No other guessing: ``gpt-4o-mini`` never falls back to ``gpt-4o``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Protocol

import msgspec

from relay.facts import Usage

MICROS_PER_DOLLAR = 1_000_000
TOKENS_PER_PRICE = 1_000_000  # prices are per million tokens

#: Where a provider type looks when it has no price of its own for a model.
FALLBACK_TYPES: Mapping[str, tuple[str, ...]] = {"bedrock": ("anthropic",)}


class Price(msgspec.Struct, frozen=True, kw_only=True):
    """One row of the price book: micro-dollars per million tokens.

    ``cache_read``/``cache_write``: None means charged as input.
    ``cache_write_1h``: Anthropic's one-hour cache writes (``cache_creation_1h``
    tokens); None means charged as ``cache_write``. ``reasoning``: None means
    reasoning tokens are billed as the output tokens they are counted in (what
    OpenAI and Anthropic do); set, they are taken out of the output and charged
    at this price.
    """

    provider_type: str
    model: str  # an exact name, or a prefix ending in "*"
    effective_from: date
    input: int
    output: int
    cache_read: int | None = None
    cache_write: int | None = None
    cache_write_1h: int | None = None
    reasoning: int | None = None
    source: str = "admin"  # "default" (the package's book) or "admin"


class PriceLookup(Protocol):
    """Finds the price of a model (a ``PriceBook``, or the running relay's ``PriceCache``)."""

    def lookup(
        self, provider_type: str, model: str, at: datetime | None = None
    ) -> Price | None: ...


def cost_micros(usage: Usage, price: Price) -> int:
    """The cost of ``usage`` at ``price``, in micro-dollars (rounded half up)."""
    reasoning = usage.extra.get("reasoning", 0) if price.reasoning is not None else 0
    reasoning = min(max(reasoning, 0), usage.output_tokens)
    write_1h = usage.extra.get("cache_creation_1h", 0) if price.cache_write_1h is not None else 0
    write_1h = min(max(write_1h, 0), usage.cache_write_tokens)
    cache_read = price.input if price.cache_read is None else price.cache_read
    cache_write = price.input if price.cache_write is None else price.cache_write
    total = (
        usage.input_tokens * price.input
        + (usage.output_tokens - reasoning) * price.output
        + reasoning * (price.reasoning or 0)
        + usage.cache_read_tokens * cache_read
        + (usage.cache_write_tokens - write_1h) * cache_write
        + write_1h * (price.cache_write_1h or 0)
    )
    return (total + TOKENS_PER_PRICE // 2) // TOKENS_PER_PRICE


_ARN = re.compile(r"^arn:[^/]*/")
_BEDROCK_VERSION = re.compile(r"-v\d+(:\d+)?$")
_BEDROCK_REGION = re.compile(r"^(global|us|us-gov|eu|apac|jp|au|ca)\.")
_BEDROCK_VENDOR = re.compile(r"^(anthropic|openai|amazon|meta|mistral|cohere|ai21|deepseek)\.")
_SNAPSHOT = re.compile(r"([-@](\d{8}|\d{4}-\d{2}-\d{2})|-latest)$")


@functools.lru_cache(maxsize=4096)
def model_candidates(model: str) -> tuple[str, ...]:
    """``candidate_names`` as a tuple, memoised: what lookups use."""
    name = model.strip().lower()
    names = [name]
    bare = _ARN.sub("", name)
    bare = _BEDROCK_VERSION.sub("", bare)
    bare = _BEDROCK_VENDOR.sub("", _BEDROCK_REGION.sub("", bare))
    family = _SNAPSHOT.sub("", bare)
    for candidate in (bare, family):
        if candidate and candidate not in names:
            names.append(candidate)
    return tuple(names)


def candidate_names(model: str) -> list[str]:
    """The names a recorded model is looked up under, most specific first.

    ``global.anthropic.claude-sonnet-4-5-20250929-v1:0`` →
    ``[that, claude-sonnet-4-5-20250929, claude-sonnet-4-5]``;
    ``gpt-4o-2024-08-06`` → ``[that, gpt-4o]``. Memoised (model names are few;
    the regular expressions ran per interception otherwise).
    """
    return list(model_candidates(model))


class PriceBook:
    """An immutable snapshot of the book, indexed for lookups (no I/O)."""

    def __init__(self, prices: Iterable[Price] = ()) -> None:
        exact: dict[tuple[str, str], list[Price]] = {}
        patterns: dict[str, list[Price]] = {}
        self.prices: tuple[Price, ...] = tuple(prices)
        for price in self.prices:
            key = (price.provider_type, price.model.lower())
            exact.setdefault(key, []).append(price)
        for (ptype, model), entries in exact.items():
            entries.sort(key=lambda p: p.effective_from, reverse=True)
            if model.endswith("*"):
                patterns.setdefault(ptype, []).extend(entries)
        self._exact = exact
        # Longest prefix first; an entry's own history stays newest first.
        self._patterns = {
            ptype: sorted(entries, key=lambda p: len(p.model), reverse=True)
            for ptype, entries in patterns.items()
        }

    def __len__(self) -> int:
        return len(self.prices)

    def lookup(self, provider_type: str, model: str, at: datetime | None = None) -> Price | None:
        """The price of ``model`` served by a provider of ``provider_type`` at ``at``."""
        if not model:
            return None
        day = (at or datetime.now(UTC)).astimezone(UTC).date()
        names = model_candidates(model)
        for ptype in (provider_type, *FALLBACK_TYPES.get(provider_type, ())):
            for name in names:
                found = _effective(self._exact.get((ptype, name)), day)
                if found is not None:
                    return found
            for entry in self._patterns.get(ptype, ()):
                prefix = entry.model.lower()[:-1]
                if entry.effective_from <= day and any(n.startswith(prefix) for n in names):
                    return _effective(self._exact[(ptype, entry.model.lower())], day)
        return None


def _effective(entries: list[Price] | None, day: date) -> Price | None:
    for entry in entries or ():
        if entry.effective_from <= day:
            return entry
    return None


def parse_dollars(text: str | int) -> int:
    """``"3.75"`` dollars (per million tokens) → 3_750_000 micro-dollars, exactly.

    Refuses floats' approximations by taking text (or an int); more than six
    decimals, a negative or a non-number raise ValueError.
    """
    if isinstance(text, bool) or not isinstance(text, str | int):
        raise ValueError(f'a price must be a decimal string such as "3.75", not {text!r}')
    try:
        value = Decimal(str(text).strip().removeprefix("$"))
    except InvalidOperation:
        raise ValueError(f"not a price in dollars: {text!r}") from None
    if not value.is_finite() or value < 0:
        raise ValueError(f"not a price in dollars: {text!r}")
    micros = value * MICROS_PER_DOLLAR
    if micros != micros.to_integral_value():
        raise ValueError(f"{text!r}: prices have at most six decimals (micro-dollars)")
    return int(micros)


def format_dollars(micros: int | None, places: int = 6) -> str:
    """Micro-dollars as dollars, with integer arithmetic (``1234567`` → ``1.234567``)."""
    if micros is None:
        return "-"
    sign = "-" if micros < 0 else ""
    whole, fraction = divmod(abs(micros), MICROS_PER_DOLLAR)
    digits = f"{fraction:06d}"[:places]
    return f"{sign}{whole:,}.{digits}" if places else f"{sign}{whole:,}"
