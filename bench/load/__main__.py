"""``python -m bench.load``: run the load suite and write the report.

    python -m bench.load                          # standard suite: direct, floors, relay
    python -m bench.load --suite quick --targets direct,relay
    python -m bench.load --targets direct,relay,asgi,litellm --litellm-bin bench/.peers/litellm/bin/litellm

Results go to bench/results/<UTC time>/ (results.json, results.md, PNG
plots, target logs); bench/results/latest points at the newest.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import resource
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import trio

from . import report
from .suite import SUITES, ProgressFactory, quiet_progress, run_suite
from .targets import TARGETS

DEFAULT_TARGETS = "direct,asgi,splice,relay"
RESULTS = Path(__file__).resolve().parents[1] / "results"


def _tqdm_progress() -> ProgressFactory | None:
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return lambda label, total: tqdm(
        desc=label, total=total, unit="req", leave=False, dynamic_ncols=True, mininterval=0.25
    )


class _LineProgress:
    """Without tqdm: one line per phase when it ends."""

    def __init__(self, label: str, total: int | None) -> None:
        self.label = label
        self.count = 0

    def update(self, n: int) -> None:
        self.count += n

    def close(self) -> None:
        print(f"  {self.label}: {self.count} done", file=sys.stderr, flush=True)


def _raise_fd_limit() -> None:
    # Open-stream runs hold two sockets per stream in this process (client and
    # mock side); children inherit the raised limit too.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.load", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--suite", choices=sorted(SUITES), default="standard")
    parser.add_argument(
        "--targets", default=DEFAULT_TARGETS, help=f"comma-separated, from {', '.join(TARGETS)}"
    )
    parser.add_argument("--out", type=Path, help="output directory (default bench/results/<time>)")
    parser.add_argument("--open-streams", type=int, help="streams to hold open (suite default)")
    parser.add_argument(
        "--concurrency", help="comma-separated levels of the sweeps (suite default: 1,16,64,256)"
    )
    parser.add_argument("--litellm-bin", help="the litellm executable (bench/peers/litellm.sh)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin CPUs")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)

    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = sorted(set(targets) - set(TARGETS))
    if unknown:
        parser.error(f"unknown targets {unknown}; known: {', '.join(TARGETS)}")
    config = SUITES[args.suite]
    changes: dict[str, Any] = {}
    if args.open_streams is not None:
        changes["open_streams"] = args.open_streams
    if args.concurrency:
        changes["concurrencies"] = tuple(int(c) for c in args.concurrency.split(","))
    if changes:
        import msgspec

        config = msgspec.structs.replace(config, **changes)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out_dir: Path = args.out or RESULTS / stamp
    progress: ProgressFactory = quiet_progress
    if not args.no_progress:
        progress = _tqdm_progress() or _LineProgress
    _raise_fd_limit()
    (out_dir / "logs").mkdir(parents=True, exist_ok=True)
    print(f"bench: {config.name} suite, targets {', '.join(targets)} -> {out_dir}", file=sys.stderr)
    result = trio.run(
        functools.partial(
            run_suite,
            config,
            targets,
            out_dir / "logs",
            pin_cpus=not args.no_pin,
            litellm_bin=args.litellm_bin,
            progress=progress,
        )
    )
    paths = report.write_report(result, out_dir)
    if args.out is None:
        latest = RESULTS / "latest"
        with contextlib.suppress(OSError):
            latest.unlink(missing_ok=True)
            latest.symlink_to(out_dir.name)
    print(Path(paths["markdown"]).read_text())
    for kind, path in paths.items():
        print(f"bench: {kind}: {path}", file=sys.stderr)
    # Non-zero when a requested target could not be measured.
    return 0 if all(t.measured for t in result.targets) else 1


if __name__ == "__main__":
    sys.exit(main())
