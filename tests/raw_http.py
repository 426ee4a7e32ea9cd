"""Raw HTTP/1.1 over a socket, for input an HTTP client would normalise or refuse to send.

``exchange`` writes exact bytes and reads every response the server sends
back until it closes the connection (or goes quiet), parsed by a small
parser here, so a test can see both a refusal and whether a hidden second
request was answered.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit

import msgspec
import trio


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict:  # type: ignore[type-arg]
        return msgspec.json.decode(self.body)


@dataclass
class RawResult:
    responses: list[RawResponse] = field(default_factory=list)
    closed: bool = False  # the server closed the connection (EOF) before the quiet timeout


def host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    return parts.hostname, parts.port


def request_bytes(
    method: str, target: str, headers: dict[str, str] | None = None, body: bytes = b""
) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "host: relay"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def exchange(url: str, data: bytes, *, quiet: float = 1.0, timeout: float = 10) -> RawResult:
    """Send ``data``; collect responses until EOF, or ``quiet`` seconds without a byte."""
    host, port = host_port(url)
    result = RawResult()
    buffer = b""
    with trio.fail_after(timeout):
        stream = await trio.open_tcp_stream(host, port)
        async with stream:
            await stream.send_all(data)
            while True:
                chunk = None
                with trio.move_on_after(quiet):
                    try:
                        chunk = await stream.receive_some(65536)
                    except trio.BrokenResourceError:
                        chunk = b""
                if chunk is None:
                    break
                if chunk == b"":
                    result.closed = True
                buffer += chunk
                buffer = parse_responses(buffer, result.responses)
                if result.closed:
                    break
    return result


def parse_responses(buffer: bytes, out: list[RawResponse], *, to_head: bool = False) -> bytes:
    """Append every complete response in ``buffer`` to ``out``; return what is left.

    ``to_head``: answers to HEAD (their framing headers describe a body never sent).
    """
    while True:
        head, sep, rest = buffer.partition(b"\r\n\r\n")
        if not sep:
            return buffer
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if to_head:
            body = b""
        elif "content-length" in headers:
            size = int(headers["content-length"])
            if len(rest) < size:
                return buffer
            body, rest = rest[:size], rest[size:]
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            decoded = _dechunk(rest)
            if decoded is None:
                return buffer
            body, rest = decoded
        else:
            body, rest = b"", rest
        out.append(RawResponse(status, headers, body))
        buffer = rest


def _dechunk(data: bytes) -> tuple[bytes, bytes] | None:
    body = b""
    while True:
        size_line, sep, rest = data.partition(b"\r\n")
        if not sep:
            return None
        size = int(size_line.split(b";")[0], 16)
        if len(rest) < size + 2:
            return None
        body += rest[:size]
        data = rest[size + 2 :]
        if size == 0:
            # No trailers are sent by the relay: the last chunk ends the body.
            return body, data
