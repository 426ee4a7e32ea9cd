"""Streams that end early and streams that stay: disconnect storms and held streams.

- ``run_storm``: clients that leave at a random moment of their stream.
- ``holding_open``: N streams opened and held while the caller measures.

Departure times come from ``trio.current_time``, the clock of the in-process
mock's connection log they are compared with.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import msgspec
import trio

from .loadgen import NETWORK_ERRORS, Connection, Endpoint, Progress, prepare
from .response import ResponseError, ResponseReader
from .scenarios import Scenario

# -- disconnect storms ----------------------------------------------------------------------


class Departure(msgspec.Struct):
    bench_id: int
    left_at: float | None  # trio.current_time() just after the socket closed; None: completed
    seen: str  # what the client had seen: nothing, headers, events, complete, error


async def run_storm(
    endpoint: Endpoint,
    scenario: Scenario,
    *,
    streams: int,
    concurrency: int,
    leave_within_s: float,
    seed: int = 0,
    first_id: int = 0,
    progress: Progress | None = None,
) -> list[Departure]:
    """Each client opens a connection, asks for a stream, and leaves after a uniformly
    random delay in ``[0, leave_within_s)``; requests carry ``x-bench-id`` so the
    upstream's log can tell which connection belonged to which client."""
    rng = random.Random(seed)
    delays = [rng.uniform(0, leave_within_s) for _ in range(streams)]
    departures: list[Departure] = []
    limiter = trio.CapacityLimiter(concurrency)

    async def client(index: int) -> None:
        bench_id = first_id + index
        request = prepare(endpoint, scenario, ((b"x-bench-id", b"%d" % bench_id),))
        seen = "nothing"
        async with limiter:
            try:
                conn = await Connection.open(endpoint)
            except OSError:
                departures.append(Departure(bench_id, None, "error"))
                return
            reader = ResponseReader()
            try:
                with trio.move_on_after(delays[index]):
                    await conn.send(request)
                    while not reader.complete:
                        data = await conn.receive()
                        if not data:
                            reader.eof()
                        reader.feed(data)
                if reader.complete:
                    seen = "complete"
                elif reader.body_bytes:
                    seen = "events"
                elif reader.status:
                    seen = "headers"
            except NETWORK_ERRORS:
                seen = "error"
            finally:
                conn.close()
            left_at = None if seen in ("complete", "error") else trio.current_time()
            departures.append(Departure(bench_id, left_at, seen))
            if progress is not None:
                progress(1)

    async with trio.open_nursery() as nursery:
        for index in range(streams):
            nursery.start_soon(client, index)
    return departures


# -- long open streams ----------------------------------------------------------------------


class HeldStreams(msgspec.Struct):
    requested: int
    opened: int = 0  # streams whose first event arrived
    failed: int = 0


@asynccontextmanager
async def holding_open(
    endpoint: Endpoint,
    scenario: Scenario,
    count: int,
    *,
    open_concurrency: int = 64,
    open_timeout_s: float = 60.0,
    progress: Progress | None = None,
) -> AsyncIterator[HeldStreams]:
    """Open ``count`` streams (``open_concurrency`` at a time, so the target's
    accept backlog never overflows), wait for each one's first event, and hold
    them all open for the body of the block; they are closed on exit."""
    held = HeldStreams(count)
    limiter = trio.CapacityLimiter(open_concurrency)
    settled = trio.Event()
    request = prepare(endpoint, scenario)
    if count == 0:
        settled.set()

    def settle(ok: bool) -> None:
        if ok:
            held.opened += 1
        else:
            held.failed += 1
        if progress is not None:
            progress(1)
        if held.opened + held.failed == count:
            settled.set()

    async def stream_holder() -> None:
        conn: Connection | None = None
        try:
            async with limiter:
                try:
                    conn = await Connection.open(endpoint)
                    await conn.send(request)
                    reader = ResponseReader()
                    while not reader.counter.events:
                        data = await conn.receive()
                        if not data:
                            reader.eof()
                        reader.feed(data)
                        if reader.status not in (0, 200) or reader.complete:
                            raise ResponseError(f"HTTP {reader.status}, not an open stream")
                except NETWORK_ERRORS:
                    settle(False)
                    return
            settle(True)
            await trio.sleep_forever()  # the bytes that keep coming wait in the socket buffer
        finally:
            if conn is not None:
                conn.close()

    async with trio.open_nursery() as nursery:
        for _ in range(count):
            nursery.start_soon(stream_holder)
        with trio.move_on_after(open_timeout_s):
            await settled.wait()
        try:
            yield held
        finally:
            nursery.cancel_scope.cancel()
