"""``relay serve --demo`` keeps out of the default data directory (issue 13 item 11)."""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

import httpx
import trio

from relay.demo import run_demo
from relay.options import load_options
from relay.services import data_dir


async def run_one_demo(env: dict[str, str]) -> tuple[Path, Path, list[str]]:
    """Start the demo, make one recorded request through it, stop it.

    Returns (the data directory it used, its spool directory, its output lines).
    """
    options = load_options(env, warn=lambda line: None)
    lines: list[str] = []
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        app = await nursery.start(
            partial(run_demo, options, out=lines.append, shutdown_trigger=stop.wait)
        )
        assert app.services is not None and app.options is not None
        used = Path(app.options.data_dir)
        spool = app.services.recorder.spool_dir
        assert os.path.isdir(used)  # noqa: ASYNC240 (a test, a local directory)
        token = next(
            line.split("=", 1)[1] for line in lines[-1].splitlines() if "RELAY_TOKEN=" in line
        )
        url = next(line.split()[-1] for line in lines if line.startswith("relay: listening on"))
        async with httpx.AsyncClient(trust_env=False) as client:
            response = await client.post(
                f"{url}/api/v2/ai-gateway/demo-anthropic/v1/messages",
                headers={"x-api-key": token, "anthropic-version": "2023-06-01"},
                json={
                    "model": "mock-text",
                    "max_tokens": 16,
                    "messages": [{"role": "user", "content": "hi"}],
                },
            )
        assert response.status_code == 200
        stop.set()
    return used, spool, lines


async def test_demo_uses_a_temporary_data_directory_unless_one_is_named(
    pg_dsn: str, tmp_path: Path
):
    base = {"CODER_PG_CONNECTION_URL": pg_dsn, "CODER_AI_GATEWAY_HTTP_ADDRESS": "127.0.0.1:0"}
    default = data_dir(load_options(base, warn=lambda line: None))

    used, spool, lines = await run_one_demo(base)
    assert used != default and default not in used.parents
    assert spool.parent == used
    assert not used.exists(), "the demo's temporary data directory was left behind"
    assert any(str(used) in line and "removed at exit" in line for line in lines)

    named = tmp_path / "kept"
    named.mkdir()
    used, spool, _ = await run_one_demo({**base, "CODER_AI_GATEWAY_DATA_DIR": str(named)})
    assert used == named
    assert named.is_dir(), "a named data directory is the operator's: kept"
