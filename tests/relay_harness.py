"""Start the real relay (hypercorn, trio worker) on a loopback port for a test.

The relay runs in the test's own trio loop, on the test's own database, with
providers given as environment variables exactly as an operator would set
them, in front of the bundled mock upstream.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import asyncpg
import trio
from hypercorn.trio import serve as hypercorn_serve

from relay.app import RelayApp
from relay.auth import create_token, create_user
from relay.options import load_options
from relay.server import hypercorn_config
from relay.testing.mock_upstream.server import MockUpstream


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any CODER_* option, plus ``extra``: for a
    relay (or CLI) subprocess that must see only the options the test gives it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODER_")}
    env.update(extra)
    return env


@dataclass
class RunningRelay:
    url: str  # http://127.0.0.1:PORT
    token: str  # a valid relay token of user "alice"
    app: RelayApp

    def gateway(self, provider: str) -> str:
        return f"{self.url}/api/v2/ai-gateway/{provider}"

    @property
    def db(self):  # type: ignore[no-untyped-def]
        assert self.app.services is not None
        return self.app.services.db

    async def wait_for_rows(
        self, sql: str, *args: object, count: int = 1, timeout: float = 10, settled: bool = True
    ) -> list:
        """Poll until ``sql`` returns at least ``count`` rows (the recorder writes in the background).

        ``settled``: also until no interception is still ``in_progress`` (each is
        recorded when it starts and again when it ends), so a test sees the end.
        Both queries read one snapshot: asked one after the other, a start row
        committed in between would be returned as if it were settled.
        """

        async def snapshot(conn: asyncpg.Connection) -> tuple[int, list[asyncpg.Record]]:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                open_rows = (
                    await conn.fetchval(
                        "SELECT count(*) FROM interceptions WHERE status = 'in_progress'"
                    )
                    if settled
                    else 0
                )
                return open_rows, await conn.fetch(sql, *args)

        with trio.fail_after(timeout):
            while True:
                open_rows, rows = await self.db.run(snapshot)
                if len(rows) >= count and not open_rows:
                    return rows
                await trio.sleep(0.02)


def mock_providers_env(
    mock: MockUpstream, key: str = "sk-upstream-test-key-0001"
) -> dict[str, str]:
    """One anthropic and one openai provider in front of ``mock``."""
    return {
        "CODER_AI_GATEWAY_PROVIDER_0_TYPE": "anthropic",
        "CODER_AI_GATEWAY_PROVIDER_0_NAME": "anthropic",
        "CODER_AI_GATEWAY_PROVIDER_0_KEY": key,
        "CODER_AI_GATEWAY_PROVIDER_0_BASE_URL": mock.base_url,
        "CODER_AI_GATEWAY_PROVIDER_1_TYPE": "openai",
        "CODER_AI_GATEWAY_PROVIDER_1_NAME": "openai",
        "CODER_AI_GATEWAY_PROVIDER_1_KEY": key,
        "CODER_AI_GATEWAY_PROVIDER_1_BASE_URL": mock.openai_base_url + "/",
    }


async def config_settled(app: RelayApp) -> None:
    """Once the relay has handled every configuration change announced so far.

    Notifications arrive in order: once a provider change sent after them has
    reloaded the registry, they have been handled too.
    """
    assert app.services is not None
    registry = app.services.providers
    version = registry.version
    change = {"kind": "providers", "op": "UPDATE", "id": "-settle-"}
    await app.services.db.execute("SELECT pg_notify('relay_config', $1)", json.dumps(change))
    with trio.fail_after(10):
        while registry.version == version:
            await trio.sleep(0.01)


@contextlib.asynccontextmanager
async def running_relay(
    pg_dsn: str,
    data_dir: Path,
    env: Mapping[str, str],
    *,
    user: str = "alice",
) -> AsyncIterator[RunningRelay]:
    full_env = {
        "CODER_PG_CONNECTION_URL": pg_dsn,
        "CODER_AI_GATEWAY_DATA_DIR": str(data_dir),
        "CODER_AI_GATEWAY_HTTP_ADDRESS": "127.0.0.1:0",
        **env,
    }
    options = load_options(full_env, warn=lambda line: None)
    app = RelayApp(options, full_env)
    config = hypercorn_config(options)
    config.graceful_timeout = min(options.shutdown_grace, 2.0)
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(
            partial(hypercorn_serve, app, config, shutdown_trigger=stop.wait)
        )
        assert app.services is not None
        await create_user(app.services.db, user)
        token, _ = await create_token(app.services.db, user)
        # The new user and token are announced on relay_config; their arrival
        # evicts the token from the cache. Start the test once they are handled.
        await config_settled(app)
        try:
            yield RunningRelay(url=binds[0], token=token, app=app)
        finally:
            stop.set()


@contextlib.asynccontextmanager
async def mock_and_relay(
    pg_dsn: str,
    data_dir: Path,
    *,
    chunking: str = "event",
    extra_env: Mapping[str, str] | None = None,
    **mock_kwargs: object,
) -> AsyncIterator[tuple[MockUpstream, RunningRelay]]:
    mock = MockUpstream(chunking=chunking, **mock_kwargs)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        await nursery.start(mock.serve, 0)
        env = {**mock_providers_env(mock), **(extra_env or {})}
        async with running_relay(pg_dsn, data_dir, env) as relay:
            yield mock, relay
        nursery.cancel_scope.cancel()


def claude_code_turn(gateway: str, token: str, session: str, content: str) -> dict[str, Any]:
    """The keyword arguments of an httpx POST of one streamed Messages turn as
    Claude Code sends it: its user agent and its session header."""
    return {
        "url": gateway + "/v1/messages?beta=true",
        "headers": {
            "x-api-key": token,
            "anthropic-version": "2023-06-01",
            "user-agent": "claude-cli/2.0.14 (external, cli)",
            "x-claude-code-session-id": session,
        },
        "json": {
            "model": "mock-tool",
            "max_tokens": 64,
            "stream": True,
            "messages": [{"role": "user", "content": content}],
        },
    }
