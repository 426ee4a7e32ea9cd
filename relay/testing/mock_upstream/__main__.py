"""Run the mock upstream standalone: ``python -m relay.testing.mock_upstream --port 9000``."""

from __future__ import annotations

import argparse
import functools

import trio

from .scenarios import CHUNKINGS
from .server import MockUpstream


async def _run(mock: MockUpstream, port: int, host: str) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(functools.partial(mock.serve, port, host))
        print(f"mock upstream listening on {mock.base_url}", flush=True)
        print(f"  Anthropic base URL: {mock.base_url}", flush=True)
        print(f"  OpenAI base URL:    {mock.openai_base_url}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m relay.testing.mock_upstream", description=__doc__
    )
    parser.add_argument("--port", type=int, default=9000, help="0 picks a free port")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--chunking", choices=CHUNKINGS, default="event")
    parser.add_argument("--seed", type=int, default=0, help="seed of random chunking")
    parser.add_argument(
        "--key", action="append", dest="keys", help="accepted key (repeatable; default: any)"
    )
    parser.add_argument("--rate-limited-key", action="append", default=[], help="answers 429")
    parser.add_argument("--revoked-key", action="append", default=[], help="answers 401")
    parser.add_argument(
        "--record",
        action="store_true",
        help="keep every request and connection event in memory (grows without bound)",
    )
    args = parser.parse_args(argv)
    mock = MockUpstream(
        chunking=args.chunking,
        seed=args.seed,
        keys=args.keys,
        rate_limited_keys=args.rate_limited_key,
        revoked_keys=args.revoked_key,
        record=args.record,
    )
    try:
        trio.run(_run, mock, args.port, args.host)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
