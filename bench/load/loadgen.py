"""The load generator: raw HTTP/1.1 over trio sockets, one keep-alive connection per worker.

Lean on purpose: no HTTP client library; each request is framed once by h11
and then sent as prepared bytes; responses go through the small sans-io
``ResponseReader`` (framing and a count of SSE events, nothing else). So every
report can show the generator's own ceiling against the mock directly, and
the target, not the generator, is what saturates.

``run_load`` runs closed-loop workers, each sending its next request as soon
as the last one ended, until a request count or a deadline (whichever comes
first). Disconnect storms and long-held streams are in ``stream_lifetimes``.
"""

from __future__ import annotations

import errno
import os
import socket
import time
from collections.abc import Callable

import h11
import msgspec
import trio

from .response import ResponseError, ResponseReader
from .scenarios import Api, Scenario

RECEIVE_SIZE = 65536
CONNECT_AT_ONCE = 64  # connects in flight: keeps the target's accept backlog from overflowing
Headers = tuple[tuple[bytes, bytes], ...]
Progress = Callable[[int], None]
# Connection-level failures a worker counts and recovers from by reconnecting.
NETWORK_ERRORS = (OSError, trio.BrokenResourceError, trio.ClosedResourceError, ResponseError)


class Endpoint(msgspec.Struct, frozen=True):
    """Where a target listens and how each API is addressed on it."""

    host: str
    port: int
    prefixes: dict[str, str]  # api -> path prefix ("" for the provider's own paths)
    credentials: dict[str, Headers]  # api -> the headers that authenticate the client

    def path(self, api: Api, path: str) -> str:
        return self.prefixes.get(api, "") + path


class Sample(msgspec.Struct, array_like=True):
    ttfb: float  # seconds from the request's first byte sent to the first body byte
    total: float  # seconds until the response's last byte
    nbytes: int  # body bytes received
    events: int  # SSE events in the body (0 for JSON)
    status: int


class RunResult(msgspec.Struct):
    scenario: str
    concurrency: int
    samples: list[Sample]
    errors: dict[str, int]
    issued: int
    wall_s: float  # first request sent to last response ended

    @property
    def unfinished(self) -> int:
        """Requests still in flight when the run's hard deadline cancelled them."""
        return self.issued - len(self.samples) - sum(self.errors.values())


def prepare(endpoint: Endpoint, scenario: Scenario, extra: Headers = ()) -> bytes:
    """The request's bytes, framed once by h11 and then sent as they are."""
    headers = [
        (b"host", b"%s:%d" % (endpoint.host.encode(), endpoint.port)),
        (b"user-agent", b"relay-bench/1"),
        (b"content-type", b"application/json"),
        (b"content-length", b"%d" % len(scenario.body)),
        *endpoint.credentials.get(scenario.api, ()),
        *scenario.headers,
        *extra,
    ]
    target = endpoint.path(scenario.api, scenario.path)
    framer = h11.Connection(h11.CLIENT)
    head = framer.send(h11.Request(method="POST", target=target, headers=headers))
    return head + scenario.body


class StaleConnection(Exception):
    """A kept-alive connection the server had closed before the request."""


class Connection:
    """One keep-alive HTTP/1.1 connection of one worker.

    A plain non-blocking socket driven with ``trio.lowlevel.wait_readable`` /
    ``wait_writable``: a read that finds data waiting costs one ``recv``, not
    the two scheduler round trips of ``trio.SocketStream.receive_some``. Every
    ``YIELD_EVERY`` reads that did not wait, it checkpoints, so a flood of data
    cannot starve other tasks or ignore a cancellation.
    """

    YIELD_EVERY = 16

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reusable = True
        self.used = False  # has answered a request
        self._reads_without_wait = 0

    @classmethod
    async def open(cls, endpoint: Endpoint) -> Connection:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setblocking(False)
            err = sock.connect_ex((endpoint.host, endpoint.port))
            if err not in (0, errno.EINPROGRESS):
                raise OSError(err, os.strerror(err))
            await trio.lowlevel.wait_writable(sock)
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                raise OSError(err, os.strerror(err))
        except BaseException:
            sock.close()
            raise
        return cls(sock)

    async def send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[self.sock.send(view) :]
            except BlockingIOError:
                await trio.lowlevel.wait_writable(self.sock)

    async def receive(self) -> bytes:
        """The next bytes from the peer (b"" when it closed)."""
        while True:
            try:
                data = self.sock.recv(RECEIVE_SIZE)
            except BlockingIOError:
                self._reads_without_wait = 0
                await trio.lowlevel.wait_readable(self.sock)
                continue
            self._reads_without_wait += 1
            if self._reads_without_wait >= self.YIELD_EVERY:
                self._reads_without_wait = 0
                await trio.lowlevel.checkpoint()
            return data

    async def exchange(self, request: bytes) -> Sample:
        """Send one prepared request and read its whole response.

        Raises ``StaleConnection`` when a connection that already carried a
        request turns out closed before any byte of the answer: the server
        closed it while idle (keep-alive timeout), which every HTTP client
        retries on a new connection.
        """
        started = time.perf_counter()
        reader = ResponseReader()
        ttfb = 0.0
        answered = False
        try:
            await self.send(request)
            while not reader.complete:
                data = await self.receive()
                if not data:
                    if not answered and self.used:
                        raise StaleConnection()
                    reader.eof()
                    break
                answered = True
                if reader.feed(data) and not ttfb:
                    ttfb = time.perf_counter() - started
        except OSError:
            if not answered and self.used:
                raise StaleConnection() from None
            raise
        total = time.perf_counter() - started
        self.used = True
        self.reusable = reader.keep_alive
        return Sample(ttfb or total, total, reader.body_bytes, reader.counter.events, reader.status)

    def close(self) -> None:
        # wait_readable/wait_writable of a task being cancelled are already
        # unregistered; notify_closing wakes any other waiter on the socket.
        trio.lowlevel.notify_closing(self.sock)
        self.sock.close()


