"""Providers in the database: seeding from the environment, reading, and CLI changes.

The ``providers`` table is the single source of truth at run time.

- ``seed_providers_from_env`` (at boot) upserts the environment's providers as
  rows with source ``env``: it only adds and updates. It never disables or
  deletes a row, because one database serves a fleet and the environment of
  one node says nothing about the providers of the others: an ``env`` row
  this environment lacks is reported (``SeedResult.absent``) and left as it
  is. Retiring a provider is explicit: ``relay providers disable`` or
  ``remove`` (see docs/providers.md). Rows with source ``api`` (made or
  taken over by the CLI) are never touched: when the environment defines a
  provider whose name an ``api`` row already holds, the ``api`` row wins and
  the environment's provider is skipped (reported in ``SeedResult.skipped``).
- ``build_providers`` returns the enabled rows. The registry reads every row
  with ``list_providers`` and keeps the enabled ones (and the names of the
  disabled ones, so a request for one is told it is disabled).
- The CLI's changes (add, update, enable, disable) leave rows with source
  ``api``: a CLI change to an ``env`` row takes it over, so the next boot's
  seeding leaves it alone. ``remove`` deletes the row; an ``env`` provider
  still in the environment comes back at the next boot.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import msgspec

from relay.db.bridge import Database
from relay.errors import CommandError
from relay.providers.types import Provider, ProviderType, provider_problems

# The columns of `providers` are the fields of Provider, in its order: the
# struct is the one list (the CLI's settable options derive from it too).
_FIELDS: tuple[str, ...] = Provider.__struct_fields__
_COLUMNS = ", ".join(_FIELDS)
_PLACEHOLDERS = ", ".join(f"${i}" for i in range(1, len(_FIELDS) + 1))
# Fields that define a provider; 'enabled' and 'source' are the row's state.
_CONFIG_FIELDS = tuple(f for f in _FIELDS if f not in ("enabled", "source"))
# What `relay providers add|update` sets from a plain option (--base-url, ...);
# name and type are given otherwise, keys through --key / --keys-stdin.
SETTABLE_FIELDS = tuple(f for f in _CONFIG_FIELDS if f not in ("name", "type", "keys"))

# Serialises seeding when several relay processes boot at once. An arbitrary
# constant, distinct from the migrations' lock ("relaysed" in ASCII).
SEED_LOCK_KEY = 0x72656C6179736564


class ProviderStoreError(CommandError, ValueError):
    """A CLI change that cannot be made (unknown name, name taken, invalid values)."""


class SeedResult(msgspec.Struct, frozen=True, kw_only=True):
    inserted: tuple[str, ...] = ()
    updated: tuple[str, ...] = ()  # changed, or re-enabled after coming back
    unchanged: tuple[str, ...] = ()
    # Enabled env rows this environment does not define (another node's, or
    # retired): left alone; seeding never disables.
    absent: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()  # names held by an 'api' row, which wins


class SeedPlan(msgspec.Struct, frozen=True, kw_only=True):
    inserts: tuple[Provider, ...]
    updates: tuple[Provider, ...]
    result: SeedResult


def provider_from_row(row: Mapping[str, Any]) -> Provider:
    values = {f: row[f] for f in _FIELDS}
    values["type"] = ProviderType(row["type"])
    values["keys"] = tuple(row["keys"] or ())
    return Provider(**values)


def _row_args(provider: Provider) -> list[Any]:
    values = msgspec.structs.asdict(provider)
    values["type"] = provider.type.value
    values["keys"] = list(provider.keys)
    return [values[f] for f in _FIELDS]


def _same_config(a: Provider, b: Provider) -> bool:
    return all(getattr(a, f) == getattr(b, f) for f in _CONFIG_FIELDS)


def plan_seed(existing: Iterable[Provider], wanted: Sequence[Provider]) -> SeedPlan:
    """What seeding must write, given the rows there and the environment's providers."""
    rows = {p.name: p for p in existing}
    wanted_names = {p.name for p in wanted}
    inserts: list[Provider] = []
    updates: list[Provider] = []
    unchanged: list[str] = []
    skipped: list[str] = []
    for provider in wanted:
        provider = msgspec.structs.replace(provider, source="env", enabled=True)
        row = rows.get(provider.name)
        if row is None:
            inserts.append(provider)
        elif row.source == "api":
            skipped.append(provider.name)
        elif row.enabled and _same_config(row, provider):
            unchanged.append(provider.name)
        else:
            updates.append(provider)
    absent = tuple(
        name
        for name, row in sorted(rows.items())
        if row.source == "env" and row.enabled and name not in wanted_names
    )
    return SeedPlan(
        inserts=tuple(inserts),
        updates=tuple(updates),
        result=SeedResult(
            inserted=tuple(p.name for p in inserts),
            updated=tuple(p.name for p in updates),
            unchanged=tuple(unchanged),
            absent=absent,
            skipped=tuple(skipped),
        ),
    )


