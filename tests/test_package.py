"""The package as a user installs it: a wheel in a clean venv, run from elsewhere.

The development venv installs the project editable, which hides what a real
install lacks (package data, undeclared imports, a dependency on bench/).
Here the wheel is built, installed into a temporary venv without the source
tree, and run from a directory outside it.
"""

from __future__ import annotations

import ast
import os
import re
import select
import shutil
import subprocess
import sys
import sysconfig
import time
import tomllib
from importlib.metadata import distribution, packages_distributions
from pathlib import Path

import pytest

from tests.conftest import PgCluster

ROOT = Path(__file__).resolve().parents[1]


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _imported_top_level_modules(package: Path) -> set[str]:
    modules: set[str] = set()
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                modules.update(alias.name.partition(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.partition(".")[0])
    return modules


def _imported_modules(package: Path) -> set[str]:
    """Every dotted name relay imports (``from a.b import c``: ``a.b`` and ``a.b.c``)."""
    names: set[str] = set()
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module)
                names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _namespace_holders(top: str, candidates: list[str]) -> set[str]:
    """The distributions of a namespace package (``opentelemetry``: api, sdk, exporters)
    whose files hold a module relay imports; empty when ``top`` is one distribution's."""
    if len(set(candidates)) == 1:
        return set()
    found: set[str] = set()
    for name in _imported_modules(ROOT / "relay"):
        if name.partition(".")[0] != top or "." not in name:
            continue
        path = name.replace(".", "/")
        holders = {
            d
            for d in candidates
            if any(
                str(f).startswith(path + "/") or str(f) == path + ".py"
                for f in distribution(d).files or ()
            )
        }
        if holders and holders != set(candidates):
            found |= holders
    return found


def test_what_relay_imports_is_exactly_what_it_declares() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {_normalise(re.split(r"[<>=!~; \[]", d)[0]) for d in project["dependencies"]}
    third_party = _imported_top_level_modules(ROOT / "relay") - set(sys.stdlib_module_names)
    third_party -= {"relay", "__future__"}
    assert "bench" not in third_party, "relay must not import bench/ (it is not installed)"
    owners = packages_distributions()
    imported = set()
    for module in third_party:
        assert module in owners, f"relay imports {module!r}, which no installed package provides"
        holders = _namespace_holders(module, owners[module])
        imported.update(_normalise(d) for d in holders or owners[module])
    assert imported - declared == set(), "imported but not in [project] dependencies"
    assert declared - imported == set(), "declared in [project] dependencies but never imported"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv holding the wheel of this tree; its dependencies come from the test venv."""
    uv = shutil.which("uv")
    assert uv is not None, "uv is installed by .ci/env"
    base = tmp_path_factory.mktemp("wheel")
    # Built from the files git would check out (a fresh clone), not this tree:
    # build/ and *.egg-info left by earlier builds would supply missing data.
    source = base / "source"
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    )
    for name in filter(None, listed.stdout.decode().split("\0")):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    built = subprocess.run(
        [uv, "build", "--wheel", "--out-dir", str(base / "dist"), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = (base / "dist").glob("relay-*.whl")
    venv = base / "venv"
    env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never"}
    env.pop("VIRTUAL_ENV", None)
    for command in (
        [uv, "venv", "--quiet", "--python", sys.executable, str(venv)],
        [uv, "pip", "install", "--quiet", "--no-deps", "--python", str(venv / "bin/python"), wheel],
    ):
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
        assert done.returncode == 0, done.stderr
    # The dependencies (not relay) from the test venv: a path in a .pth file
    # is added to sys.path, but .pth files inside it (the editable install's
    # finder) are not run, so `import relay` finds only the wheel.
    (site,) = (venv / "lib").glob("python*/site-packages")
    (site / "test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv


def _installed_env(**extra: str) -> dict[str, str]:
    """No CODER_* option and no PYTHON* variable (PYTHONPATH would find the tree)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("CODER_", "PYTHON"))}
    return {**clean, **extra}


def _run(venv: Path, cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(venv / "bin" / args[0]), *args[1:]],
        cwd=cwd,
        env=_installed_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_wheel_runs_from_another_directory(
    installed: Path, pg_cluster: PgCluster, tmp_path: Path
) -> None:
    where = _run(installed, tmp_path, "python", "-c", "import relay; print(relay.__file__)")
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(installed), where.stdout

    version = _run(installed, tmp_path, "relay", "--version")
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == "relay 0.1.0"

    schemas = _run(
        installed,
        tmp_path,
        "python",
        "-c",
        "from relay.record.events import SCHEMA_DIR, json_schemas\n"
        "assert sorted(p.name for p in SCHEMA_DIR.glob('*.json')) == sorted(json_schemas())\n"
        "import relay.demo",  # the demo's mock upstream travels in the package
    )
    assert schemas.returncode == 0, schemas.stderr

    # The console's assets travel in the package, each one the tree holds (no build step).
    static = ROOT / "relay/console/static"
    in_tree = sorted(p.relative_to(static).as_posix() for p in static.rglob("*") if p.is_file())
    assert {"shell.html", "signin.html", "app.js", "ui.js", "style.css"} <= set(in_tree)
    assets = _run(
        installed,
        tmp_path,
        "python",
        "-c",
        "from relay.console.app import STATIC_DIR, static_files, template\n"
        "print('\\n'.join(sorted(p.relative_to(STATIC_DIR).as_posix()"
        " for p in STATIC_DIR.rglob('*') if p.is_file())))\n"
        "assert 'app.js' in static_files() and '{{csrf}}' in template('shell.html')",
    )
    assert assets.returncode == 0, assets.stderr
    assert assets.stdout.split() == in_tree

    dsn = pg_cluster.create_database(template=None)
    try:
        migrated = _run(installed, tmp_path, "relay", "migrate", CODER_PG_CONNECTION_URL=dsn)
        assert migrated.returncode == 0, migrated.stderr
        last = sorted(p.stem for p in (ROOT / "relay/schemas/sql").glob("*.sql"))[-1]
        assert migrated.stdout.strip() == f"database schema at migration {last}"
        _serve_once(installed, tmp_path, dsn)
    finally:
        pg_cluster.drop_database(dsn)


def _serve_once(venv: Path, cwd: Path, dsn: str) -> None:
    """`relay serve` from the wheel starts, says where it listens, and stops on SIGTERM."""
    server = subprocess.Popen(
        [str(venv / "bin/relay"), "serve"],
        cwd=cwd,
        env=_installed_env(
            CODER_PG_CONNECTION_URL=dsn,
            CODER_AI_GATEWAY_HTTP_ADDRESS="127.0.0.1:0",
            CODER_AI_GATEWAY_DATA_DIR=str(cwd / "data"),
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert server.stdout is not None
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 60
        while not any("relay: listening on http://127.0.0.1:" in line for line in lines):
            assert time.monotonic() < deadline, "".join(lines)
            assert server.poll() is None, "".join(lines) + server.stdout.read()
            if select.select([server.stdout], [], [], 1)[0]:
                lines.append(server.stdout.readline())
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert server.returncode == 0, "".join(lines)
