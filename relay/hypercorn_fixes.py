"""Five changes to hypercorn 0.18's trio worker, installed before it serves.

**A connection the client closed is closed at once.** hypercorn's
``TCPServer.run`` holds the socket inside a task group that also runs the
keep-alive idle timer. When the client closes an idle connection (or one
whose request head never completed), ``_read_data`` sees EOF and tells the
protocol, which has no stream to close, so nothing stops the timer: the
socket sits in CLOSE-WAIT, holding an fd, until ``keep_alive_timeout`` (75 s
here) has run out. ``RelayTCPServer`` marks the EOF and restarts the timer
with no wait, so the connection closes as soon as it is idle.

**At most ``MAX_CONNECTIONS`` connections per process.** One more is
answered ``503`` with ``connection: close`` before its request is read, so
an unauthenticated client cannot walk the process to its fd limit.

**Cleartext HTTP/2 is not served.** hypercorn answers ``Upgrade: h2c`` with
101 and takes ``PRI * HTTP/2.0`` (prior knowledge) as HTTP/2. The relay's
limits and refusals are built and tested for HTTP/1.1, no supported client
or front end speaks h2c to it, and h2's multiplexing would put 100 streams
behind each counted connection. ``RelayH11Protocol`` ignores the upgrade
(RFC 9110 §7.8 lets a server) and leaves a PRI request to be answered as
HTTP/1.1 (404, then the connection breaks on the preface).

**A burst of new connections is accepted at once.** ``trio.serve_listeners``
takes one connection per scheduling round (``SocketListener.accept``
checkpoints after each), and with hundreds of busy streams a round takes
milliseconds: 256 clients connecting together waited seconds in the kernel's
queue for their first answer (docs/benchmarks.md, *The tail*).
``DrainingSocketListener`` waits for the listening socket like trio does,
then takes every connection already queued (up to ``ACCEPT_BATCH``) in one
go and hands them out without a checkpoint between them, so the serving loop
starts all their handlers in the same round.

**A WebSocket client's close code reaches the app.** hypercorn answers the
client's close frame, then tells the app ``websocket.disconnect`` with 1006
(abnormal closure) whatever code the client sent, so the Responses
WebSocket bridge could not close the provider's socket with the client's
code. ``RelayWSStream`` keeps the code of the client's close frame and
reports it.

hypercorn's worker looks these classes up by module global at call time,
so ``install`` swaps them in; it is idempotent. The overridden methods are
private: ``TESTED_VERSIONS`` names the hypercorn versions they were read
against, and tests/request/test_hostile_input.py fails on any other.
"""

from __future__ import annotations

import collections
import logging
import socket
import types
from importlib.metadata import version
from typing import Any

import hypercorn.protocol
import hypercorn.protocol.h11
import hypercorn.trio.run
import msgspec
import trio
from hypercorn.config import Config
from hypercorn.protocol.events import StreamClosed
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.protocol.ws_stream import FrameTooLargeError, WSStream
from hypercorn.trio.tcp_server import TCPServer
from wsproto.connection import ConnectionState
from wsproto.events import CloseConnection, Message, Ping
from wsproto.frame_protocol import CloseReason

log = logging.getLogger("relay.server")

TESTED_VERSIONS = frozenset({"0.18.0"})

# How long a refused connection may take to read our answer before it is closed.
_REFUSAL_LINGER = 1.0


class ConnectionLimit:
    """Connections open on one listener set (one ``Config``): at most ``limit`` (0: no limit)."""

    def __init__(self, limit: int) -> None:
        if limit < 0:
            raise ValueError("a connection limit cannot be negative")
        self.limit = limit
        self.open = 0
        self.refused = 0


def set_connection_limit(config: Config, limit: int) -> None:
    config.relay_connections = ConnectionLimit(limit)  # type: ignore[attr-defined]


def _refusal(limit: int) -> bytes:
    # Before the request is read the provider is not known: a body both SDKs parse.
    message = f"too many connections to this relay process (at most {limit})"
    body = msgspec.json.encode(
        {
            "type": "error",
            "error": {"type": "overloaded_error", "message": message, "code": "overloaded"},
        }
    )
    head = (
        "HTTP/1.1 503 Service Unavailable\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n"
        "retry-after: 1\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class RelayTCPServer(TCPServer):
    _peer_closed = False

    async def run(self) -> None:
        connections: ConnectionLimit | None = getattr(self.config, "relay_connections", None)
        if connections is None:
            await super().run()
            return
        if connections.limit and connections.open >= connections.limit:
            connections.refused += 1
            await self._refuse(connections.limit)
            return
        connections.open += 1
        try:
            await super().run()
        finally:
            connections.open -= 1

    async def _refuse(self, limit: int) -> None:
        stream: Any = self.stream
        try:
            with trio.move_on_after(_REFUSAL_LINGER):
                await stream.send_all(_refusal(limit))
                await stream.send_eof()
                # Read what the client sent until it closes: closing with unread
                # bytes would reset the connection and lose the answer.
                while await stream.receive_some(65536):
                    pass
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError, AttributeError):
            pass
        finally:
            await stream.aclose()

    async def _read_data(self) -> None:
        try:
            await super()._read_data()
        finally:
            self._peer_closed = True
            # The idle timer runs only between requests: restart it so it closes now.
            # Otherwise the request in flight finishes first, and the timer it
            # starts (Updated(idle=True)) closes at once too.
            if self.idle_task._handle is not None:
                await self.idle_task.restart(self._task_group, self._idle_timeout)

    async def _idle_timeout(self) -> None:
        if self._peer_closed:
            with trio.CancelScope(shield=True):
                await self._initiate_server_close()
            return
        await super()._idle_timeout()


