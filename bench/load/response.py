"""Sans-io reading of HTTP/1.1 responses for the load generator.

h11 frames the requests (once per scenario; they are then sent as prepared
bytes). For responses the generator needs far less than h11 does: the
status, where the body ends, how many body bytes and SSE events it held. h11
costs tens of microseconds per chunk, which on a 31-chunk stream made the
generator, not the target, the bottleneck; this reader costs a few
microseconds per chunk. ``tests/bench/test_loadgen.py`` checks it against h11 on
arbitrary splits of real responses.
"""

from __future__ import annotations

MAX_HEAD = 65536


class ResponseError(Exception):
    """The bytes are not an HTTP/1.1 response this reader understands."""


class EventCounter:
    """Counts SSE events (blank-line terminators) across arbitrary chunk boundaries.

    LF line endings only, which is what the providers send.
    """

    def __init__(self) -> None:
        self.events = 0
        self._open_newline = False  # the data so far ends in an unpaired "\n"

    def feed(self, data: bytes) -> None:
        if not data:
            return
        if self._open_newline and data[:1] == b"\n":
            self.events += 1
            data = data[1:]
            self._open_newline = False
            if not data:
                return
        self.events += data.count(b"\n\n")
        if data[-1:] == b"\n":
            # A run of newlines pairs up from its start: an odd run leaves one open.
            run = len(data) - len(data.rstrip(b"\n"))
            self._open_newline = run % 2 == 1
        else:
            self._open_newline = False


_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_END, _TRAILER, _UNTIL_CLOSE, _DONE = range(8)


class ResponseReader:
    """One response: feed it bytes as they arrive, then ``eof()`` if the peer closed.

    After ``complete``: ``status``, ``body_bytes``, ``counter.events`` and
    ``keep_alive`` (whether the connection can carry another request).
    """

    def __init__(self) -> None:
        self.status = 0
        self.body_bytes = 0
        self.counter = EventCounter()
        self.keep_alive = True
        self._state = _HEAD
        self._remaining = 0  # body or chunk bytes still to come
        self._pending = b""  # an incomplete head, size line or chunk end

    @property
    def complete(self) -> bool:
        return self._state == _DONE

    def feed(self, data: bytes) -> int:
        """Take the next bytes; return how many of them were body bytes."""
        buf = self._pending + data if self._pending else data
        self._pending = b""
        pos = 0
        before = self.body_bytes
        end = len(buf)
        while pos < end:
            state = self._state
            if state == _CHUNK_DATA or state == _LENGTH:
                take = min(self._remaining, end - pos)
                self._body(buf[pos : pos + take])
                pos += take
                self._remaining -= take
                if not self._remaining:
                    self._state = _CHUNK_END if state == _CHUNK_DATA else _DONE
            elif state == _CHUNK_SIZE:
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    break
                try:
                    size = int(buf[pos:eol].split(b";", 1)[0], 16)
                except ValueError:
                    raise ResponseError(f"bad chunk size line {buf[pos:eol][:40]!r}") from None
                pos = eol + 2
                self._remaining = size
                self._state = _CHUNK_DATA if size else _TRAILER
            elif state == _CHUNK_END:
                if end - pos < 2:
                    break
                if buf[pos : pos + 2] != b"\r\n":
                    raise ResponseError("chunk data not followed by CRLF")
                pos += 2
                self._state = _CHUNK_SIZE
            elif state == _TRAILER:
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    break
                self._state = _DONE if eol == pos else _TRAILER  # an empty line ends trailers
                pos = eol + 2
            elif state == _HEAD:
                eoh = buf.find(b"\r\n\r\n", pos)
                if eoh < 0:
                    if end - pos > MAX_HEAD:
                        raise ResponseError("response head too large")
                    break
                self._head(buf[pos:eoh])
                pos = eoh + 4
            elif state == _UNTIL_CLOSE:
                self._body(buf[pos:])
                pos = end
            else:  # _DONE: bytes after the response
                raise ResponseError("data after the end of the response")
        if pos < end:
            self._pending = buf[pos:]
        return self.body_bytes - before

    def eof(self) -> None:
        """The peer closed the connection."""
        self.keep_alive = False
        if self._state == _UNTIL_CLOSE:
            self._state = _DONE
        elif self._state != _DONE:
            raise ResponseError("connection closed before the response ended")

    def _body(self, data: bytes) -> None:
        self.body_bytes += len(data)
        self.counter.feed(data)

    def _head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
            raise ResponseError(f"bad status line {lines[0][:60]!r}")
        status = int(parts[1])
        if 100 <= status < 200:
            return  # an interim response: the real head follows
        self.status = status
        length: int | None = None
        chunked = False
        self.keep_alive = parts[0] == b"HTTP/1.1"
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = value.strip().lower().endswith(b"chunked")
            elif name == b"connection":
                tokens = {t.strip() for t in value.lower().split(b",")}
                if b"close" in tokens:
                    self.keep_alive = False
                elif b"keep-alive" in tokens:
                    self.keep_alive = True
        if status in (204, 304):
            self._state = _DONE
        elif chunked:
            self._state = _CHUNK_SIZE
        elif length is not None:
            self._remaining = length
            self._state = _LENGTH if length else _DONE
        else:
            self.keep_alive = False
            self._state = _UNTIL_CLOSE
