"""A sans-io decoder of Server-Sent Events (``text/event-stream``).

Implements the WHATWG HTML "event stream interpretation": fields ``event``,
``data``, ``id`` and ``retry``; multi-line data; lines ended by CR, LF or
CRLF (a CR at the end of one chunk and an LF at the start of the next are one
line ending); comments; a field without a colon; one space after the colon
stripped; a leading UTF-8 BOM stripped once; an ``id`` containing NUL
ignored. Bytes may be split anywhere, even inside a multi-byte UTF-8
character, because text is decoded per line (per event for data), never per
chunk.

The decoder never touches I/O: the relay feeds it the same bytes it forwards.
It runs on every chunk of every stream, so it works on bytes with C-level
splitting (``bytes.splitlines`` splits on exactly CR, LF and CRLF), and keeps
an incomplete line as a list of pieces joined once, so feeding a long line one
byte at a time stays linear.

``encode_event`` is the other direction: the one place the relay (and its
mock upstreams) writes an event block.
"""

from __future__ import annotations

import msgspec

__all__ = ["SSEDecoder", "SSEEvent", "encode_event"]

_BOM = b"\xef\xbb\xbf"
_COLON = 0x3A  # ord(":")
_LINE_END = b"\r\n"
_MAX_RETRY_DIGITS = 18  # fits an i64


def encode_event(data: bytes, event: bytes | str | None = None) -> bytes:
    """One event block: ``event: <event>`` (when given), ``data: <data>``, a blank line.

    ``data`` is usually one line of JSON; a line break inside it starts
    another ``data:`` field, so ``SSEDecoder`` gives back exactly ``data``
    (CR and CRLF come back as LF, as the spec reads them).
    """
    if b"\n" in data or b"\r" in data:
        data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\ndata: ")
    if event is None:
        return b"data: " + data + b"\n\n"
    if isinstance(event, str):
        event = event.encode()
    return b"event: " + event + b"\ndata: " + data + b"\n\n"


class SSEEvent(msgspec.Struct, frozen=True, gc=False):
    """One block of an event stream.

    ``event`` is ``"message"`` when the block set no event type. ``id`` and
    ``retry`` are what this block set (``None`` when it set nothing valid);
    the stream-wide last event id is ``SSEDecoder.last_event_id``. ``raw``
    is the block's exact bytes, terminating blank line included, and is only
    filled in ``keep_raw`` mode. ``dispatch`` is False for a block that
    dispatches no event (no data field: comments, or only id/retry/event),
    which the decoder returns only in ``keep_raw`` mode.
    """

    event: str
    data: str
    id: str | None = None
    retry: int | None = None
    raw: bytes = b""
    dispatch: bool = True


