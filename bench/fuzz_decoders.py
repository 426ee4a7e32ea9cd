"""Random input into the sans-io stream decoders, split at random points.

    python -m bench.fuzz_decoders [--n 1000000] [--seed 0] [--decoder sse|eventstream|both]

Each input goes to a fresh decoder, fed in pieces cut at random offsets (one
byte, many pieces, or the whole at once), then ``close()``. A failure is:

- any exception other than the decoder's own error type (the SSE decoder has
  none: it must accept any bytes; the event-stream decoder may raise only
  ``EventStreamError``);
- a different result for a different split (events, and for SSE ``pending``
  and the ``keep_raw`` round trip: every event's raw bytes followed by
  ``pending_raw`` are the bytes fed).

Inputs are a mix: random bytes, streams built from each format's pieces
(fields, line endings, BOMs, long digit runs, invalid UTF-8; valid event
stream messages) and those same streams with bytes flipped, cut or
duplicated. The exit status is 1 when anything failed; each failure prints
the input's index and bytes (hex), enough to reproduce it.
"""

from __future__ import annotations

import argparse
import itertools
import random
import struct
import sys
import time
import traceback
from binascii import crc32
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from relay.streams.eventstream import EventStreamDecoder, EventStreamError, encode_message
from relay.streams.sse import SSEDecoder

MAX_SHOWN_FAILURES = 10

# -- inputs --------------------------------------------------------------------------------------

_SSE_PIECES = (
    b"data:",
    b"data: ",
    b"data",
    b"event: ",
    b"event:message_delta",
    b"id: ",
    b"id:\x00",
    b"retry: ",
    b"retry:",
    b": keepalive",
    b":",
    b"\r",
    b"\n",
    b"\r\n",
    b"\n\n",
    b"\r\r",
    b"\xef\xbb\xbf",
    b" ",
    b'{"type":"content_block_delta","delta":{"text":"hi"}}',
    b"[DONE]",
    "é☕🙂".encode(),
    b"\xc3",
    b"\xff\xfe",
    b"\xed\xa0\x80",
    b"\x00",
)


def _sse_input(rng: random.Random) -> bytes:
    parts: list[bytes] = []
    for _ in range(rng.randint(0, 40)):
        roll = rng.random()
        if roll < 0.8:
            parts.append(rng.choice(_SSE_PIECES))
        elif roll < 0.9:
            parts.append(str(rng.randint(0, 10**6)).encode())
        elif roll < 0.905:
            # A retry of more digits than int() takes from a string by default (4,300).
            parts.append(b"\nretry:" + b"9" * rng.choice((18, 19, 4300, 4301)) + b"\n")
        else:
            parts.append(rng.randbytes(rng.randint(1, 16)))
    return b"".join(parts)


def _header_value(rng: random.Random) -> object:
    kind = rng.randrange(6)
    if kind == 0:
        return rng.choice(("chunk", "event", "exception", "application/json", "é"))
    if kind == 1:
        return rng.randbytes(rng.randint(0, 20))
    if kind == 2:
        return rng.random() < 0.5
    if kind == 3:
        return rng.randint(-(2**63), 2**63 - 1)
    if kind == 4:
        return (rng.choice((2, 3, 4)), rng.randint(-100, 100))
    return (9, rng.randbytes(16))


def _eventstream_message(rng: random.Random) -> bytes:
    headers = {
        rng.choice((":event-type", ":message-type", ":content-type", "x", "")): _header_value(rng)
        for _ in range(rng.randint(0, 4))
    }
    return encode_message(headers, rng.randbytes(rng.randint(0, 64)))  # type: ignore[arg-type]


def _forged_prelude(rng: random.Random) -> bytes:
    """A prelude whose CRC is right but whose lengths are anything."""
    prelude = struct.pack(
        ">II",
        rng.choice((0, 15, 16, 17, 2**24, 2**32 - 1, rng.randint(0, 200))),
        rng.choice((0, 1, 255, 2**32 - 1, rng.randint(0, 200))),
    )
    body = rng.randbytes(rng.randint(0, 64))
    return prelude + struct.pack(">I", crc32(prelude)) + body


def _eventstream_input(rng: random.Random) -> bytes:
    parts = [
        _eventstream_message(rng) if rng.random() < 0.9 else _forged_prelude(rng)
        for _ in range(rng.randint(0, 5))
    ]
    return b"".join(parts)


