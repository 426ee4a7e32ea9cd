"""A mock LLM provider (Anthropic Messages, OpenAI Chat Completions and
Responses) for the relay's tests and load harness. See docs/mock-upstream.md."""

from .records import ConnectionEvent, RecordedRequest, WriteStats
from .scenarios import (
    CHUNKINGS,
    PARALLEL_TOOL_CALLS,
    REASONING_SUMMARY,
    SCENARIOS,
    TEXT,
    THINKING,
    THINKING_ANSWER,
    THINKING_SIGNATURE,
    TOOL_CALL,
    TOOL_PREAMBLE,
    USAGE,
    ScenarioUsage,
    ToolCallSpec,
    long_deltas,
    usage_for,
)
from .server import MockUpstream

__all__ = [
    "CHUNKINGS",
    "PARALLEL_TOOL_CALLS",
    "REASONING_SUMMARY",
    "SCENARIOS",
    "TEXT",
    "THINKING",
    "THINKING_ANSWER",
    "THINKING_SIGNATURE",
    "TOOL_CALL",
    "TOOL_PREAMBLE",
    "USAGE",
    "ConnectionEvent",
    "MockUpstream",
    "RecordedRequest",
    "ScenarioUsage",
    "ToolCallSpec",
    "WriteStats",
    "long_deltas",
    "usage_for",
]
