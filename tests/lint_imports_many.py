"""Run import-linter over several trees in one process (for tests/test_layers.py).

``python lint_imports_many.py`` reads a JSON list of ``[directory, contract or
null]`` on stdin and prints a JSON list of ``[passed, output]``: what
``lint-imports --no-cache [--contract C]`` run in that directory (with it first on
the path) would have returned (exit status 0) and printed. One interpreter start
and one import of import-linter for all of them, instead of one per tree.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import sys


def main() -> None:
    from importlinter import configuration
    from importlinter.application import use_cases

    configuration.configure()
    results = []
    for directory, contract in json.load(sys.stdin):
        os.chdir(directory)
        sys.path.insert(0, directory)
        importlib.invalidate_caches()
        out = io.StringIO()
        try:
            with contextlib.redirect_stdout(out):
                passed = use_cases.lint_imports(
                    limit_to_contracts=(contract,) if contract else (),
                    cache_dir=None,
                    no_logo=True,
                )
        finally:
            sys.path.remove(directory)
        results.append([bool(passed), out.getvalue()])
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
