"""Users and API tokens against PostgreSQL, and the per-process token cache."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import pytest
import trio

from relay.auth import (
    AuthError,
    Principal,
    TokenCache,
    create_token,
    create_user,
    list_tokens,
    list_users,
    mask_token,
    parse_token,
    revoke_token,
    verify_token,
)
from relay.db.bridge import Database
from relay.providers.registry import RESYNC, ConfigListener


class FakeClock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC).timestamp()

    def __call__(self) -> float:
        return self.now


async def test_users(db):
    alice = await create_user(db, "alice")
    await create_user(db, "bob@example.com")
    assert [u.name for u in await list_users(db)] == ["alice", "bob@example.com"]
    with pytest.raises(AuthError, match="already exists"):
        await create_user(db, "alice")
    with pytest.raises(AuthError, match="user name"):
        await create_user(db, "has space")
    assert len(alice.id) == 36


async def test_token_format_and_storage(db):
    await create_user(db, "alice")
    token, row = await create_token(db, "alice")
    key_id, secret = parse_token(token)
    assert token == f"relay_{key_id}_{secret}" and row.id == key_id
    assert len(secret) == 43  # 32 random bytes, URL-safe base64 without padding
    assert row.user_name == "alice" and row.expires_at is None and row.revoked_at is None
    stored = await db.fetchrow("SELECT * FROM api_keys WHERE id = $1", key_id)
    assert bytes(stored["hash"]) == hashlib.sha256(secret.encode()).digest()
    dump = str([dict(r) for r in await db.fetch("SELECT * FROM api_keys")])
    assert secret not in dump and token not in dump
    assert mask_token(token) == f"relay_{key_id}_…"
    other, _ = await create_token(db, "alice")
    assert other != token
    with pytest.raises(AuthError, match="no user named"):
        await create_token(db, "nobody")


async def test_verify_accepts_only_the_exact_live_token(db):
    alice = await create_user(db, "alice")
    await create_user(db, "bob")
    token, row = await create_token(db, "alice", expires_in=3600)
    bob_token, _ = await create_token(db, "bob")
    assert await verify_token(db, token) == Principal(alice.id, "alice", row.id)
    key_id, secret = parse_token(token)
    bob_id, bob_secret = parse_token(bob_token)
    flipped = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    for forged in (
        f"relay_{key_id}_{flipped}",  # wrong secret
        f"relay_{key_id}_{bob_secret}",  # another user's secret with this id
        f"relay_{bob_id}_{secret}",  # this secret under another id
        token[:-1],  # truncated
        token + "A",
        f"relay_{'0' * 12}_{secret}",  # unknown id
        "",
        "Bearer " + token,
    ):
        assert await verify_token(db, forged) is None, forged
    last_used = await db.fetchval("SELECT last_used_at FROM api_keys WHERE id = $1", key_id)
    assert last_used is not None


async def test_expiry_and_revocation(db):
    await create_user(db, "alice")
    token, row = await create_token(db, "alice", expires_in=30 * 86400)
    assert row.expires_at is not None and row.status(datetime.now(UTC)) == "active"
    await db.execute(
        "UPDATE api_keys SET expires_at = now() - interval '1 second' WHERE id = $1", row.id
    )
    assert await verify_token(db, token) is None
    (listed,) = await list_tokens(db)
    assert listed.status(datetime.now(UTC)) == "expired"

    live, live_row = await create_token(db, "alice")
    assert await verify_token(db, live) is not None
    revoked = await revoke_token(db, live_row.id)
    assert revoked.revoked_at is not None
    assert await verify_token(db, live) is None
    again = await revoke_token(db, live_row.id)
    assert again.revoked_at == revoked.revoked_at  # idempotent
    statuses = {r.id: r.status(datetime.now(UTC)) for r in await list_tokens(db, "alice")}
    assert statuses == {row.id: "expired", live_row.id: "revoked"}
    with pytest.raises(AuthError, match="no token"):
        await revoke_token(db, "000000000000")
    with pytest.raises(AuthError, match="positive"):
        await create_token(db, "alice", expires_in=0)


async def test_cache_honours_expiry_without_the_database(db):
    await create_user(db, "alice")
    token, _ = await create_token(db, "alice", expires_in=3600)
    clock = FakeClock()
    cache = TokenCache(db, clock=clock)
    assert await cache.verify(token) is not None
    # Two hours on the relay's clock: the database would still accept the token
    # (it expires in one real hour), so only the cached expiry can refuse it.
    clock.now += 7200
    assert await cache.verify(token) is None


async def _delete_quietly(db, key_id: str) -> None:
    """Delete a row without firing the notify trigger (as if a notification were lost)."""

    async def delete(connection):
        async with connection.transaction():
            await connection.execute("SET LOCAL session_replication_role = replica")
            await connection.execute("DELETE FROM api_keys WHERE id = $1", key_id)

    await db.run(delete)


async def test_cache_serves_from_memory_and_resync_clears_it(db):
    await create_user(db, "alice")
    token, row = await create_token(db, "alice")
    cache = TokenCache(db)
    assert await cache.verify(token) is not None
    await _delete_quietly(db, row.id)
    assert await cache.verify(token) is not None  # from memory: the row is gone
    await cache.on_config_change([RESYNC], db)
    assert await cache.verify(token) is None


async def test_revocation_reaches_a_running_cache_through_notify(db, pg_dsn):
    await create_user(db, "alice")
    token, row = await create_token(db, "alice")
    other, _ = await create_token(db, "alice")
    cache = TokenCache(db)  # positive results kept 300 s: only a notification evicts
    async with trio.open_nursery() as nursery:
        await nursery.start(ConfigListener(db, cache).run)
        assert await cache.verify(token) is not None
        assert await cache.verify(other) is not None
        # Revoked by another connection, as the CLI in another process would.
        async with Database.open(pg_dsn, max_size=1) as admin:
            await revoke_token(admin, row.id)
        with trio.fail_after(10):  # a hang guard, not a timing assertion
            while await cache.verify(token) is not None:
                await trio.sleep(0.01)
        assert await cache.verify(other) is not None  # only the revoked token went
        nursery.cancel_scope.cancel()


async def test_user_rename_reaches_the_cache(db):
    alice = await create_user(db, "alice")
    token, _ = await create_token(db, "alice")
    cache = TokenCache(db)
    async with trio.open_nursery() as nursery:
        await nursery.start(ConfigListener(db, cache).run)
        assert (await cache.verify(token)).user_name == "alice"
        await db.execute("UPDATE users SET name = 'alice2' WHERE id = $1::uuid", alice.id)
        with trio.fail_after(10):
            while (await cache.verify(token)).user_name != "alice2":
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()


async def test_cache_is_bounded_and_shares_concurrent_lookups(db):
    await create_user(db, "alice")
    tokens = [(await create_token(db, "alice"))[0] for _ in range(5)]
    cache = TokenCache(db, max_entries=3)
    for token in tokens:
        assert await cache.verify(token) is not None
    assert len(cache) == 3
    results: list[Principal | None] = []

    async def verify(token: str) -> None:
        results.append(await cache.verify(token))

    async with trio.open_nursery() as nursery:
        for _ in range(20):
            nursery.start_soon(verify, tokens[0])
    assert len(results) == 20 and all(r is not None for r in results)


async def test_malformed_tokens_never_reach_the_database(pg_dsn):
    async with Database.open(pg_dsn, max_size=1) as closed:
        pass
    cache = TokenCache(closed)  # any query now raises
    for bad in ("", "relay_", "sk-ant-something", "relay_zz_" + "a" * 43, "relay_0123"):
        assert await cache.verify(bad) is None
    with pytest.raises(Exception):  # noqa: B017 - a well-formed token does query
        await cache.verify("relay_0123456789ab_" + "a" * 43)


async def test_tokens_verified_before_an_outage_keep_working_until_revoked(db, pg_cluster):
    from relay.db.bridge import UNAVAILABLE_ERRORS
    from relay.providers.registry import ConfigChange

    await create_user(db, "outage")
    token, row = await create_token(db, "outage")
    never_seen, _ = await create_token(db, "outage")
    cache = TokenCache(db)
    assert await cache.verify(token) is not None
    await cache.on_config_change([RESYNC], db)  # a lost LISTEN connection: caches refresh
    async with pg_cluster.down():
        # Refreshing fails: the copy verified before the outage still counts...
        principal = await cache.verify(token)
        assert principal is not None and principal.api_key_id == row.id
        # ...but a token never verified cannot be checked.
        with pytest.raises(UNAVAILABLE_ERRORS):
            await cache.verify(never_seen)
        # A revocation announced for the token removes every copy of it.
        await cache.on_config_change([ConfigChange(kind="api_keys", id=row.id)], db)
        with pytest.raises(UNAVAILABLE_ERRORS):
            await cache.verify(token)