async def _warm_connection(endpoint: Endpoint, request: bytes) -> Connection | None:
    """A connection that has answered one request, or None."""
    try:
        conn = await Connection.open(endpoint)
    except NETWORK_ERRORS:
        return None
    ok = False
    try:
        await conn.exchange(request)
        ok = conn.reusable
    except NETWORK_ERRORS:
        pass
    finally:
        if not ok:
            conn.close()
    return conn if ok else None


class _Budget:
    """Hands out request slots until a count or a deadline is reached."""

    def __init__(self, max_requests: int, deadline: float) -> None:
        self.max_requests = max_requests
        self.deadline = deadline
        self.issued = 0

    def take(self) -> bool:
        if self.issued >= self.max_requests or time.perf_counter() >= self.deadline:
            return False
        self.issued += 1
        return True


def _count(errors: dict[str, int], key: str) -> None:
    errors[key] = errors.get(key, 0) + 1


async def run_load(
    endpoint: Endpoint,
    scenario: Scenario,
    concurrency: int,
    *,
    max_requests: int,
    max_seconds: float,
    timeout_s: float = 30.0,
    drain_s: float = 10.0,
    progress: Progress | None = None,
    cold: bool = False,
) -> RunResult:
    """Closed-loop load: ``concurrency`` workers, each on its own keep-alive connection.

    Every worker connects and sends one unmeasured request first
    (``CONNECT_AT_ONCE`` at a time); the clock starts when all are done, so
    latencies are those of a steady state, not of a connection storm. With
    ``cold``, as wrk does, every worker connects at once when the clock starts
    and its first request's time includes the connect. A request on a new
    connection (the server closed the last one) counts its connect too. New
    requests stop at ``max_requests`` or after ``max_seconds``; those still in
    flight get ``drain_s`` more, then are cancelled and counted unfinished.
    """
    request = prepare(endpoint, scenario)
    samples: list[Sample] = []
    errors: dict[str, int] = {}
    budget = _Budget(max_requests, float("inf"))
    connect_limiter = trio.CapacityLimiter(CONNECT_AT_ONCE)
    go = trio.Event()
    waiting = concurrency
    started = last_end = 0.0

    async def worker() -> None:
        nonlocal last_end, waiting, started
        conn: Connection | None = None
        try:
            # One unmeasured request per connection before the clock starts: a
            # connection is only known to be accepted once it was answered (a
            # trio accept loop takes one connection per scheduling round).
            # A failure here is retried, and counted, by the loop below.
            if not cold:
                with trio.move_on_after(timeout_s):
                    async with connect_limiter:
                        conn = await _warm_connection(endpoint, request)
            waiting -= 1
            if not waiting:
                started = last_end = time.perf_counter()
                budget.deadline = started + max_seconds
                go.set()
            await go.wait()
            while budget.take():
                try:
                    with trio.fail_after(timeout_s):
                        connect_s = 0.0
                        if conn is None:
                            connecting = time.perf_counter()
                            conn = await Connection.open(endpoint)
                            connect_s = time.perf_counter() - connecting
                        sample = await conn.exchange(request)
                        sample.ttfb += connect_s
                        sample.total += connect_s
                except StaleConnection:
                    budget.issued -= 1  # not an error: retried on a new connection
                except trio.TooSlowError:
                    _count(errors, "timeout")
                except NETWORK_ERRORS as exc:
                    _count(errors, type(exc).__name__)
                    await trio.sleep(0.01)  # a refused connect must not spin
                else:
                    last_end = time.perf_counter()
                    if sample.status == 200:
                        samples.append(sample)
                    else:
                        _count(errors, f"HTTP {sample.status}")
                    if progress is not None:
                        progress(1)
                    if conn.reusable:
                        continue
                if conn is not None:
                    conn.close()
                    conn = None
        finally:
            if conn is not None:
                conn.close()

    with trio.move_on_after(timeout_s + max_seconds + drain_s):
        async with trio.open_nursery() as nursery:
            for _ in range(concurrency):
                nursery.start_soon(worker)
    return RunResult(
        scenario.name, concurrency, samples, errors, budget.issued, max(0.0, last_end - started)
    )