class SSEDecoder:
    """Feed bytes, get the events completed by them.

    In ``keep_raw`` mode every complete block yields exactly one ``SSEEvent``
    (``dispatch=False`` for blocks that dispatch nothing), and the ``raw`` of
    all returned events followed by ``pending_raw`` equals the bytes fed, so
    a caller can drop one event and forward everything else byte for byte.
    """

    __slots__ = (
        "_block_bytes",
        "_block_raw",
        "_closed",
        "_data",
        "_event",
        "_first_line",
        "_id",
        "_keep_raw",
        "_partial",
        "_partial_bytes",
        "_retry",
        "_skip_lf",
        "last_event_id",
    )

    def __init__(self, *, keep_raw: bool = False) -> None:
        self._keep_raw = keep_raw
        # Pieces of the line not yet ended, joined once the line ends.
        self._partial: list[bytes] = []
        self._partial_bytes = 0
        # The previous chunk ended with CR: an LF starting the next chunk
        # completes that line ending rather than ending an empty line.
        self._skip_lf = False
        self._first_line = True  # the only place a BOM is stripped
        self._closed = False
        # The block being read.
        self._data: list[bytes] = []
        self._event: bytes | None = None
        self._id: str | None = None
        self._retry: int | None = None
        self._block_bytes = 0  # complete lines of the block, for `pending`
        self._block_raw: list[bytes] = []  # keep_raw only
        # Persists across blocks, as the spec's "last event ID buffer".
        self.last_event_id = ""

    @property
    def pending(self) -> int:
        """Bytes of the unfinished block: what ``close()`` would discard.

        Chunking never changes it; an LF completing the CRLF that ended the
        last block is not counted (``pending_raw`` may start with it).
        """
        return self._block_bytes + self._partial_bytes

    @property
    def pending_raw(self) -> bytes:
        """The unfinished block's bytes (``keep_raw`` mode only)."""
        if not self._keep_raw:
            raise RuntimeError("pending_raw needs SSEDecoder(keep_raw=True)")
        return b"".join(self._block_raw) + b"".join(self._partial)

    def feed(self, data: bytes) -> list[SSEEvent]:
        """Decode ``data`` (any slice of the stream); return the blocks it completed."""
        if self._closed:
            raise RuntimeError("SSEDecoder.feed() after close()")
        if not data:
            return []
        if self._skip_lf:
            self._skip_lf = False
            if data[0] == 0x0A:
                # The LF completes the CRLF already seen as a line ending. When
                # that CR ended a block, the LF is not counted as pending (it
                # starts no block), but the next block's raw starts with it.
                if self._block_bytes:
                    self._block_bytes += 1
                if self._keep_raw:
                    self._block_raw.append(b"\n")
                data = data[1:]
                if not data:
                    return []
        lines = data.splitlines(keepends=True)
        tail: bytes | None = None
        if data[-1] in _LINE_END:
            self._skip_lf = data[-1] == 0x0D
        else:
            tail = lines.pop()
        if lines and self._partial:
            self._partial.append(lines[0])
            lines[0] = b"".join(self._partial)
            self._partial = []
            self._partial_bytes = 0
        if tail is not None:
            # The unterminated end waits for its line ending.
            self._partial.append(tail)
            self._partial_bytes += len(tail)
        if not lines:
            return []
        return self._lines(lines)

    def close(self) -> list[SSEEvent]:
        """End of stream. An unterminated block is discarded, as the spec says.

        ``pending`` still tells how many bytes were discarded.
        """
        self._closed = True
        return []

    def _lines(self, lines: list[bytes]) -> list[SSEEvent]:
        events: list[SSEEvent] = []
        keep_raw = self._keep_raw
        start = 0
        if self._first_line:
            self._first_line = False
            first = lines[0]
            if first.startswith(_BOM):
                # Stripped for parsing only: raw bytes keep it.
                start = 1
                if keep_raw:
                    self._block_raw.append(first)
                self._block_bytes += len(first)
                self._field(first[3:].rstrip(_LINE_END), events)
        for line in lines[start:] if start else lines:
            if keep_raw:
                self._block_raw.append(line)
            self._block_bytes += len(line)
            self._field(line.rstrip(_LINE_END), events)
        return events

    def _field(self, line: bytes, events: list[SSEEvent]) -> None:
        if not line:
            self._dispatch(events)
            return
        if line[0] == _COLON:
            return  # a comment
        colon = line.find(b":")
        if colon < 0:
            name, value = line, b""
        else:
            name = line[:colon]
            value = line[colon + 1 :]
            if value[:1] == b" ":
                value = value[1:]
        if name == b"data":
            self._data.append(value)
        elif name == b"event":
            self._event = value
        elif name == b"id":
            if b"\x00" not in value:
                self._id = self.last_event_id = value.decode("utf-8", "replace")
        elif name == b"retry":
            # ASCII digits only, and not empty. More digits than any delay in
            # milliseconds needs are ignored: int() refuses over 4,300 digits.
            if value.isdigit() and len(value) <= _MAX_RETRY_DIGITS:
                self._retry = int(value)
        # Any other field name is ignored.

    def _dispatch(self, events: list[SSEEvent]) -> None:
        data = self._data
        event = self._event
        raw = b""
        if self._keep_raw:
            raw = b"".join(self._block_raw)
            self._block_raw = []
        if data:
            events.append(
                SSEEvent(
                    event.decode("utf-8", "replace") if event else "message",
                    b"\n".join(data).decode("utf-8", "replace")
                    if len(data) > 1
                    else data[0].decode("utf-8", "replace"),
                    self._id,
                    self._retry,
                    raw,
                    True,
                )
            )
            self._data = []
        elif self._keep_raw:
            events.append(
                SSEEvent(
                    event.decode("utf-8", "replace") if event else "message",
                    "",
                    self._id,
                    self._retry,
                    raw,
                    False,
                )
            )
        self._event = None
        self._id = None
        self._retry = None
        self._block_bytes = 0
