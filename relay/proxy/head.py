"""The head of a request to the proxy (``CONNECT host:443 HTTP/1.1`` and its headers), sans-io.

``HeadReader.feed(data)`` takes bytes as they arrive, split anywhere, and
returns the ``ProxyRequest`` once the blank line ending the head is in, with
whatever followed it (``rest``: the start of a tunnel's bytes, or of a
request body). A head over ``limit`` bytes raises ``HeadTooLarge`` at once
(the reader never holds more than ``limit`` bytes plus one read); a head
that is not HTTP/1.x raises ``BadHead``.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

MAX_HEAD = 16 * 1024
MAX_HEADERS = 100

_REQUEST_LINE_RE = re.compile(rb"^([!#$%&'*+.^_`|~0-9A-Za-z-]+) (\S+) HTTP/1\.([01])$")
_HEADER_NAME_RE = re.compile(rb"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_BAD_VALUE_RE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


class BadHead(ValueError):
    """Not an HTTP/1.x request head."""


class HeadTooLarge(BadHead):
    """A head (or one of its parts) over the limit."""


@dataclass(frozen=True, slots=True)
class ProxyRequest:
    method: str
    target: str
    version: str  # "1.0" or "1.1"
    headers: tuple[tuple[bytes, bytes], ...]  # names lowercased, values stripped
    raw_headers: tuple[tuple[bytes, bytes], ...]  # names as sent
    rest: bytes  # what the client sent after the head

    def header(self, name: bytes) -> bytes | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None


class HeadReader:
    def __init__(self, limit: int = MAX_HEAD) -> None:
        self.limit = limit
        self._buffer = bytearray()

    def feed(self, data: bytes) -> ProxyRequest | None:
        # The end may straddle two reads: search from just before the new bytes.
        start = max(0, len(self._buffer) - 3)
        self._buffer += data
        end = self._buffer.find(b"\r\n\r\n", start)
        if end < 0:
            if len(self._buffer) > self.limit:
                raise HeadTooLarge(f"the request head is over {self.limit} bytes")
            return None
        if end + 4 > self.limit:
            raise HeadTooLarge(f"the request head is over {self.limit} bytes")
        head = bytes(self._buffer[:end])
        rest = bytes(self._buffer[end + 4 :])
        self._buffer.clear()
        return parse_head(head, rest)


def parse_head(head: bytes, rest: bytes = b"") -> ProxyRequest:
    lines = head.split(b"\r\n")
    # RFC 9112 §2.2: a server may ignore empty lines before the request line.
    while lines and not lines[0]:
        lines.pop(0)
    if not lines:
        raise BadHead("empty request")
    match = _REQUEST_LINE_RE.match(lines[0])
    if match is None:
        raise BadHead("not an HTTP/1.x request line")
    if len(lines) - 1 > MAX_HEADERS:
        raise HeadTooLarge(f"more than {MAX_HEADERS} headers")
    headers: list[tuple[bytes, bytes]] = []
    raw: list[tuple[bytes, bytes]] = []
    for line in lines[1:]:
        if line[:1] in (b" ", b"\t"):
            raise BadHead("folded header lines are not accepted")
        name, sep, value = line.partition(b":")
        if not sep or not _HEADER_NAME_RE.match(name):
            raise BadHead("a malformed header line")
        value = value.strip(b" \t")
        if _BAD_VALUE_RE.search(value):
            raise BadHead("a control character in a header value")
        headers.append((name.lower(), value))
        raw.append((name, value))
    return ProxyRequest(
        method=match.group(1).decode("ascii"),
        target=match.group(2).decode("latin-1"),
        version="1." + match.group(3).decode("ascii"),
        headers=tuple(headers),
        raw_headers=tuple(raw),
        rest=rest,
    )


def basic_credentials(request: ProxyRequest) -> tuple[str, str] | None:
    """(user, password) of ``Proxy-Authorization: Basic …``, or None when absent or garbled."""
    value = request.header(b"proxy-authorization")
    if value is None:
        return None
    scheme, _, encoded = value.partition(b" ")
    if scheme.lower() != b"basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    if not sep:
        return None
    return user, password


@dataclass(frozen=True, slots=True)
class AbsoluteURL:
    scheme: str  # "http" (https is reached with CONNECT)
    authority: str
    path: str  # origin form: path and query, at least "/"


def parse_absolute_url(target: str) -> AbsoluteURL:
    """``http://host[:port]/path?query`` → its parts; ``BadHead`` for anything else."""
    scheme, sep, rest = target.partition("://")
    if not sep or scheme.lower() != "http":
        raise BadHead("only http:// URLs are proxied (use CONNECT for https)")
    slash = rest.find("/")
    query = rest.find("?")
    ends = [i for i in (slash, query, rest.find("#")) if i >= 0]
    cut = min(ends) if ends else len(rest)
    authority, path = rest[:cut], rest[cut:]
    if "@" in authority:
        raise BadHead("user information in a proxied URL is not accepted")
    path = path.split("#", 1)[0]
    if not path.startswith("/"):
        path = "/" + path
    return AbsoluteURL("http", authority, path)
