"""``relay serve`` with parts of the per-request work switched off, for ``bench.costs``.

Run as a script (``python bench/costs_relay.py serve ...``), so that the
``relay`` package comes from ``PYTHONPATH``: the cost harness runs the same
launcher against an older checkout for before/after figures.
``BENCH_RELAY_OFF`` is a comma-separated list of what to switch off:

- ``recording``: no rows are built or handed to the recorder
  (``records_for``, ``interception_started``, ``Recorder.record``);
- ``metrics``: the per-interception Prometheus updates are no-ops;
- ``parsing``: the response is not decoded nor accounted (the SSE decoder
  returns no events) and the chat ``include_usage`` rewrite, which needs the
  decoder to drop what it caused, is not made;
- ``dumps``: set no dump directory (nothing to patch).

These are measuring aids only: with any of them off the relay no longer
does its job. Patches replace a function wherever a module holds it
(``from x import f`` copies included), so they survive code moving between
modules; a name a checkout does not have is skipped and reported on stderr.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

KNOWN = ("recording", "metrics", "parsing", "dumps")


def _import_relay() -> list[ModuleType]:
    """Import what the server imports, so every copy of a patched name exists."""
    import importlib
    import pkgutil

    import relay

    for info in pkgutil.walk_packages(relay.__path__, "relay."):
        if ".testing" in info.name or info.name.endswith("__main__"):
            continue
        try:
            importlib.import_module(info.name)
        except Exception as exc:  # an optional module may not import here
            print(f"costs_relay: skipped {info.name}: {exc!r}", file=sys.stderr)
    return [m for name, m in sys.modules.items() if name.startswith("relay") and m is not None]


def _replace_everywhere(
    modules: list[ModuleType], module: str, name: str, replacement: Callable[..., Any]
) -> bool:
    source = sys.modules.get(module)
    original = getattr(source, name, None) if source is not None else None
    if original is None:
        print(f"costs_relay: {module}.{name} not found, not patched", file=sys.stderr)
        return False
    for m in modules:
        for attr, value in list(vars(m).items()):
            if value is original:
                setattr(m, attr, replacement)
    return True


def _find_class(modules: list[ModuleType], name: str) -> type | None:
    for m in modules:
        found = vars(m).get(name)
        if isinstance(found, type) and found.__module__.startswith("relay"):
            return found
    return None


def _noop(*_args: Any, **_kwargs: Any) -> None:
    return None


def _empty(*_args: Any, **_kwargs: Any) -> list[Any]:
    return []


def apply(off: set[str]) -> None:
    modules = _import_relay()
    if "recording" in off:
        for name in ("records_for", "interception_started"):
            _replace_everywhere(modules, "relay.record.events", name, _empty)
        recorder = _find_class(modules, "Recorder")
        if recorder is not None:
            recorder.record = _noop  # type: ignore[attr-defined]
    if "metrics" in off:
        metrics = _find_class(modules, "Metrics")
        if metrics is not None:
            for method in (
                "interception_started",
                "interception_finished",
                "interception_facts",
                "tokens",
                "ttfb",
                "disconnect",
                "key_pool_attempts",
                "passthrough",
            ):
                if hasattr(metrics, method):
                    setattr(metrics, method, _noop)
    if "parsing" in off:
        decoder = _find_class(modules, "SSEDecoder")
        if decoder is not None:
            decoder.feed = _empty  # type: ignore[attr-defined]
            decoder.close = _empty  # type: ignore[attr-defined]
        for module in ("relay.wire.openai_chat",):
            _replace_everywhere(modules, module, "ensure_chat_include_usage", _noop)


def main() -> int:
    off = {part for part in os.environ.get("BENCH_RELAY_OFF", "").split(",") if part}
    unknown = off - set(KNOWN)
    if unknown:
        print(f"costs_relay: unknown BENCH_RELAY_OFF parts {sorted(unknown)}", file=sys.stderr)
        return 2
    apply(off)
    from relay.cli import main as relay_main

    return relay_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