ACCEPT_BATCH = 256  # connections taken from the kernel's queue per wake-up, at most


class DrainingSocketListener(trio.abc.Listener[trio.SocketStream]):
    """A ``trio.SocketListener`` that accepts every queued connection per wake-up.

    Only the first connection of a batch costs a checkpoint (trio's own
    ``accept``); the others are taken with non-blocking ``accept`` calls on
    the same socket and returned without one, so ``serve_listeners`` starts
    their handlers in the same scheduling round.
    """

    def __init__(self, listening: trio.socket.SocketType) -> None:
        self.socket = listening
        self._listener = trio.SocketListener(listening)
        self._queued: collections.deque[trio.socket.SocketType] = collections.deque()

    async def accept(self) -> trio.SocketStream:
        if self._queued:
            return trio.SocketStream(self._queued.popleft())
        stream = await self._listener.accept()
        raw: socket.socket = self.socket._sock  # type: ignore[attr-defined]  # trio wraps one
        while len(self._queued) < ACCEPT_BATCH:
            try:
                sock, _ = raw.accept()
            except OSError:
                # Nothing queued (BlockingIOError), or an error trio's accept
                # reports (or skips, like ECONNABORTED) on the next call.
                break
            self._queued.append(trio.socket.from_stdlib_socket(sock))
        return stream

    async def aclose(self) -> None:
        while self._queued:
            self._queued.popleft().close()
        await self._listener.aclose()


class _TrioForHypercorn(types.ModuleType):
    """``trio`` as hypercorn's worker sees it: the same, but its listeners drain the queue."""

    SocketListener = DrainingSocketListener

    def __getattr__(self, name: str) -> Any:
        return getattr(trio, name)


_TRIO_FOR_HYPERCORN = _TrioForHypercorn("trio")


class RelayH11Protocol(H11Protocol):
    async def _check_protocol(self, event: Any) -> None:
        """No switch to HTTP/2: every request is served as HTTP/1.1."""
        return


class RelayWSStream(WSStream):
    """hypercorn's WebSocket stream, reporting the close code the client sent."""

    _client_close: int | None = None

    async def handle(self, event: Any) -> None:
        if (
            isinstance(event, StreamClosed)
            and not self.closed
            and self.app_put is not None
            and self._client_close is not None
        ):
            self.closed = True
            await self.app_put({"type": "websocket.disconnect", "code": self._client_close})
            return
        await super().handle(event)

    async def _handle_events(self) -> None:
        # hypercorn 0.18's own, plus the code of a close frame kept for ``handle``.
        for event in self.connection.events():
            if isinstance(event, Message):
                try:
                    self.buffer.extend(event)
                except FrameTooLargeError:
                    await self._send_wsproto_event(
                        CloseConnection(code=CloseReason.MESSAGE_TOO_BIG)
                    )
                    break
                if event.message_finished:
                    assert self.app_put is not None  # a message arrives only once the app runs
                    await self.app_put(self.buffer.to_message())
                    self.buffer.clear()
            elif isinstance(event, Ping):
                await self._send_wsproto_event(event.response())
            elif isinstance(event, CloseConnection):
                self._client_close = event.code
                if self.connection.state == ConnectionState.REMOTE_CLOSING:
                    await self._send_wsproto_event(event.response())
                await self.send(StreamClosed(stream_id=self.stream_id))


def install() -> None:
    """Swap the relay's classes into hypercorn's trio worker (idempotent)."""
    installed = version("hypercorn")
    if installed not in TESTED_VERSIONS:
        log.warning(
            "hypercorn %s is not a version relay.hypercorn_fixes was checked against (%s)",
            installed,
            ", ".join(sorted(TESTED_VERSIONS)),
        )
    # Replacing what these modules imported: names they do not export (hence the ignores).
    hypercorn.trio.run.TCPServer = RelayTCPServer  # type: ignore[attr-defined]
    hypercorn.trio.run.trio = _TRIO_FOR_HYPERCORN  # type: ignore[attr-defined]
    hypercorn.protocol.H11Protocol = RelayH11Protocol  # type: ignore[attr-defined]
    hypercorn.protocol.h11.WSStream = RelayWSStream  # type: ignore[attr-defined]
