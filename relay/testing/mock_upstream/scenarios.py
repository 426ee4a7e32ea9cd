"""What the mock upstream says, independent of any wire format.

Every scenario has fixed content and KNOWN usage figures, so a test can
assert exactly what the relay recorded. The API modules (``anthropic``,
``openai_chat``, ``openai_responses``) turn a scenario into that provider's
bytes; nothing here does I/O.

Per-request knobs arrive as headers (``x-mock-*``, see ``docs/mock-upstream.md``)
and are parsed into ``RequestKnobs``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import msgspec

SCENARIOS = (
    "text",
    "long",
    "tool",
    "parallel-tools",
    "thinking",
    "error-status",
    "error-midstream",
    "drop",
    "slow-first-token",
)
MODEL_IDS = tuple(f"mock-{name}" for name in SCENARIOS)
CHUNKINGS = ("event", "random", "coalesce", "bytes1")
Chunking = Literal["event", "random", "coalesce", "bytes1"]

# How a stream ends: the terminating chunk, a FIN without it, or a RST.
Ending = Literal["complete", "drop", "reset"]

MODEL_PREFIX = "mock-"
DEFAULT_LONG_EVENTS = 100
DEFAULT_ERROR_STATUS = 500
DEFAULT_SLOW_FIRST_TOKEN_MS = 500
# error-midstream and drop cut the stream after this many content deltas.
MIDSTREAM_DELTAS = 2
RETRY_AFTER_SECONDS = 1

# Every id in a prepared response carries this fixed-length placeholder; the
# server swaps in a fresh random token of the same length per request, so the
# pre-built chunk framing (which encodes lengths) stays valid.
ID_PLACEHOLDER = "~" * 24
CREATED_AT = 1_767_225_600  # 2026-01-01T00:00:00Z, fixed so prepared bytes are stable

# Non-ASCII on purpose: random chunking must split inside multi-byte characters.
TEXT_DELTAS = ("Héllo", " —", " 你好", " 🚀", "! The mock", " upstream", " is", " streaming.")
TEXT = "".join(TEXT_DELTAS)

THINKING_DELTAS = ("Let me think", " about this — ", "考虑一下.", " The answer is 42.")
THINKING = "".join(THINKING_DELTAS)
THINKING_SIGNATURE = "RXFNb2NrU2lnbmF0dXJlRm9yVGhpbmtpbmdCbG9ja0FBQUFBQUFBQUE="
THINKING_ANSWER_DELTAS = ("The answer", " is 42", " ✓")
THINKING_ANSWER = "".join(THINKING_ANSWER_DELTAS)
# OpenAI Responses shows a reasoning *summary*, not the raw thoughts.
REASONING_SUMMARY_DELTAS = ("**Weighing", " the question**", " — it is 42.")
REASONING_SUMMARY = "".join(REASONING_SUMMARY_DELTAS)

TOOL_PREAMBLE = "I'll check the weather."  # Anthropic only: a text block before tool_use


class ToolCallSpec(msgspec.Struct, frozen=True):
    """One tool call; ``fragments`` are the partial-JSON pieces as streamed."""

    name: str
    fragments: tuple[str, ...]

    @property
    def arguments(self) -> str:
        return "".join(self.fragments)

    @property
    def input(self) -> dict[str, object]:
        decoded: dict[str, object] = msgspec.json.decode(self.arguments)
        return decoded


TOOL_CALL = ToolCallSpec(
    "get_weather",
    ('{"loc', 'ation": "Pa', "ris, Fr", 'ance", "u', 'nit": "cel', 'sius"}'),
)
PARALLEL_TOOL_CALLS = (
    ToolCallSpec("get_weather", ('{"location"', ': "Zür', 'ich"}')),
    ToolCallSpec("get_time", ('{"tz": ', '"Asia/', 'Tokyo"', "}")),
    ToolCallSpec("search_docs", ('{"query": "h', "11 keep", '-alive", "limit": 3}')),
)


class ScenarioUsage(msgspec.Struct, frozen=True, kw_only=True):
    """Token counts a scenario reports, in one provider-neutral shape.

    ``input_tokens`` excludes cache reads and writes (Anthropic's meaning).
    OpenAI has no cache writes on the wire; its ``prompt_tokens`` /
    ``input_tokens`` are ``input_tokens + cache_read_tokens`` with
    ``cached_tokens = cache_read_tokens``. ``reasoning_tokens`` appear only on
    OpenAI's wire (Anthropic counts thinking inside ``output_tokens``).
    """

    input_tokens: int
    output_tokens: int
    cache_read_tokens: int = 0
    cache_write_5m_tokens: int = 0
    cache_write_1h_tokens: int = 0
    reasoning_tokens: int = 0

    @property
    def cache_write_tokens(self) -> int:
        return self.cache_write_5m_tokens + self.cache_write_1h_tokens

    @property
    def openai_prompt_tokens(self) -> int:
        return self.input_tokens + self.cache_read_tokens

    def anthropic(self, *, output_tokens: int | None = None) -> dict[str, object]:
        return {
            "input_tokens": self.input_tokens,
            "cache_creation_input_tokens": self.cache_write_tokens,
            "cache_read_input_tokens": self.cache_read_tokens,
            "cache_creation": {
                "ephemeral_5m_input_tokens": self.cache_write_5m_tokens,
                "ephemeral_1h_input_tokens": self.cache_write_1h_tokens,
            },
            "output_tokens": self.output_tokens if output_tokens is None else output_tokens,
            "service_tier": "standard",
        }

    def openai_chat(self) -> dict[str, object]:
        return {
            "prompt_tokens": self.openai_prompt_tokens,
            "completion_tokens": self.output_tokens,
            "total_tokens": self.openai_prompt_tokens + self.output_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cache_read_tokens, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": self.reasoning_tokens,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }

    def openai_responses(self) -> dict[str, object]:
        return {
            "input_tokens": self.openai_prompt_tokens,
            "input_tokens_details": {"cached_tokens": self.cache_read_tokens},
            "output_tokens": self.output_tokens,
            "output_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
            "total_tokens": self.openai_prompt_tokens + self.output_tokens,
        }


# Distinct figures per scenario, so a mix-up between scenarios cannot pass a test.
USAGE: dict[str, ScenarioUsage] = {
    "text": ScenarioUsage(
        input_tokens=25,
        output_tokens=12,
        cache_read_tokens=100,
        cache_write_5m_tokens=30,
        cache_write_1h_tokens=10,
    ),
    "tool": ScenarioUsage(
        input_tokens=410, output_tokens=38, cache_read_tokens=1200, cache_write_5m_tokens=150
    ),
    "parallel-tools": ScenarioUsage(
        input_tokens=520, output_tokens=96, cache_read_tokens=1500, cache_write_1h_tokens=200
    ),
    "thinking": ScenarioUsage(
        input_tokens=60, output_tokens=180, cache_read_tokens=64, reasoning_tokens=128
    ),
    "slow-first-token": ScenarioUsage(
        input_tokens=27, output_tokens=12, cache_read_tokens=300, cache_write_5m_tokens=5
    ),
    # Cut streams: what Anthropic's message_start reported before the cut
    # (output_tokens is message_start's 1). OpenAI reports nothing for them.
    "error-midstream": ScenarioUsage(input_tokens=33, output_tokens=1, cache_read_tokens=7),
    "drop": ScenarioUsage(input_tokens=35, output_tokens=1, cache_read_tokens=9),
}
LONG_INPUT_TOKENS = 31
LONG_CACHE_READ_TOKENS = 2048


def usage_for(scenario: str, events: int = DEFAULT_LONG_EVENTS) -> ScenarioUsage:
    """The usage a scenario reports; ``long`` emits one output token per delta event."""
    if scenario == "long":
        return ScenarioUsage(
            input_tokens=LONG_INPUT_TOKENS,
            output_tokens=events,
            cache_read_tokens=LONG_CACHE_READ_TOKENS,
        )
    if scenario == "error-status":
        raise KeyError("error-status answers with an error body and reports no usage")
    return USAGE[scenario]


def long_deltas(events: int) -> list[str]:
    """Text deltas of the ``long`` scenario: ``events`` pieces, some non-ASCII."""
    return [f"wörd{i} " if i % 7 else f"→{i}✓ " for i in range(events)]


def text_deltas(scenario: str, events: int) -> tuple[str, ...] | list[str]:
    """The answer text deltas of a plain-text scenario (text, long, slow-first-token, cuts)."""
    if scenario == "long":
        return long_deltas(events)
    if scenario in ("error-midstream", "drop"):
        return TEXT_DELTAS[:MIDSTREAM_DELTAS]
    return TEXT_DELTAS


class KnobError(ValueError):
    """A request asked for a scenario or knob the mock does not have."""


class RequestKnobs(msgspec.Struct, kw_only=True):
    """What one request asked of the mock, from its model name and x-mock-* headers."""

    scenario: str = "text"
    events: int = DEFAULT_LONG_EVENTS
    status: int = DEFAULT_ERROR_STATUS
    chunking: Chunking | None = None  # None: the server-wide default
    first_token_s: float = 0.0
    gap_s: float = 0.0
    headers_delay_s: float = 0.0
    # Chat streams with include_usage: the usage on the finish chunk, whose
    # choices are not empty (some OpenAI-compatible servers do this; LiteLLM
    # lost that usage, its issue 36168), instead of a chunk of its own.
    usage_on_finish: bool = False


def _int_header(headers: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = headers.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise KnobError(f"{name} must be an integer, got {raw!r}") from None
    if not low <= value <= high:
        raise KnobError(f"{name} must be within {low}..{high}, got {value}")
    return value


def parse_knobs(model: str | None, headers: Mapping[str, str]) -> RequestKnobs:
    """Pick the scenario (header ``x-mock-scenario`` wins over a ``mock-<name>`` model).

    A model not starting with ``mock-`` (a real model name) gets ``text``.
    ``headers`` maps lower-case names to values.
    """
    scenario = headers.get("x-mock-scenario")
    if scenario is None and model and model.startswith(MODEL_PREFIX):
        scenario = model[len(MODEL_PREFIX) :]
    scenario = scenario or "text"
    if scenario not in SCENARIOS:
        raise KnobError(f"unknown mock scenario {scenario!r}; known: {', '.join(SCENARIOS)}")
    chunking = headers.get("x-mock-chunking")
    if chunking is not None and chunking not in CHUNKINGS:
        raise KnobError(f"unknown x-mock-chunking {chunking!r}; known: {', '.join(CHUNKINGS)}")
    first_token_default = DEFAULT_SLOW_FIRST_TOKEN_MS if scenario == "slow-first-token" else 0
    day_ms = 86_400_000
    return RequestKnobs(
        scenario=scenario,
        events=_int_header(headers, "x-mock-events", DEFAULT_LONG_EVENTS, 1, 10_000_000),
        status=_int_header(headers, "x-mock-status", DEFAULT_ERROR_STATUS, 400, 599),
        chunking=chunking,  # type: ignore[arg-type]  # checked against CHUNKINGS above
        first_token_s=_int_header(headers, "x-mock-first-token-ms", first_token_default, 0, day_ms)
        / 1000,
        gap_s=_int_header(headers, "x-mock-gap-ms", 0, 0, day_ms) / 1000,
        headers_delay_s=_int_header(headers, "x-mock-headers-delay-ms", 0, 0, day_ms) / 1000,
        usage_on_finish=headers.get("x-mock-usage-on-finish", "") in ("1", "true"),
    )


class StreamPlan(msgspec.Struct):
    """A stream as a list of SSE events (bytes, ids still placeholders) and how it ends."""

    events: list[bytes]
    ending: Ending = "complete"


def sse(event: str | None, payload: object) -> bytes:
    """One SSE event; ``event`` None gives a data-only event (OpenAI chat)."""
    # Written here, not with relay.streams.sse.encode_event: the memory tests
    # (test_relay_streaming) tell the mock's buffers from the relay's by file.
    data = msgspec.json.encode(payload)
    if event is None:
        return b"data: " + data + b"\n\n"
    return b"event: " + event.encode() + b"\ndata: " + data + b"\n\n"
