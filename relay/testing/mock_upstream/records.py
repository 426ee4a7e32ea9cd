"""What tests observe of the mock: recorded requests, connection events, write stats."""

from __future__ import annotations

from typing import Any, Literal

import msgspec

Phase = Literal["before-response", "before-first-byte", "mid-stream", "idle"]


class RecordedRequest(msgspec.Struct, kw_only=True):
    index: int  # position in MockUpstream.requests
    conn_id: int
    method: str
    path: str  # with the query string
    headers: list[tuple[str, str]]  # as received: original case and order
    body: bytes
    at: float  # trio.current_time() when the request was complete
    status: int | None = None  # of the mock's answer
    # The body the mock answered with, de-chunked (for a cut scenario, up to
    # the cut). A client that left early received only a prefix of it.
    response_body: bytes = b""

    def header(self, name: str) -> str | None:
        """The first value of a header, matched case-insensitively."""
        lowered = name.lower()
        return next((v for n, v in self.headers if n.lower() == lowered), None)

    def json(self) -> Any:
        return msgspec.json.decode(self.body)


class ConnectionEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One step of a connection's life.

    ``kind``: opened, request, response-started, first-byte, finished,
    closed-by-peer or closed-by-server. Closes carry the ``phase`` the
    connection was in: before-response, before-first-byte, mid-stream, idle.
    """

    kind: str
    conn_id: int
    at: float
    request_index: int | None = None
    phase: Phase | None = None
    status: int | None = None


class WriteStats(msgspec.Struct, kw_only=True):
    writes: int = 0
    bytes: int = 0  # written to sockets so far
    pauses: int = 0  # times a write found the socket buffer full and waited
    blocked_now: int = 0  # writes waiting for buffer space at this moment
    paused_seconds: float = 0.0
    longest_pause_seconds: float = 0.0
