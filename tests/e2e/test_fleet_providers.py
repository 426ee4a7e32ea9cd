"""One database, a fleet of relays with different environments (issue 13 item 10).

Seeding only adds and updates: a relay whose environment lacks a provider
never disables it for the others. Two real ``relay serve`` processes on one
PostgreSQL, each with a provider of its own.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import trio

from relay.auth import create_token, create_user
from relay.db import Database
from relay.testing.mock_upstream.server import MockUpstream
from tests.relay_process import RelayProcess, relay_process

KEY = "sk-upstream-test-key-0001"


def provider_env(name: str, kind: str, base_url: str) -> dict[str, str]:
    return {
        "CODER_AI_GATEWAY_PROVIDER_0_TYPE": kind,
        "CODER_AI_GATEWAY_PROVIDER_0_NAME": name,
        "CODER_AI_GATEWAY_PROVIDER_0_KEY": KEY,
        "CODER_AI_GATEWAY_PROVIDER_0_BASE_URL": base_url,
    }


async def ask(relay: RelayProcess, provider: str, token: str) -> int:
    """Status of one Anthropic Messages request to ``provider`` through ``relay``."""
    async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
        response = await client.post(
            relay.gateway(provider) + "/v1/messages",
            headers={"x-api-key": token, "anthropic-version": "2023-06-01"},
            json={
                "model": "mock-text",
                "max_tokens": 8,
                "messages": [{"role": "user", "content": "hi"}],
            },
        )
    return response.status_code


async def served_by(relay: RelayProcess, provider: str, token: str) -> None:
    """Until ``relay`` serves ``provider`` (a provider another process seeded arrives by NOTIFY)."""
    with trio.fail_after(10):
        while await ask(relay, provider, token) != 200:
            await trio.sleep(0.05)


async def enabled(dsn: str) -> dict[str, bool]:
    async with Database.open(dsn, max_size=1) as db:
        rows = await db.fetch("SELECT name, enabled FROM providers")
    return {row["name"]: row["enabled"] for row in rows}


async def test_a_node_without_a_provider_never_disables_it_for_the_fleet(
    pg_dsn: str, tmp_path: Path
):
    mock = MockUpstream(record=False)
    async with trio.open_nursery() as nursery:
        await nursery.start(mock.serve, 0)
        common = {"CODER_PG_CONNECTION_URL": pg_dsn}
        env_a = {**common, "CODER_AI_GATEWAY_DATA_DIR": str(tmp_path / "a")}
        env_a |= provider_env("alpha", "anthropic", mock.base_url)
        env_b = {**common, "CODER_AI_GATEWAY_DATA_DIR": str(tmp_path / "b")}
        env_b |= provider_env("beta", "anthropic", mock.base_url)
        async with Database.open(pg_dsn, max_size=1) as db:  # pg_dsn is migrated
            await create_user(db, "alice")
            token, _ = await create_token(db, "alice")
        async with relay_process(env_a, tmp_path / "a.log") as a:
            async with relay_process(env_b, tmp_path / "b.log") as b:
                # B booted without alpha in its environment: alpha stays, everywhere.
                assert await enabled(pg_dsn) == {"alpha": True, "beta": True}
                await served_by(b, "alpha", token)
                await served_by(a, "beta", token)
                await served_by(a, "alpha", token)
            # B is gone; A restarts, without beta in its environment: beta stays.
            assert await a.stop() == 0
        async with relay_process(env_a, tmp_path / "a.log") as again:
            assert await enabled(pg_dsn) == {"alpha": True, "beta": True}
            await served_by(again, "beta", token)
            assert "left as they are: beta" in again.output()
        nursery.cancel_scope.cancel()
