"""The import contracts of pyproject.toml hold on the tree, and fail on a
deliberate violation (so `just lint` would fail CI on one).

Each violation is added to a copy of the package in a temporary directory;
`lint-imports` runs there with that copy first on the path. No server.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def package_copy(tmp_path: Path) -> Path:
    shutil.copytree(
        ROOT / "relay", tmp_path / "relay", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def add_import(root: Path, module: str, statement: str) -> None:
    path = root / (module.replace(".", "/") + ".py")
    if not path.exists():
        path = root / module.replace(".", "/") / "__init__.py"
    path.write_text(path.read_text() + f"\n{statement}  # a deliberate violation\n")


def test_the_tree_keeps_every_contract() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_the_copy_keeps_every_contract(package_copy: Path) -> None:
    # The copy, unchanged, passes: the failures below are the added import's.
    result = lint_imports(package_copy)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("module", "statement", "contract"),
    [
        # The write path reaching up into the interception (and a layer up).
        ("relay.record.writer", "import relay.intercept.base", "record-metrics-no-intercept"),
        ("relay.metrics", "import relay.intercept.base", "layers"),
        ("relay.intercept.base", "import relay.app", "layers"),
        # A leaf growing a dependency.
        ("relay.facts", "import relay.streams.sse", "leaves"),
        ("relay.identity", "import relay.auth", "leaves"),
        # The read side borrowing from the write path.
        ("relay.admin.api", "import relay.record.writer", "read-apart-from-write"),
        # The app decoding a wire format itself.
        ("relay.app", "import relay.wire.common", "app-no-wire"),
        # The interception talking SQL.
        ("relay.intercept.base", "import asyncpg", "intercept-no-sql"),
        ("relay.intercept.passthrough", "import relay.db.bridge", "intercept-no-sql"),
        # A provider kind reaching the database.
        ("relay.providers.kinds.openai", "import relay.db.bridge", "intercept-no-sql"),
        # The shell asking about a provider type.
        ("relay.intercept.base", "import relay.providers.kinds", "shell-knows-no-type"),
        # A sans-io core doing I/O.
        ("relay.streams.sse", "import trio", "sans-io"),
        # The MCP client reaching into the interception.
        ("relay.mcp.client", "import relay.intercept.base", "mcp-apart"),
        # The package reaching into the benchmarks.
        ("relay.demo", "import bench.replay", "no-bench-tests"),
    ],
)
def test_a_violating_import_breaks_its_contract(
    package_copy: Path, module: str, statement: str, contract: str
) -> None:
    add_import(package_copy, module, statement)
    result = lint_imports(package_copy, "--contract", contract)
    assert result.returncode != 0, result.stdout
    assert "Contracts: 0 kept, 1 broken." in result.stdout, result.stdout
