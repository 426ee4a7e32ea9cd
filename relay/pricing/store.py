"""The price book in PostgreSQL (``model_prices``): the default book shipped
with the package, loading and changing prices, and ``PriceCache``, the
in-memory book of a running relay, reloaded when the table changes.

A lookup on the request path never touches the database: the recorder's rows
are priced from ``PriceCache.book``, which the config listener replaces
after every change to ``model_prices`` (one NOTIFY per statement) and after
a reconnect (resync).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, date, datetime
from importlib import resources
from typing import TYPE_CHECKING, Any, Protocol

from relay.errors import CommandError
from relay.pricing.book import Price, PriceBook, parse_dollars

if TYPE_CHECKING:
    from relay.providers.registry import ConfigChange

log = logging.getLogger("relay.pricing")

DEFAULT_PRICES_FILE = "default_prices.json"
_PRICE_FIELDS = ("input", "output", "cache_read", "cache_write", "cache_write_1h", "reasoning")


class PricesDatabase(Protocol):
    async def execute(self, sql: str, *args: Any) -> Any: ...

    async def fetch(self, sql: str, *args: Any) -> list[Any]: ...


class PriceFileError(CommandError):
    """A price file (``relay prices import``, the package's default) is not valid."""


def prices_from_document(doc: Any, *, source: str, where: str = "price file") -> list[Price]:
    """The prices of a price document: ``{"effective_from": …, "prices": [{…}, …]}``.

    Each price: ``provider_type``, ``model``, ``input``, ``output`` and optional
    ``cache_read``, ``cache_write``, ``cache_write_1h``, ``reasoning`` in dollars
    per million tokens as decimal strings (``"3.75"``), and an optional
    ``effective_from`` (``YYYY-MM-DD``) that overrides the document's.
    """
    if not isinstance(doc, dict) or not isinstance(doc.get("prices"), list):
        raise PriceFileError(f'{where}: expected an object with a "prices" list')
    default_from = doc.get("effective_from")
    prices = []
    for n, entry in enumerate(doc["prices"], 1):
        at = f"{where}: prices[{n}]"
        if not isinstance(entry, dict):
            raise PriceFileError(f"{at}: expected an object")
        unknown = set(entry) - {"provider_type", "model", "effective_from", *_PRICE_FIELDS}
        if unknown:
            raise PriceFileError(f"{at}: unknown field(s) {', '.join(sorted(unknown))}")
        try:
            ptype, model = entry["provider_type"], entry["model"]
            if not isinstance(ptype, str) or not ptype or not isinstance(model, str) or not model:
                raise ValueError("provider_type and model must be non-empty strings")
            since = entry.get("effective_from", default_from)
            if not isinstance(since, str):
                raise ValueError("effective_from (YYYY-MM-DD) is missing")
            values = {
                name: parse_dollars(entry[name]) if entry.get(name) is not None else None
                for name in _PRICE_FIELDS
            }
            if values["input"] is None or values["output"] is None:
                raise ValueError("input and output prices are required")
            prices.append(
                Price(
                    provider_type=ptype,
                    model=model.strip().lower(),
                    effective_from=date.fromisoformat(since),
                    source=source,
                    **values,  # type: ignore[arg-type]
                )
            )
        except KeyError as exc:
            raise PriceFileError(f"{at}: {exc.args[0]} is missing") from None
        except ValueError as exc:
            raise PriceFileError(f"{at}: {exc}") from None
    return prices


def default_prices() -> list[Price]:
    """The package's default book (relay/pricing/default_prices.json)."""
    text = resources.files("relay.pricing").joinpath(DEFAULT_PRICES_FILE).read_text()
    return prices_from_document(json.loads(text), source="default", where=DEFAULT_PRICES_FILE)


def default_prices_checked() -> str:
    """When the default book's prices were last checked against the providers' pages."""
    text = resources.files("relay.pricing").joinpath(DEFAULT_PRICES_FILE).read_text()
    return str(json.loads(text).get("checked", "unknown"))


_COLUMNS = (
    "provider_type, model, effective_from, input_micros, output_micros, cache_read_micros,"
    " cache_write_micros, cache_write_1h_micros, reasoning_micros, source"
)
_UPSERT = f"""
INSERT INTO model_prices ({_COLUMNS})
SELECT * FROM unnest($1::text[], $2::text[], $3::date[], $4::bigint[], $5::bigint[],
                     $6::bigint[], $7::bigint[], $8::bigint[], $9::bigint[], $10::text[])
ON CONFLICT (provider_type, model, effective_from) DO UPDATE SET
    input_micros = EXCLUDED.input_micros, output_micros = EXCLUDED.output_micros,
    cache_read_micros = EXCLUDED.cache_read_micros,
    cache_write_micros = EXCLUDED.cache_write_micros,
    cache_write_1h_micros = EXCLUDED.cache_write_1h_micros,
    reasoning_micros = EXCLUDED.reasoning_micros, source = EXCLUDED.source, updated_at = now()
"""
# The defaults never replace an operator's row, and change nothing that is already so.
_SEED_WHERE = """
WHERE model_prices.source = 'default'
  AND (model_prices.input_micros, model_prices.output_micros, model_prices.cache_read_micros,
       model_prices.cache_write_micros, model_prices.cache_write_1h_micros,
       model_prices.reasoning_micros)
      IS DISTINCT FROM
      (EXCLUDED.input_micros, EXCLUDED.output_micros, EXCLUDED.cache_read_micros,
       EXCLUDED.cache_write_micros, EXCLUDED.cache_write_1h_micros, EXCLUDED.reasoning_micros)
"""


def _columns(prices: Sequence[Price]) -> list[list[Any]]:
    return [
        [p.provider_type for p in prices],
        [p.model for p in prices],
        [p.effective_from for p in prices],
        [p.input for p in prices],
        [p.output for p in prices],
        [p.cache_read for p in prices],
        [p.cache_write for p in prices],
        [p.cache_write_1h for p in prices],
        [p.reasoning for p in prices],
        [p.source for p in prices],
    ]


async def seed_default_prices(db: PricesDatabase) -> None:
    """Load the package's default book (after migrating; idempotent, one statement)."""
    prices = default_prices()
    await db.execute(_UPSERT + _SEED_WHERE, *_columns(prices))


async def set_prices(db: PricesDatabase, prices: Sequence[Price]) -> None:
    """Add or replace prices (``relay prices set | import``): one statement, one reload."""
    if prices:
        await db.execute(_UPSERT, *_columns(prices))


async def load_prices(db: PricesDatabase) -> list[Price]:
    rows = await db.fetch(
        f"SELECT {_COLUMNS} FROM model_prices ORDER BY provider_type, model, effective_from"
    )
    return [
        Price(
            provider_type=r["provider_type"],
            model=r["model"],
            effective_from=r["effective_from"],
            input=r["input_micros"],
            output=r["output_micros"],
            cache_read=r["cache_read_micros"],
            cache_write=r["cache_write_micros"],
            cache_write_1h=r["cache_write_1h_micros"],
            reasoning=r["reasoning_micros"],
            source=r["source"],
        )
        for r in rows
    ]


async def remove_price(
    db: PricesDatabase, provider_type: str, model: str, effective_from: date | None
) -> int:
    status = await db.execute(
        "DELETE FROM model_prices WHERE provider_type = $1 AND model = $2"
        " AND ($3::date IS NULL OR effective_from = $3)",
        provider_type,
        model.strip().lower(),
        effective_from,
    )
    return int(str(status).rsplit(" ", 1)[-1])


class UnpricedModel(Protocol):
    provider_type: str
    model: str


_UNPRICED_SQL = """
SELECT i.provider_type, i.model, count(*) AS usages,
       sum(t.input_tokens + t.output_tokens + t.cache_read_tokens + t.cache_write_tokens)::bigint
           AS tokens,
       max(t.created_at) AS last_seen
FROM token_usages t JOIN interceptions i ON i.id = t.interception_id
WHERE t.cost_micros IS NULL
  AND ($1::timestamptz IS NULL OR t.created_at >= $1)
GROUP BY 1, 2
ORDER BY usages DESC, 1, 2
"""


async def unpriced_models(db: PricesDatabase, since: datetime | None) -> list[dict[str, Any]]:
    """Models whose usage was recorded without a price, most usages first."""
    return [dict(row) for row in await db.fetch(_UNPRICED_SQL, since)]


class PriceCache:
    """The price book of a running relay: loaded at start, replaced on every
    change to ``model_prices`` (a ``ConfigListener`` subscriber). A lookup is a
    dictionary access; a request never waits for the database."""

    def __init__(self, prices: Iterable[Price] = ()) -> None:
        self.book = PriceBook(prices)
        self.loaded_at: datetime | None = None

    def lookup(self, provider_type: str, model: str, at: datetime | None = None) -> Price | None:
        return self.book.lookup(provider_type, model, at)

    async def reload(self, db: PricesDatabase) -> None:
        self.book = PriceBook(await load_prices(db))
        self.loaded_at = datetime.now(UTC)

    async def on_config_change(self, changes: Sequence[ConfigChange], db: Any) -> None:
        if any(c.kind in ("model_prices", "resync") for c in changes):
            await self.reload(db)
            log.info("price book reloaded: %d price(s)", len(self.book))


def price_rows(prices: Iterable[Price]) -> Mapping[tuple[str, str], list[Price]]:
    """Prices grouped by (provider type, model), each newest first."""
    grouped: dict[tuple[str, str], list[Price]] = {}
    for price in prices:
        grouped.setdefault((price.provider_type, price.model), []).append(price)
    for entries in grouped.values():
        entries.sort(key=lambda p: p.effective_from, reverse=True)
    return grouped
