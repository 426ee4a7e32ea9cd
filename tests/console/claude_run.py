"""One real Claude Code run through the console's relay (tests/agent_clis.py pins the CLI)."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path

from relay.testing.mock_upstream.tool_script import HEADER
from tests.agent_clis import CLAUDE
from tests.console.conftest import ConsoleRelay

MODEL = "claude-sonnet-4-5"


def run_claude_code(console: ConsoleRelay, home: Path, token: str) -> tuple[str, str]:
    """``claude -p`` with its own session id; the mock asks it to Read a file, once.

    Returns (session id, the file's path: the tool call's input)."""
    session = str(uuid.uuid4())
    work = home / "work"
    work.mkdir(parents=True)
    notes = work / "notes.txt"
    notes.write_text("forty-two\n")
    script = json.dumps([[{"name": "Read", "input": {"file_path": str(notes)}}]])
    env = {
        "HOME": str(home),
        "PATH": os.environ.get("PATH", ""),
        "ANTHROPIC_BASE_URL": console.gateway("anthropic"),
        "ANTHROPIC_API_KEY": token,
        "ANTHROPIC_CUSTOM_HEADERS": f"{HEADER}: {script}",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_AUTOUPDATER": "1",
        "DISABLE_TELEMETRY": "1",
    }
    done = subprocess.run(
        [CLAUDE, "-p", "--model", MODEL, "--session-id", session, "What do my notes say?"],
        env=env,
        cwd=str(work),
        capture_output=True,
        timeout=90,
        check=False,
    )
    out = done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace")
    assert done.returncode == 0, out
    assert "Done: " in out and "forty-two" in out, out
    return session, str(notes)
