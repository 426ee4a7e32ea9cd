"""Throughput of the sans-io stream decoders on realistic streams.

    python -m bench.bench_decoders [--seconds 1.0]

SSE: a 13 KB OpenAI chat stream (31 events) in network-sized chunks, against
the openai SDK's own decoder. AWS event stream: a long Bedrock response
(Anthropic events in ``chunk`` frames) in 16 KB reads, against botocore's
``EventStreamBuffer``. Also shows that feeding one byte at a time stays
linear (time per byte does not grow with the stream's length).
"""

from __future__ import annotations

import argparse
import base64
import json
import random
import time
from collections.abc import Callable

import openai._streaming
from botocore.eventstream import EventStreamBuffer

from relay.streams.eventstream import EventStreamDecoder, encode_message
from relay.streams.sse import SSEDecoder


def openai_chat_stream() -> bytes:
    words = "The relay forwards every chunk as it arrives and counts the tokens it carried".split()
    base = {
        "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
        "object": "chat.completion.chunk",
        "created": 1741570283,
        "model": "gpt-4o-2024-08-06",
        "service_tier": "default",
        "system_fingerprint": "fp_eb9dce56a8",
    }
    chunks = []
    for i in range(30):
        delta = {"content": " ".join(words[i % 8 : i % 8 + 6]) * 4} if i < 29 else {}
        choice = {
            "index": 0,
            "delta": delta,
            "logprobs": None,
            "finish_reason": None if i < 29 else "stop",
        }
        chunks.append({**base, "choices": [choice], "usage": None})
    events = [b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks]
    return b"".join(events) + b"data: [DONE]\n\n"


def bedrock_stream(frames: int) -> bytes:
    headers = {
        ":event-type": "chunk",
        ":content-type": "application/json",
        ":message-type": "event",
    }
    out = []
    for i in range(frames):
        event = {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "text_delta", "text": f"token {i} of a long answer"},
        }
        body = {"bytes": base64.b64encode(json.dumps(event).encode()).decode()}
        out.append(encode_message(headers, json.dumps(body).encode()))
    return b"".join(out)


def split(stream: bytes, low: int, high: int, seed: int = 7) -> list[bytes]:
    rng = random.Random(seed)
    chunks, at = [], 0
    while at < len(stream):
        size = rng.randint(low, high)
        chunks.append(stream[at : at + size])
        at += size
    return chunks


def rate(run: Callable[[], int], seconds: float) -> tuple[float, int]:
    """(runs per second, items per run)."""
    items = run()
    runs, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        run()
        runs += 1
    return runs / elapsed, items


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="time per measurement")
    seconds = parser.parse_args().seconds

    sse = openai_chat_stream()
    sse_chunks = split(sse, 200, 1500)

    def ours_sse(keep_raw: bool) -> Callable[[], int]:
        def run() -> int:
            decoder = SSEDecoder(keep_raw=keep_raw)
            return sum(len(decoder.feed(chunk)) for chunk in sse_chunks)

        return run

    def sdk_sse() -> int:
        return sum(1 for _ in openai._streaming.SSEDecoder().iter_bytes(iter(sse_chunks)))

    print(f"SSE: OpenAI chat stream, {len(sse):,} bytes, {len(sse_chunks)} chunks")
    sdk_runs, _ = rate(sdk_sse, seconds)
    for label, run in [("SSEDecoder", ours_sse(False)), ("SSEDecoder keep_raw", ours_sse(True))]:
        runs, events = rate(run, seconds)
        print(
            f"  {label:<22} {runs * events:>12,.0f} events/s {runs * len(sse) / 1e6:>8.1f} MB/s"
            f"   {runs / sdk_runs:.1f}x the openai SDK decoder"
        )

    stream = bedrock_stream(5000)
    reads = split(stream, 16 * 1024, 16 * 1024)

    def ours_eventstream() -> int:
        decoder = EventStreamDecoder()
        count = sum(len(decoder.feed(read)) for read in reads)
        decoder.close()
        return count

    def botocore_eventstream() -> int:
        buffer, count = EventStreamBuffer(), 0
        for read in reads:
            buffer.add_data(read)
            count += sum(1 for _ in buffer)
        return count

    print(f"AWS event stream: Bedrock stream, {len(stream):,} bytes in 16 KB reads")
    boto_runs, frames = rate(botocore_eventstream, seconds)
    runs, frames = rate(ours_eventstream, seconds)
    print(
        f"  {'EventStreamDecoder':<22} {runs * frames:>12,.0f} frames/s"
        f" {runs * len(stream) / 1e6:>8.1f} MB/s   {runs / boto_runs:.1f}x botocore"
        f" ({boto_runs * frames:,.0f} frames/s)"
    )

    print("Linearity, one byte per feed (time per byte should not grow):")
    for size in (250_000, 1_000_000):
        line = b"data: " + b"x" * size + b"\n\n"
        frame = encode_message({":event-type": "chunk"}, b"x" * size)
        decoders: list[tuple[str, SSEDecoder | EventStreamDecoder, bytes]] = [
            ("SSEDecoder keep_raw", SSEDecoder(keep_raw=True), line),
            ("EventStreamDecoder", EventStreamDecoder(), frame),
        ]
        for label, decoder, data in decoders:
            start = time.perf_counter()
            for i in range(len(data)):
                decoder.feed(data[i : i + 1])
            per_byte = (time.perf_counter() - start) / len(data)
            print(f"  {label:<22} {len(data):>10,} bytes  {per_byte * 1e9:6.0f} ns/byte")


if __name__ == "__main__":
    main()
