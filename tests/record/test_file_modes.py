"""Files that hold prompts and answers are the relay's alone, whatever the umask.

Dumps (directories 0700, files 0600) are written by the real relay in front
of the mock; the spool is written directly. A model name longer than a file
name may be must not break the dump.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio

from relay.record.spool import Spool
from tests.relay_harness import mock_and_relay


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def modes(base: Path) -> dict[Path, int]:
    return {p: stat.S_IMODE(p.stat().st_mode) for p in base.rglob("*")}


@pytest.mark.usefixtures("pg_dsn")
async def test_dumps_are_private_and_long_model_names_dump(pg_dsn, tmp_path):
    dumps = tmp_path / "dumps"
    long_model = "claude-" + "x" * 300  # over the 255 bytes a file name may have
    wide_model = "claude-" + "é" * 200  # 410 bytes of two-byte characters
    with umask(0):
        async with mock_and_relay(
            pg_dsn, tmp_path / "data", extra_env={"CODER_AI_GATEWAY_DUMP_DIR": str(dumps)}
        ) as (_mock, relay):
            headers = {"authorization": f"Bearer {relay.token}"}
            async with httpx.AsyncClient(timeout=30) as http:
                for model in ("mock-text", long_model, wide_model):
                    r = await http.post(
                        relay.gateway("anthropic") + "/v1/messages",
                        headers=headers,
                        json={
                            "model": model,
                            "max_tokens": 5,
                            "messages": [{"role": "user", "content": "hi"}],
                        },
                    )
                    assert r.status_code == 200, r.text
                r = await http.get(relay.gateway("openai") + "/v1/models", headers=headers)
                assert r.status_code == 200
            failures = relay.app.services.dumps.stats.failed  # type: ignore[union-attr]
            # The dump writer finishes in the background; wait for the last sidecar.
            with trio.fail_after(10):
                while len(list(dumps.rglob("*.chunks.jsonl"))) < 4:
                    await trio.sleep(0.02)
    assert failures == 0
    found = modes(dumps)
    assert found
    for path, mode in found.items():
        expected = 0o700 if path.is_dir() else 0o600
        assert mode == expected, (path, oct(mode))
    model_dirs = [p for p in (dumps / "anthropic").iterdir()]
    assert len(model_dirs) == 3
    for directory in model_dirs:
        assert len(directory.name.encode()) <= 128
        assert list(directory.glob("*.req.txt"))
    assert stat.S_IMODE(dumps.stat().st_mode) == 0o700  # made by the relay


def test_an_existing_dump_tree_is_narrowed(tmp_path):
    """Directories an older relay made 0755 are set to 0700 when written to again."""
    from relay.dump.writer import DumpWriter

    base = tmp_path / "dumps"
    old = base / "openai" / "gpt-4.1"
    old.mkdir(parents=True, mode=0o755)
    os.chmod(base / "openai", 0o755)
    os.chmod(old, 0o755)
    os.chmod(base, 0o755)
    writer = DumpWriter(base)
    writer._write_file(old / "1-x.req.txt", "wb", [b"POST / HTTP/1.1\r\n\r\n"])
    assert stat.S_IMODE((base / "openai").stat().st_mode) == 0o700
    assert stat.S_IMODE(old.stat().st_mode) == 0o700
    assert stat.S_IMODE((old / "1-x.req.txt").stat().st_mode) == 0o600
    assert stat.S_IMODE(base.stat().st_mode) == 0o755  # the operator's own: left alone


def test_spool_is_private(tmp_path):
    with umask(0):
        spool = Spool(tmp_path / "data" / "spool")
        spool.append(b"a prompt")
        spool.rotate()
    assert stat.S_IMODE((tmp_path / "data" / "spool").stat().st_mode) == 0o700
    for segment in (tmp_path / "data" / "spool").iterdir():
        assert stat.S_IMODE(segment.stat().st_mode) == 0o600
    # One made 0755 before is narrowed when the next segment opens.
    os.chmod(tmp_path / "data" / "spool", 0o755)
    spool.append(b"another")
    assert stat.S_IMODE((tmp_path / "data" / "spool").stat().st_mode) == 0o700
