"""The import contracts of pyproject.toml hold on the tree, and fail on a
deliberate violation (so `just lint` would fail CI on one).

Each violation is added to its own copy of the package in a temporary
directory; import-linter checks that copy with it first on the path, as
`lint-imports --no-cache --contract C` run there would. Every tree of this
module is checked by one process (`tests/lint_imports_many.py`): one
interpreter start and one import of import-linter, not fifteen. No server.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUNNER = Path(__file__).with_name("lint_imports_many.py")

VIOLATIONS = [
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
    ("relay.proxy.guard", "import trio", "sans-io"),
    ("relay.proxy.head", "import relay.upstream.http11", "sans-io"),
    # The proxy intercepting on its own instead of handing over to the app.
    ("relay.proxy.server", "import relay.intercept.base", "proxy-hands-over"),
    ("relay.app", "import relay.proxy.server", "layers"),
    ("relay.pricing.book", "import relay.db.bridge", "sans-io"),
    # The budgets reaching into the interception.
    ("relay.budgets.tracker", "import relay.intercept.base", "budgets-no-intercept"),
    # The MCP client reaching into the interception.
    ("relay.mcp.client", "import relay.intercept.base", "mcp-apart"),
    # The console reaching up into the request steps, the services down into the console.
    ("relay.console.app", "import relay.request.route", "layers"),
    ("relay.services", "import relay.console.app", "layers"),
    # The package reaching into the benchmarks.
    ("relay.demo", "import bench.replay", "no-bench-tests"),
]


def package_copy(directory: Path) -> Path:
    shutil.copytree(
        ROOT / "relay", directory / "relay", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(ROOT / "pyproject.toml", directory / "pyproject.toml")
    return directory


def add_import(root: Path, module: str, statement: str) -> None:
    path = root / (module.replace(".", "/") + ".py")
    if not path.exists():
        path = root / module.replace(".", "/") / "__init__.py"
    path.write_text(path.read_text() + f"\n{statement}  # a deliberate violation\n")


@pytest.fixture(scope="module")
def lint_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[bool, str]]:
    """What lint-imports says of each tree: the tree itself, an unchanged copy, one
    copy per violation (only that violation's contract checked), by name."""
    trees: dict[str, tuple[Path, str | None]] = {
        "tree": (ROOT, None),
        "copy": (package_copy(tmp_path_factory.mktemp("copy")), None),
    }
    for module, statement, contract in VIOLATIONS:
        root = package_copy(tmp_path_factory.mktemp("violation"))
        add_import(root, module, statement)
        trees[f"{module}:{statement}"] = (root, contract)
    result = subprocess.run(
        [sys.executable, str(RUNNER)],
        input=json.dumps([[str(root), contract] for root, contract in trees.values()]),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    outcomes = json.loads(result.stdout)
    return {name: (passed, output) for name, (passed, output) in zip(trees, outcomes, strict=True)}


def test_the_tree_keeps_every_contract(lint_results: dict[str, tuple[bool, str]]) -> None:
    passed, output = lint_results["tree"]
    assert passed, output
    assert "0 broken" in output


def test_the_copy_keeps_every_contract(lint_results: dict[str, tuple[bool, str]]) -> None:
    # The copy, unchanged, passes: the failures below are the added import's.
    passed, output = lint_results["copy"]
    assert passed, output


@pytest.mark.parametrize(("module", "statement", "contract"), VIOLATIONS)
def test_a_violating_import_breaks_its_contract(
    lint_results: dict[str, tuple[bool, str]], module: str, statement: str, contract: str
) -> None:
    passed, output = lint_results[f"{module}:{statement}"]
    assert not passed, output
    assert "Contracts: 0 kept, 1 broken." in output, output
