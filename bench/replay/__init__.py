"""Replay of captured dumps through a relay (``python -m bench.replay DIR``).

Reads a dump directory (this relay's, or the Coder AI Gateway's without the
sidecar), serves the recorded responses from a local upstream with their
recorded chunking and pace, sends the recorded requests through a relay, and
checks that every response is byte-identical and that the recorded usage
matches the streams. See docs/dumps-and-replay.md.
"""

from bench.replay.cases import LoadedDumps, ReplayCase, load_dumps, recorded_facts
from bench.replay.client import Target, replay_cases
from bench.replay.run import ReplayOptions, ReplayReport, run_replay
from bench.replay.upstream import CASE_HEADER, ReplayUpstream

__all__ = [
    "CASE_HEADER",
    "LoadedDumps",
    "ReplayCase",
    "ReplayOptions",
    "ReplayReport",
    "ReplayUpstream",
    "Target",
    "load_dumps",
    "recorded_facts",
    "replay_cases",
    "run_replay",
]