_INSERT = f"INSERT INTO providers ({_COLUMNS}) VALUES ({_PLACEHOLDERS})"
_UPDATE = (
    "UPDATE providers SET "
    + ", ".join(f"{f} = ${i}" for i, f in enumerate(_FIELDS, start=1) if f != "name")
    + ", updated_at = now() WHERE name = $1"
)


async def seed_providers_from_env(db: Database, providers: Sequence[Provider]) -> SeedResult:
    """Add and update the ``env`` rows of the environment's providers; never
    disable or delete one (see the module doc).

    Writes only what differs, so a boot with an unchanged environment sends no
    change notification to the running relays.
    """

    async def seed(conn: Any) -> SeedResult:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", SEED_LOCK_KEY)
            rows = await conn.fetch(f"SELECT {_COLUMNS} FROM providers FOR UPDATE")
            plan = plan_seed((provider_from_row(r) for r in rows), providers)
            for provider in plan.inserts:
                await conn.execute(_INSERT, *_row_args(provider))
            for provider in plan.updates:
                await conn.execute(_UPDATE, *_row_args(provider))
        return plan.result

    result: SeedResult = await db.run(seed)
    return result


async def build_providers(db: Database) -> dict[str, Provider]:
    """The enabled providers by name: what every part of the relay uses."""
    rows = await db.fetch(f"SELECT {_COLUMNS} FROM providers WHERE enabled ORDER BY name")
    return {row["name"]: provider_from_row(row) for row in rows}


async def list_providers(db: Database) -> list[Provider]:
    """Every row, enabled or not (for the CLI)."""
    rows = await db.fetch(f"SELECT {_COLUMNS} FROM providers ORDER BY name")
    return [provider_from_row(row) for row in rows]


async def get_provider(db: Database, name: str) -> Provider | None:
    row = await db.fetchrow(f"SELECT {_COLUMNS} FROM providers WHERE name = $1", name)
    return provider_from_row(row) if row is not None else None


def _check(provider: Provider) -> None:
    problems = provider_problems(provider)
    if problems:
        raise ProviderStoreError("; ".join(problems))


async def add_provider(db: Database, provider: Provider) -> Provider:
    """Insert a new provider with source 'api'; its name must be free."""
    provider = msgspec.structs.replace(provider, source="api")
    _check(provider)
    name = await db.fetchval(
        _INSERT + " ON CONFLICT (name) DO NOTHING RETURNING name", *_row_args(provider)
    )
    if name is None:
        raise ProviderStoreError(f"a provider named {provider.name!r} already exists")
    return provider


async def update_provider(db: Database, name: str, **changes: Any) -> Provider:
    """Change fields of a provider (not its name or type); the row becomes source 'api'."""
    bad = set(changes) - (set(_CONFIG_FIELDS) - {"name", "type"}) - {"enabled"}
    if bad:
        raise ProviderStoreError(f"cannot change {', '.join(sorted(bad))}")
    if "keys" in changes:
        changes["keys"] = tuple(changes["keys"])

    async def update(conn: Any) -> Provider:
        async with conn.transaction():
            row = await conn.fetchrow(
                f"SELECT {_COLUMNS} FROM providers WHERE name = $1 FOR UPDATE", name
            )
            if row is None:
                raise ProviderStoreError(f"no provider named {name!r}")
            provider = msgspec.structs.replace(provider_from_row(row), source="api", **changes)
            _check(provider)
            await conn.execute(_UPDATE, *_row_args(provider))
            return provider

    provider: Provider = await db.run(update)
    return provider


async def set_provider_enabled(db: Database, name: str, enabled: bool) -> Provider:
    return await update_provider(db, name, enabled=enabled)


async def remove_provider(db: Database, name: str) -> Provider:
    row = await db.fetchrow(f"DELETE FROM providers WHERE name = $1 RETURNING {_COLUMNS}", name)
    if row is None:
        raise ProviderStoreError(f"no provider named {name!r}")
    return provider_from_row(row)
