"""Graceful shutdown: stop accepting, let streams finish for the grace period, then cancel."""

from __future__ import annotations

import json

import httpx
import trio
from hypercorn.trio import serve as hypercorn_serve

from relay.app import RelayApp
from relay.auth import create_token, create_user
from relay.options import load_options
from relay.server import hypercorn_config
from relay.testing.mock_upstream.server import MockUpstream
from tests.relay_harness import mock_providers_env


def stream_body(events: int) -> dict[str, object]:
    return {
        "model": "mock-long",
        "max_tokens": 64,
        "stream": True,
        "messages": [{"role": "user", "content": "hi"}],
        "_events": events,
    }


async def test_shutdown_lets_short_streams_finish_and_cancels_long_ones(pg_dsn, tmp_path):
    mock = MockUpstream()
    async with trio.open_nursery() as outer:
        await outer.start(mock.serve, 0)
        env = {
            "CODER_PG_CONNECTION_URL": pg_dsn,
            "CODER_AI_GATEWAY_DATA_DIR": str(tmp_path),
            "CODER_AI_GATEWAY_HTTP_ADDRESS": "127.0.0.1:0",
            "CODER_AI_GATEWAY_SHUTDOWN_GRACE": "1500ms",
            **mock_providers_env(mock),
        }
        options = load_options(env, warn=lambda line: None)
        app = RelayApp(options, env)
        stop = trio.Event()
        stopped = trio.Event()

        async def run_relay(task_status: trio.TaskStatus[list[str]]) -> None:
            try:
                await hypercorn_serve(
                    app,
                    hypercorn_config(options),
                    shutdown_trigger=stop.wait,
                    task_status=task_status,
                )
            finally:
                stopped.set()

        binds = await outer.start(run_relay)
        url = binds[0] + "/api/v2/ai-gateway/anthropic/v1/messages"
        assert app.services is not None
        db = app.services.db
        await create_user(db, "alice")
        token, _ = await create_token(db, "alice")
        results: dict[str, bytes] = {}

        async def stream(name: str, gap_ms: int, events: int) -> None:
            headers = {
                "x-api-key": token,
                "x-mock-gap-ms": str(gap_ms),
                "x-mock-events": str(events),
            }
            got = []
            async with httpx.AsyncClient(timeout=30) as client:
                try:
                    async with client.stream(
                        "POST", url, headers=headers, content=json.dumps(stream_body(events))
                    ) as r:
                        async for chunk in r.aiter_raw():
                            got.append(chunk)
                except httpx.HTTPError:
                    pass  # the long stream is cut at the end of the grace period
            results[name] = b"".join(got)

        async with trio.open_nursery() as clients:
            clients.start_soon(stream, "short", 20, 25)  # ~0.5 s: inside the grace period
            clients.start_soon(stream, "long", 50, 400)  # ~20 s: far beyond it
            await mock.wait_for_request(1)
            await trio.sleep(0.1)
            started = trio.current_time()
            stop.set()
            await trio.sleep(0.2)
            # A new connection is refused once shutdown has begun.
            async with httpx.AsyncClient() as client:
                refused = False
                try:
                    await client.get(binds[0] + "/healthz")
                except httpx.ConnectError:
                    refused = True
            assert refused
        with trio.fail_after(10):
            await stopped.wait()
        elapsed = trio.current_time() - started
        assert results["short"].rstrip().endswith(b'data: {"type":"message_stop"}')
        assert b"message_stop" not in results["long"]
        assert elapsed < 10  # cut at the grace period, not run for 20 s
        # Both were recorded before the recorder drained: one completed, one cancelled.
        from relay.db import Database

        async with Database.open(pg_dsn) as check:
            rows = await check.fetch("SELECT status FROM interceptions ORDER BY started_at")
        assert sorted(r["status"] for r in rows) == ["cancelled", "completed"]
        outer.cancel_scope.cancel()
