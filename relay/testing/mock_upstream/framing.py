"""Where a stream's bytes are cut into socket writes, and their chunked framing.

A ``Writes`` is the whole response body as it goes on the wire (HTTP chunk
framing included) plus the offsets between consecutive writes: the server
issues exactly one socket write per span, so the chunking mode decides what
a reader sees arrive together. Sans-io.
"""

from __future__ import annotations

import random
from typing import NamedTuple

from .scenarios import Chunking

# Random splits are small, so several land inside every event and, with the
# non-ASCII text of the scenarios, inside multi-byte UTF-8 characters.
RANDOM_SPLIT_MAX = 48
COALESCE_MIN, COALESCE_MAX = 2, 5


class Writes(NamedTuple):
    wire: bytes
    bounds: list[int]  # write i is wire[bounds[i]:bounds[i + 1]]

    def spans(self) -> list[tuple[int, int]]:
        return list(zip(self.bounds, self.bounds[1:], strict=False))


def chunk_frame(payload: bytes) -> bytes:
    """One HTTP/1.1 chunk: hex size, CRLF, payload, CRLF."""
    return b"%x\r\n%b\r\n" % (len(payload), payload)


def pieces(
    events: list[bytes],
    chunking: Chunking,
    rng: random.Random,
    split_max: int = RANDOM_SPLIT_MAX,
) -> list[bytes]:
    """Cut the body (the concatenated events) into the payloads of successive writes
    (``random``: pieces of 1 to ``split_max`` bytes)."""
    if chunking == "event":
        return list(events)
    if chunking == "coalesce":
        out = []
        i = 0
        while i < len(events):
            n = rng.randint(COALESCE_MIN, COALESCE_MAX)
            out.append(b"".join(events[i : i + n]))
            i += n
        return out
    body = b"".join(events)
    if chunking == "bytes1":
        return [body[i : i + 1] for i in range(len(body))]
    out = []
    pos = 0
    while pos < len(body):
        step = rng.randint(1, split_max)
        out.append(body[pos : pos + step])
        pos += step
    return out


def build_writes(payloads: list[bytes], chunked: bool) -> Writes:
    """Frame each payload as one HTTP chunk (or not, for an HTTP/1.0 peer)."""
    framed = [chunk_frame(p) for p in payloads if p] if chunked else [p for p in payloads if p]
    bounds = [0]
    for f in framed:
        bounds.append(bounds[-1] + len(f))
    return Writes(b"".join(framed), bounds)


def unframe(wire: bytes | memoryview) -> bytes:
    """The payload bytes of a run of HTTP chunks (the inverse of ``build_writes``)."""
    out = []
    view = memoryview(wire)
    pos = 0
    while pos < len(view):
        end = bytes(view[pos : pos + 20]).index(b"\r\n")
        size = int(bytes(view[pos : pos + end]), 16)
        start = pos + end + 2
        out.append(view[start : start + size])
        pos = start + size + 2
    return b"".join(out)
