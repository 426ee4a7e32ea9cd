"""Where the real agent CLIs the e2e tests drive are: clients/node_modules/.bin,
installed by `just clients` (part of `just test`) exactly as
clients/package-lock.json pins them. ``RELAY_TEST_CODEX`` / ``RELAY_TEST_CLAUDE``
name another binary. A test that needs one is skipped only where neither exists
(a bare `pytest` before `just clients`); `just test` always has them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

BIN = Path(__file__).resolve().parent.parent / "clients" / "node_modules" / ".bin"


def cli(name: str, env_var: str) -> str:
    path = os.environ.get(env_var) or str(BIN / name)
    return path if Path(path).exists() else ""


CODEX = cli("codex", "RELAY_TEST_CODEX")
CLAUDE = cli("claude", "RELAY_TEST_CLAUDE")

needs_codex = pytest.mark.skipif(not CODEX, reason="no Codex CLI: run `just clients`")
needs_claude = pytest.mark.skipif(not CLAUDE, reason="no Claude Code CLI: run `just clients`")
