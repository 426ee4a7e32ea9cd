"""The mock upstream's I/O shell: trio sockets, h11 parsing, exact writes.

Raw sockets rather than an ASGI server, because tests need to control TCP
write boundaries and to see the moment a client closes. Per connection, one
task serves requests and writes replies while a second task keeps reading the
socket: it feeds h11 and, on EOF or reset, records ``closed-by-peer`` with the
phase the connection was in and cancels the first task at once, so a close is
seen even while the server sleeps before the first token.

h11 only parses requests; response heads and chunk framing are pre-built
bytes (h11's per-response validation cost ~50 us a request here). Writes go
straight to the non-blocking socket (one ``write`` per planned span)
so the server knows exactly when the kernel buffer was full: each wait for
writability counts as a pause in ``paused_writes`` (the proof that a slow
reader's backpressure reached the upstream).
"""

from __future__ import annotations

import http
import os
import socket
import struct
from collections.abc import Collection
from typing import Any

import h11
import trio

from .framing import RANDOM_SPLIT_MAX, unframe
from .records import ConnectionEvent, Phase, RecordedRequest, WriteStats
from .routes import Reply, Responder, StreamReply
from .scenarios import RETRY_AFTER_SECONDS, Chunking, Ending

RECEIVE_SIZE = 65536
YIELD_EVERY_WRITES = 8
_REASONS = {529: b"Overloaded"}


class _Connection:
    def __init__(self, conn_id: int, stream: trio.SocketStream) -> None:
        self.id = conn_id
        self.stream = stream
        self.fd = stream.socket.fileno()
        self.h11 = h11.Connection(h11.SERVER)
        self.phase: Phase = "idle"
        self.request_index: int | None = None
        self.closed_by_peer = False
        self.ending: Ending = "complete"
        self.data_ready = trio.Event()
        self.unyielded = 0  # writes since the last checkpoint


