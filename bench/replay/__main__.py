"""``python -m bench.replay DIR``: replay captured dumps through a relay and check them.

Exit status 0 when every response was byte-identical (and, with
--check-usage, the recorded usage matched), 1 otherwise, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import trio

from bench.replay.run import ReplayOptions, run_replay


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.replay",
        description="Replay dumps (CODER_AI_GATEWAY_DUMP_DIR) through a relay; check every byte.",
    )
    parser.add_argument("directory", type=Path, help="the dump directory (its <provider>/ dirs)")
    target = parser.add_mutually_exclusive_group()
    target.add_argument(
        "--relay", metavar="URL", help="an existing relay, e.g. http://127.0.0.1:4001"
    )
    target.add_argument(
        "--start-relay",
        action="store_true",
        help="start `relay serve` with providers pointed at the replay upstream (the default)",
    )
    target.add_argument(
        "--direct", action="store_true", help="no relay: query the replay upstream itself"
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("RELAY_TOKEN"),
        help="relay token for --relay (default: $RELAY_TOKEN)",
    )
    parser.add_argument(
        "--data-dir", type=Path, help="data dir of --start-relay (default: temporary)"
    )
    parser.add_argument(
        "--postgres-url",
        default="",
        help="the relay's database (default: embedded in the data dir); for --check-usage too",
    )
    parser.add_argument(
        "--check-usage",
        action="store_true",
        help="compare the token usage the relay recorded with the usage in the streams",
    )
    parser.add_argument("--concurrency", type=int, default=1, help="requests at once (default 1)")
    parser.add_argument("--repeat", type=int, default=1, help="times each dump is sent (default 1)")
    parser.add_argument(
        "--speed",
        type=float,
        default=1.0,
        help="pace factor: 1 as recorded, 2 twice as fast, 0 no pauses (default 1)",
    )
    parser.add_argument("--timeout", type=float, default=120.0, help="per request, in seconds")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.relay and not args.token:
        parser.error("--relay needs --token (or RELAY_TOKEN)")
    if args.concurrency < 1 or args.repeat < 1 or args.speed < 0:
        parser.error("--concurrency and --repeat must be >= 1, --speed >= 0")
    options = ReplayOptions(
        directory=args.directory,
        relay_url=args.relay,
        token=args.token,
        start_relay=args.start_relay or not (args.relay or args.direct),
        direct=args.direct,
        data_dir=args.data_dir,
        postgres_url=args.postgres_url,
        check_usage=args.check_usage,
        concurrency=args.concurrency,
        repeat=args.repeat,
        speed=args.speed,
        timeout=args.timeout,
    )
    report = trio.run(lambda: run_replay(options, lambda line: print(line, flush=True)))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
