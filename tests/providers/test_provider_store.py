"""Providers in PostgreSQL: seeding, building, CLI changes, and reload through NOTIFY."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import msgspec
import pytest
import trio

from relay.db.bridge import Database
from relay.providers.registry import ConfigChange, ConfigListener, ProviderRegistry
from relay.providers.store import (
    ProviderStoreError,
    add_provider,
    build_providers,
    list_providers,
    remove_provider,
    seed_providers_from_env,
    set_provider_enabled,
    update_provider,
)
from relay.providers.types import Provider, ProviderType

OPENAI = Provider(
    name="openai", type=ProviderType.OPENAI, base_url="https://api.openai.com/v1/", keys=("k1",)
)
CORP = Provider(
    name="anthropic-corp",
    type=ProviderType.ANTHROPIC,
    base_url="https://proxy.example.com/anthropic",
    keys=("k2", "k3"),
)
BEDROCK = Provider(
    name="bedrock",
    type=ProviderType.BEDROCK,
    bedrock_region="us-east-1",
    bedrock_access_key="AKIAEXAMPLE",
    bedrock_access_key_secret="secret",
    bedrock_model="m-big",
    bedrock_small_fast_model="m-small",
)


async def test_seed_then_build_returns_typed_providers(db):
    result = await seed_providers_from_env(db, [OPENAI, CORP, BEDROCK])
    assert sorted(result.inserted) == ["anthropic-corp", "bedrock", "openai"]
    built = await build_providers(db)
    assert built == {"anthropic-corp": CORP, "bedrock": BEDROCK, "openai": OPENAI}
    assert all(p.source == "env" and p.enabled for p in built.values())


async def test_reseeding_an_unchanged_environment_writes_nothing(db):
    await seed_providers_from_env(db, [OPENAI, CORP])
    stamps = await db.fetch("SELECT name, updated_at FROM providers ORDER BY name")
    result = await seed_providers_from_env(db, [OPENAI, CORP])
    assert (result.inserted, result.updated) == ((), ())
    assert sorted(result.unchanged) == ["anthropic-corp", "openai"]
    assert await db.fetch("SELECT name, updated_at FROM providers ORDER BY name") == stamps


async def test_changed_env_provider_is_updated(db):
    await seed_providers_from_env(db, [OPENAI])
    changed = msgspec.structs.replace(OPENAI, keys=("k1", "k9"), base_url="https://o.example/v1/")
    result = await seed_providers_from_env(db, [changed])
    assert result.updated == ("openai",)
    assert (await build_providers(db))["openai"] == changed


async def test_seeding_never_disables_env_rows_another_environment_lacks(db):
    """One database, a fleet: a node whose environment lacks a provider must not
    take it away from the others (issue 13 item 10)."""
    await seed_providers_from_env(db, [OPENAI, CORP])
    result = await seed_providers_from_env(db, [OPENAI])
    assert result.absent == ("anthropic-corp",)
    assert set(await build_providers(db)) == {"openai", "anthropic-corp"}
    result = await seed_providers_from_env(db, [])
    assert result.absent == ("anthropic-corp", "openai")
    assert set(await build_providers(db)) == {"openai", "anthropic-corp"}
    # Retiring one is explicit (the CLI's disable); seeding then leaves it alone.
    await set_provider_enabled(db, "anthropic-corp", False)
    result = await seed_providers_from_env(db, [OPENAI, CORP])
    assert result.skipped == ("anthropic-corp",)
    assert set(await build_providers(db)) == {"openai"}


async def test_a_disabled_env_row_back_in_the_environment_is_enabled(db):
    # (Rows an earlier version disabled while seeding.)
    await seed_providers_from_env(db, [OPENAI, CORP])
    await db.execute("UPDATE providers SET enabled = false WHERE name = 'anthropic-corp'")
    result = await seed_providers_from_env(db, [OPENAI, CORP])
    assert result.updated == ("anthropic-corp",)
    assert set(await build_providers(db)) == {"openai", "anthropic-corp"}


async def test_api_rows_are_left_alone_and_win_a_name_clash(db):
    mine = Provider(name="mine", type=ProviderType.OPENAI, base_url="https://mine.example/v1/")
    await add_provider(db, mine)
    clash = Provider(name="openai", type=ProviderType.OPENAI, base_url="https://api.example/")
    await add_provider(db, clash)
    result = await seed_providers_from_env(db, [OPENAI])
    assert result.skipped == ("openai",) and result.inserted == ()
    built = await build_providers(db)
    assert built["openai"].base_url == "https://api.example/" and built["openai"].source == "api"
    assert built["mine"].source == "api"
    # An empty environment changes nothing; api rows are never reported absent.
    result = await seed_providers_from_env(db, [])
    assert result.absent == ()
    assert set(await build_providers(db)) == {"mine", "openai"}


async def test_a_cli_change_to_an_env_row_takes_it_over(db):
    await seed_providers_from_env(db, [OPENAI, CORP])
    disabled = await set_provider_enabled(db, "anthropic-corp", False)
    assert disabled.source == "api" and not disabled.enabled
    updated = await update_provider(db, "openai", base_url="https://other.example/v1/")
    assert updated.source == "api" and updated.keys == OPENAI.keys
    result = await seed_providers_from_env(db, [OPENAI, CORP])
    assert sorted(result.skipped) == ["anthropic-corp", "openai"]
    assert (await build_providers(db)) == {"openai": updated}


async def test_crud_and_validation(db):
    added = await add_provider(
        db, Provider(name="openai-eu", type=ProviderType.OPENAI, base_url="https://eu/v1/")
    )
    assert added.source == "api"
    with pytest.raises(ProviderStoreError, match="already exists"):
        await add_provider(db, added)
    with pytest.raises(ProviderStoreError, match="must match"):
        await add_provider(db, Provider(name="Bad Name", type=ProviderType.OPENAI))
    with pytest.raises(ProviderStoreError, match="too many keys"):
        await update_provider(db, "openai-eu", keys=("a", "b", "c", "d", "e", "f"))
    with pytest.raises(ProviderStoreError, match="duplicate"):
        await update_provider(db, "openai-eu", keys=("a", "a"))
    with pytest.raises(ProviderStoreError, match="no provider named"):
        await update_provider(db, "nope", base_url="x")
    with pytest.raises(ProviderStoreError, match="cannot change"):
        await update_provider(db, "openai-eu", type=ProviderType.ANTHROPIC)
    assert (await update_provider(db, "openai-eu", keys=("a", "b"))).keys == ("a", "b")
    await set_provider_enabled(db, "openai-eu", False)
    assert await build_providers(db) == {}
    assert [p.name for p in await list_providers(db)] == ["openai-eu"]
    await set_provider_enabled(db, "openai-eu", True)
    assert set(await build_providers(db)) == {"openai-eu"}
    removed = await remove_provider(db, "openai-eu")
    assert removed.keys == ("a", "b")
    assert await list_providers(db) == []
    with pytest.raises(ProviderStoreError):
        await remove_provider(db, "openai-eu")


async def test_concurrent_seeding_from_several_connections_agrees(pg_dsn):
    results = []

    async def seed_once() -> None:
        async with Database.open(pg_dsn, max_size=1) as db:
            results.append(await seed_providers_from_env(db, [OPENAI, CORP, BEDROCK]))

    async with trio.open_nursery() as nursery:
        for _ in range(4):
            nursery.start_soon(seed_once)
    assert sorted(len(r.inserted) for r in results) == [0, 0, 0, 3]
    async with Database.open(pg_dsn) as db:
        assert len(await build_providers(db)) == 3


async def test_registry_follows_changes_in_process_and_keeps_old_snapshots(db):
    await seed_providers_from_env(db, [OPENAI])
    registry = ProviderRegistry()
    seen: list[list[ConfigChange]] = []
    changed = trio.Event()

    async def on_change(changes):
        seen.append(list(changes))
        changed.set()

    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: registry.run(db, on_change=on_change, task_status=task_status)
        )
        assert set(registry.providers) == {"openai"}  # loaded before started()
        in_flight = registry.get("openai")
        changed = trio.Event()
        await update_provider(db, "openai", base_url="https://new.example/v1/")
        with trio.fail_after(10):
            await changed.wait()
        assert registry.get("openai").base_url == "https://new.example/v1/"
        # A request that took the provider before the change keeps it.
        assert in_flight == OPENAI
        assert any(c.kind == "providers" and c.id == "openai" for c in seen[-1])
        nursery.cancel_scope.cancel()


class _Subscriber:
    def __init__(self) -> None:
        self.batches: list[list[ConfigChange]] = []
        self.event = trio.Event()

    async def on_config_change(self, changes, db) -> None:
        self.batches.append(list(changes))
        self.event.set()


async def test_listener_batches_a_burst_and_sends_resync_first(db):
    subscriber = _Subscriber()
    listener = ConfigListener(db, subscriber, debounce=0.2)
    async with trio.open_nursery() as nursery:
        await nursery.start(listener.run)
        assert subscriber.batches == [[ConfigChange(kind="resync")]]
        subscriber.event = trio.Event()
        # Ten rows in one statement: one notification each, delivered as one batch.
        await seed_providers_from_env(
            db,
            [Provider(name=f"p{i}", type=ProviderType.OPENAI) for i in range(10)],
        )
        with trio.fail_after(10):
            await subscriber.event.wait()
        await trio.sleep(0.3)  # let a (wrong) second batch show itself
        assert len(subscriber.batches) == 2
        assert sorted(c.id for c in subscriber.batches[1]) == sorted(f"p{i}" for i in range(10))
        nursery.cancel_scope.cancel()


# A second relay process: it prints its provider names each time they change.
WATCHER = textwrap.dedent(
    """
    import sys, trio
    from relay.db.bridge import Database
    from relay.providers.registry import ProviderRegistry

    async def main(dsn):
        registry = ProviderRegistry()
        async def show(changes):
            print(",".join(sorted(registry.providers)) or "-", flush=True)
        async with Database.open(dsn) as db:
            await registry.run(db, on_change=show)

    trio.run(main, sys.argv[1])
    """
)


class LineReader:
    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self._buffer = b""

    async def readline(self) -> str:
        while b"\n" not in self._buffer:
            chunk = await self._stream.receive_some()
            if not chunk:
                raise EOFError("the watcher exited")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode()

    async def wait_for(self, expected: str) -> None:
        with trio.fail_after(20):  # a hang guard, not a timing assertion
            while await self.readline() != expected:
                pass


async def test_a_change_reaches_another_process_through_notify(db, pg_dsn):
    await seed_providers_from_env(db, [OPENAI])
    process = await trio.lowlevel.open_process(
        [sys.executable, "-c", WATCHER, pg_dsn], stdout=subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        lines = LineReader(process.stdout)
        await lines.wait_for("openai")
        await add_provider(db, Provider(name="added", type=ProviderType.ANTHROPIC))
        await lines.wait_for("added,openai")
        await set_provider_enabled(db, "openai", False)
        await lines.wait_for("added")
        # A change made with plain SQL (any process) is seen too.
        await db.execute("UPDATE providers SET enabled = true")
        await lines.wait_for("added,openai")
    finally:
        process.kill()
        with trio.CancelScope(shield=True):
            await process.wait()
