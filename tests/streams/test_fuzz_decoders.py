"""The decoder fuzz benchmark (bench/fuzz_decoders.py) at a small size.

The full run (1M inputs per decoder) is ``python -m bench.fuzz_decoders``.
"""

from __future__ import annotations

import random

from bench.fuzz_decoders import DECODERS, Decoder, fuzz, main
from relay.streams.sse import SSEDecoder


def test_two_thousand_random_inputs_per_decoder(capsys):
    assert main(["--n", "2000", "--seed", "1"]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "sse: 2,000 inputs" in out and "eventstream: 2,000 inputs" in out


def test_the_fuzzer_reports_a_decoder_that_raises():
    def broken(data: bytes, chunks: list[bytes]) -> object:
        if b"\n" in data:
            raise KeyError("a bug")
        return DECODERS["sse"].run(data, chunks)

    report = fuzz(Decoder("broken", DECODERS["sse"].make_input, broken), 200, 0)
    assert report.failed > 0 and "KeyError" in report.failures[0]
    # So does one whose result depends on where the input was split.
    rng = random.Random(0)
    report = fuzz(
        Decoder("split", DECODERS["sse"].make_input, lambda d, c: len(c) + rng.random()), 20, 0
    )
    assert report.failed == 20


def test_a_retry_of_thousands_of_digits_is_ignored():
    """Found by the fuzzer: int() refuses more than 4,300 digits (ValueError)."""
    decoder = SSEDecoder()
    events = decoder.feed(b"retry: " + b"9" * 5000 + b"\ndata: x\n\nretry: 1500\ndata: y\n\n")
    assert [(e.data, e.retry) for e in events] == [("x", None), ("y", 1500)]