class MockUpstream:
    """An in-process provider double; see docs/mock-upstream.md.

    ``record=False`` keeps only counters (for long load runs): ``requests``
    and ``events`` stay empty and ``wait_for_close`` is unavailable.
    """

    def __init__(
        self,
        chunking: Chunking = "event",
        seed: int = 0,
        keys: Collection[str] | None = None,
        rate_limited_keys: Collection[str] = (),
        revoked_keys: Collection[str] = (),
        *,
        record: bool = True,
        retry_after: int = RETRY_AFTER_SECONDS,
        split_max: int = RANDOM_SPLIT_MAX,
    ) -> None:
        self.responder = Responder(
            chunking=chunking,
            seed=seed,
            keys=keys,
            rate_limited_keys=rate_limited_keys,
            revoked_keys=revoked_keys,
            retry_after=retry_after,
            split_max=split_max,
        )
        self.record = record
        self.host = "127.0.0.1"
        self.port: int | None = None
        self.requests: list[RecordedRequest] = []
        self.events: list[ConnectionEvent] = []
        self.paused_writes = WriteStats()
        self.request_count = 0
        self.connection_count = 0
        self._open: dict[int, _Connection] = {}
        self._closed: dict[int, trio.Event] = {}
        self._close_events: dict[int, ConnectionEvent] = {}
        self._changed = trio.Event()

    @property
    def base_url(self) -> str:
        """Anthropic's base URL shape (no /v1): ``http://127.0.0.1:PORT``."""
        if self.port is None:
            raise RuntimeError("MockUpstream is not serving yet")
        return f"http://{self.host}:{self.port}"

    @property
    def openai_base_url(self) -> str:
        return self.base_url + "/v1"

    @property
    def open_connections(self) -> int:
        return len(self._open)

    async def serve(
        self,
        port: int = 0,
        host: str = "127.0.0.1",
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen (port 0: ephemeral) and serve until cancelled."""
        listeners = await trio.open_tcp_listeners(port, host=host)
        self.host = host
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, self._serve_connection, listeners)
            task_status.started()

    # -- observation ----------------------------------------------------------

    async def wait_for_request(self, index: int, timeout: float = 5.0) -> RecordedRequest:
        with trio.fail_after(timeout):
            while len(self.requests) <= index:
                await self._changed.wait()
        return self.requests[index]

    async def wait_for_close(
        self,
        conn_id: int | RecordedRequest | None = None,
        timeout: float = 5.0,
        *,
        request_index: int | None = None,
    ) -> ConnectionEvent:
        """Wait until connection ``conn_id`` (or the one that carried request
        ``request_index``, or that request's connection) has closed; return its
        close event (``kind`` says who closed it, ``phase`` when)."""
        if not self.record:
            raise RuntimeError("wait_for_close needs MockUpstream(record=True)")
        with trio.fail_after(timeout):
            if request_index is not None:
                conn_id = await self.wait_for_request(request_index, timeout)
            if isinstance(conn_id, RecordedRequest):
                conn_id = conn_id.conn_id
            if conn_id is None:
                raise TypeError("give a connection id, a RecordedRequest or request_index")
            while conn_id not in self._closed:
                await self._changed.wait()
            await self._closed[conn_id].wait()
        return self._close_events[conn_id]

    def _log(self, kind: str, c: _Connection, **fields: Any) -> ConnectionEvent | None:
        if not self.record:
            return None
        event = ConnectionEvent(kind=kind, conn_id=c.id, at=trio.current_time(), **fields)
        self.events.append(event)
        return event

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    # -- connections ----------------------------------------------------------

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        self.connection_count += 1
        c = _Connection(self.connection_count, stream)
        self._open[c.id] = c
        self._closed[c.id] = trio.Event()
        self._log("opened", c)
        self._notify()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch_peer, c, nursery.cancel_scope)
                try:
                    await self._serve_requests(c)
                except (BrokenPipeError, ConnectionResetError):
                    c.closed_by_peer = True  # seen by a write before the watcher saw it
                except h11.RemoteProtocolError:
                    pass  # garbage from the client: just hang up
                nursery.cancel_scope.cancel()
        finally:
            self._close(c)

    def _close(self, c: _Connection) -> None:
        if c.ending == "reset":
            # SO_LINGER 0: close() sends RST instead of FIN, an abrupt failure.
            c.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.stream.socket.close()
        del self._open[c.id]
        event = self._log(
            "closed-by-peer" if c.closed_by_peer else "closed-by-server",
            c,
            request_index=c.request_index,
            phase=c.phase,
        )
        closed = self._closed.pop(c.id)
        if event is not None:
            self._close_events[c.id] = event
            self._closed[c.id] = closed
        closed.set()
        self._notify()

    async def _watch_peer(self, c: _Connection, scope: trio.CancelScope) -> None:
        try:
            while data := await c.stream.receive_some(RECEIVE_SIZE):
                c.h11.receive_data(data)
                c.data_ready.set()
        except trio.BrokenResourceError:
            pass  # reset by peer
        if not c.closed_by_peer:
            c.closed_by_peer = True
            # Stop whatever the connection was doing (sleeping, writing) now.
            scope.cancel()

    async def _next_event(self, c: _Connection) -> Any:
        while True:
            event = c.h11.next_event()
            if event is not h11.NEED_DATA:
                return event
            c.data_ready = trio.Event()
            await c.data_ready.wait()

    async def _serve_requests(self, c: _Connection) -> None:
        while True:
            c.phase = "idle"
            request = await self._next_event(c)
            if not isinstance(request, h11.Request):
                return  # ConnectionClosed
            c.phase = "before-response"
            if c.h11.client_is_waiting_for_100_continue:
                await self._write(c, b"HTTP/1.1 100 Continue\r\n\r\n")
            chunks = []
            while not isinstance(event := await self._next_event(c), h11.EndOfMessage):
                chunks.append(event.data)
            index = self._record_request(c, request, b"".join(chunks))
            # First value wins, as for RecordedRequest.header.
            headers = {
                n.decode("latin-1"): v.decode("latin-1") for n, v in reversed(request.headers)
            }
            http11 = request.http_version == b"1.1"
            keep_alive = http11 and "close" not in headers.get("connection", "").lower()
            reply = self.responder.respond(
                request.method.decode(),
                request.target.decode("latin-1"),
                headers,
                b"".join(chunks),
                index,
                chunked=http11,
            )
            if self.record:
                self._record_reply(self.requests[index], reply, http11)
            await self._send_reply(c, reply, http11, keep_alive)
            if c.ending != "complete":
                return  # cut on purpose
            c.phase = "idle"
            if not keep_alive:
                return  # the client asked to close (or speaks HTTP/1.0)
            # h11 only parses; responses bypass it (pre-built bytes are much
            # cheaper than h11's per-header validation), so each request gets
            # a fresh parser that inherits whatever the client already sent.
            leftover, _ = c.h11.trailing_data
            c.h11 = h11.Connection(h11.SERVER)
            if leftover:
                c.h11.receive_data(bytes(leftover))

    def _record_request(self, c: _Connection, request: h11.Request, body: bytes) -> int:
        index = self.request_count
        self.request_count += 1
        c.request_index = index
        if self.record:
            self.requests.append(
                RecordedRequest(
                    index=index,
                    conn_id=c.id,
                    method=request.method.decode(),
                    path=request.target.decode("latin-1"),
                    headers=[
                        (n.decode("latin-1"), v.decode("latin-1"))
                        for n, v in request.headers.raw_items()
                    ],
                    body=body,
                    at=trio.current_time(),
                )
            )
            self._log("request", c, request_index=index)
            self._notify()
        return index

    @staticmethod
    def _record_reply(recorded: RecordedRequest, reply: Reply, chunked: bool) -> None:
        if isinstance(reply, StreamReply):
            recorded.status = 200
            wire = reply.writes.wire
            recorded.response_body = unframe(wire) if chunked else wire
        else:
            recorded.status = reply.status
            recorded.response_body = reply.body[: reply.truncate_to]

    # -- writing --------------------------------------------------------------

    @staticmethod
    def _head(status: int, headers: list[tuple[bytes, bytes]], chunked: bool, close: bool) -> bytes:
        try:
            reason = http.HTTPStatus(status).phrase.encode()
        except ValueError:
            reason = _REASONS.get(status, b"")
        lines = [b"HTTP/1.1 %d %b\r\n" % (status, reason)]
        lines += [name + b": " + value + b"\r\n" for name, value in headers]
        if chunked:
            lines.append(b"transfer-encoding: chunked\r\n")
        if close:
            lines.append(b"connection: close\r\n")
        lines.append(b"\r\n")
        return b"".join(lines)

    async def _send_reply(
        self, c: _Connection, reply: Reply, http11: bool, keep_alive: bool
    ) -> None:
        index = c.request_index
        if isinstance(reply, StreamReply):
            await self._send_stream(c, reply, http11, keep_alive)
            return
        if reply.delay_s:
            await trio.sleep(reply.delay_s)
        head = self._head(reply.status, reply.headers, chunked=False, close=not keep_alive)
        if reply.truncate_to is not None:
            c.ending = reply.ending
            await self._write(c, head + reply.body[: reply.truncate_to])
            self._log("response-started", c, request_index=index, status=reply.status)
            c.phase = "mid-stream"
            return
        await self._write(c, head + reply.body)
        self._log("response-started", c, request_index=index, status=reply.status)
        self._log("first-byte", c, request_index=index)
        self._log("finished", c, request_index=index)

    async def _send_stream(
        self, c: _Connection, reply: StreamReply, http11: bool, keep_alive: bool
    ) -> None:
        index = c.request_index
        if reply.headers_delay_s:
            await trio.sleep(reply.headers_delay_s)
        # HTTP/1.0 has no chunked encoding: the body ends with the connection.
        head = self._head(200, reply.headers, chunked=http11, close=not keep_alive)
        await self._write(c, head)
        c.phase = "before-first-byte"
        self._log("response-started", c, request_index=index, status=200)
        if reply.first_token_s:
            await trio.sleep(reply.first_token_s)
        wire = memoryview(reply.writes.wire)
        bounds = reply.writes.bounds
        for i in range(len(bounds) - 1):
            if i and reply.gap_s:
                await trio.sleep(reply.gap_s)
            await self._write(c, wire[bounds[i] : bounds[i + 1]])
            if i == 0:
                c.phase = "mid-stream"
                self._log("first-byte", c, request_index=index)
        if reply.ending != "complete":
            c.ending = reply.ending
            return
        if http11:
            await self._write(c, b"0\r\n\r\n")
        self._log("finished", c, request_index=index)

    async def _write(self, c: _Connection, data: bytes | memoryview) -> None:
        """One write of ``data`` (more only if the kernel takes part of it)."""
        stats = self.paused_writes
        stats.writes += 1
        view = memoryview(data)
        while view:
            try:
                sent = os.write(c.fd, view)
            except BlockingIOError:
                # Counted as it starts, so a pause in progress is visible.
                stats.pauses += 1
                stats.blocked_now += 1
                started = trio.current_time()
                try:
                    await trio.lowlevel.wait_writable(c.stream.socket)
                finally:
                    pause = trio.current_time() - started
                    stats.blocked_now -= 1
                    stats.paused_seconds += pause
                    stats.longest_pause_seconds = max(stats.longest_pause_seconds, pause)
                c.unyielded = 0
                continue
            stats.bytes += sent
            view = view[sent:]
        # A scheduling point every few writes keeps streams fair and lets the
        # peer watcher cancel promptly; one per write cost ~20% of the CPU.
        c.unyielded += 1
        if c.unyielded >= YIELD_EVERY_WRITES:
            c.unyielded = 0
            await trio.lowlevel.checkpoint()
