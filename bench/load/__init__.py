"""The load harness: ``python -m bench.load`` (``just bench``); see docs/benchmarks.md."""