def _mutate(rng: random.Random, data: bytes) -> bytes:
    if not data:
        return rng.randbytes(rng.randint(0, 32))
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        roll = rng.random()
        at = rng.randrange(len(out)) if out else 0
        if roll < 0.4 and out:
            out[at] ^= 1 << rng.randrange(8)
        elif roll < 0.6:
            del out[at:]
        elif roll < 0.8:
            out[at:at] = out[at : at + rng.randint(1, 32)]
        else:
            out[at:at] = rng.randbytes(rng.randint(1, 8))
    return bytes(out)


def make_input(rng: random.Random, structured: Callable[[random.Random], bytes]) -> bytes:
    roll = rng.random()
    if roll < 0.15:
        return rng.randbytes(rng.randint(0, 256))
    data = structured(rng)
    return _mutate(rng, data) if roll < 0.55 else data


def split_points(rng: random.Random, size: int) -> list[int]:
    """Where to cut ``size`` bytes: nowhere, everywhere, or at random offsets."""
    if size <= 1:
        return []
    roll = rng.random()
    if roll < 0.1 and size <= 1024:
        return list(range(1, size))  # one byte at a time
    if roll < 0.2:
        return []
    return sorted(rng.sample(range(1, size), min(size - 1, rng.randint(1, 8))))


def pieces(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


# -- running one input ---------------------------------------------------------------------------


class Mismatch(AssertionError):
    """Two splits of one input gave different results."""


def run_sse(data: bytes, chunks: list[bytes]) -> object:
    """Events, pending bytes and the raw round trip of one split (keep_raw and not)."""
    plain = SSEDecoder()
    raw = SSEDecoder(keep_raw=True)
    events: list[tuple[str, str, str | None, int | None]] = []
    raw_events = []
    for chunk in chunks:
        events += [(e.event, e.data, e.id, e.retry) for e in plain.feed(chunk)]
        raw_events += raw.feed(chunk)
    pending = plain.pending
    round_trip = b"".join(e.raw for e in raw_events) + raw.pending_raw
    if round_trip != data:
        raise Mismatch("keep_raw: the events' raw bytes and pending_raw are not the bytes fed")
    dispatched = [(e.event, e.data, e.id, e.retry) for e in raw_events if e.dispatch]
    if dispatched != events:
        raise Mismatch("keep_raw mode dispatched other events than plain mode")
    plain.close()
    raw.close()
    return events, pending


def run_eventstream(data: bytes, chunks: list[bytes]) -> object:
    """Messages of one split, or the fact that it failed (EventStreamError)."""
    decoder = EventStreamDecoder()
    messages = []
    try:
        for chunk in chunks:
            messages += [(m.headers, m.payload) for m in decoder.feed(chunk)]
        decoder.close()
    except EventStreamError:
        return "error"
    return messages


@dataclass
class Decoder:
    name: str
    make_input: Callable[[random.Random], bytes]
    run: Callable[[bytes, list[bytes]], object]


DECODERS = {
    "sse": Decoder("sse", _sse_input, run_sse),
    "eventstream": Decoder("eventstream", _eventstream_input, run_eventstream),
}


@dataclass
class Report:
    inputs: int = 0
    bytes: int = 0
    failures: list[str] = field(default_factory=list)
    failed: int = 0


def fuzz(decoder: Decoder, n: int, seed: int) -> Report:
    rng = random.Random(seed)
    report = Report()
    for index in range(n):
        data = make_input(rng, decoder.make_input)
        report.inputs += 1
        report.bytes += len(data)
        try:
            whole = decoder.run(data, [data] if data else [])
            split = decoder.run(data, pieces(data, split_points(rng, len(data))))
            if split != whole:
                raise Mismatch("a split of the input gave another result than the whole")
        except Exception as exc:
            report.failed += 1
            if len(report.failures) < MAX_SHOWN_FAILURES:
                where = "".join(traceback.format_exception(exc, limit=-3)).rstrip()
                report.failures.append(
                    f"{decoder.name} input #{index} (seed {seed}), {len(data)} bytes: "
                    f"{data[:256].hex()}{'…' if len(data) > 256 else ''}\n{where}"
                )
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="inputs per decoder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--decoder", choices=("sse", "eventstream", "both"), default="both")
    args = parser.parse_args(argv)
    names = ("sse", "eventstream") if args.decoder == "both" else (args.decoder,)
    status = 0
    for name in names:
        started = time.perf_counter()
        report = fuzz(DECODERS[name], args.n, args.seed)
        seconds = time.perf_counter() - started
        print(
            f"{name}: {report.inputs:,} inputs, {report.bytes / 1e6:.1f} MB, "
            f"{report.failed} failed, {report.inputs / seconds:,.0f} inputs/s"
        )
        for failure in report.failures:
            print(failure, file=sys.stderr)
        if report.failed:
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
