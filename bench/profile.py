"""``python -m bench.profile`` (``just profile``): where a stream's CPU goes in the relay.

Starts the bundled mock upstream and the relay exactly as the load suite
does (``bench.load.targets``), puts streaming chat completions on it
(``--concurrency`` keep-alive clients, the suite's 31-event stream) and
samples the relay's serving process with py-spy meanwhile. Writes into
bench/results/profile-<UTC time>/:

- ``flamegraph.svg``: open it in a browser (click to zoom);
- ``profile.speedscope.json``: the same samples for https://speedscope.app;
- ``top.txt``: the frames with the most samples of their own (self time);
- ``load.txt``: what the load achieved while sampled.

py-spy attaches to the running relay (``--pid``), which needs ptrace
permission: root, or CAP_SYS_PTRACE in a container (see docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import collections
import shutil
import sys
from datetime import UTC, datetime
from pathlib import Path
from subprocess import STDOUT

import msgspec
import trio

from relay.testing.mock_upstream import MockUpstream

from .load import scenarios
from .load.loadgen import run_load
from .load.targets import start_target

RESULTS = Path(__file__).resolve().parent / "results"


def _py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(found).exists():
        raise SystemExit("py-spy is not installed (it is in the dev group: .ci/env just profile)")
    return found


def top_frames(speedscope: Path, count: int = 15) -> list[tuple[float, str]]:
    """(share of samples, function) of the functions most often on top of the stack."""
    doc = msgspec.json.decode(speedscope.read_bytes())
    frames = doc["shared"]["frames"]
    # Summed per function (py-spy gives one frame per line).
    own: collections.Counter[str] = collections.Counter()
    total = 0.0
    for profile in doc["profiles"]:
        for stack, weight in zip(profile["samples"], profile["weights"], strict=True):
            if stack:
                frame = frames[stack[-1]]
                own[f"{frame['name']} ({frame.get('file', '?')})"] += weight
            total += weight
    return [(weight / total if total else 0.0, name) for name, weight in own.most_common(count)]


async def profile(concurrency: int, seconds: float, out: Path) -> None:
    py_spy = _py_spy()
    mock = MockUpstream(record=False)
    scenarios.install_bench_responder(mock)
    async with trio.open_nursery() as nursery:
        await nursery.start(mock.serve, 0)
        async with start_target("relay", mock, out) as target:
            assert target.pid is not None
            scenario = scenarios.litellm_stream("fast")
            # Warm: connections, the token cache, the upstream pool.
            await run_load(target.endpoint, scenario, concurrency, max_requests=500, max_seconds=5)
            rate = 100
            failures: list[str] = []

            async def record(fmt: str, name: str) -> None:
                command = [py_spy, "record", "--pid", str(target.pid), "--rate", str(rate)]
                command += ["--duration", str(int(seconds)), "--format", fmt]
                command += ["--output", str(out / name), "--nonblocking"]
                done = await trio.run_process(
                    command, capture_stdout=True, stderr=STDOUT, check=False
                )
                if done.returncode != 0:
                    failures.append(
                        f"py-spy {fmt} failed ({done.returncode}): {done.stdout.decode()}"
                    )

            async with trio.open_nursery() as sampling:
                sampling.start_soon(record, "flamegraph", "flamegraph.svg")
                sampling.start_soon(record, "speedscope", "profile.speedscope.json")
                result = await run_load(
                    target.endpoint, scenario, concurrency, max_requests=10**9, max_seconds=seconds
                )
            if failures:
                raise SystemExit("\n".join(failures))
        nursery.cancel_scope.cancel()
    done = len(result.samples)
    (out / "load.txt").write_text(
        f"relay, {scenario.name} streams, concurrency {concurrency}, {seconds:.0f} s sampled\n"
        f"streams completed: {done} ({done / seconds:.0f}/s), errors: {dict(result.errors)}\n"
    )
    lines = [
        f"{share:6.1%}  {frame}" for share, frame in top_frames(out / "profile.speedscope.json")
    ]
    (out / "top.txt").write_text(
        "self time (share of samples), top frames\n" + "\n".join(lines) + "\n"
    )
    print((out / "load.txt").read_text() + "\n".join(lines[:10]))
    print(f"\nflame graph: {out / 'flamegraph.svg'}")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    out = RESULTS / f"profile-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}"
    out.mkdir(parents=True)
    trio.run(profile, args.concurrency, args.seconds, out)


if __name__ == "__main__":
    main()
