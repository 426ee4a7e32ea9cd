"""What an interception learned from the upstream response.

Accumulators (one per API, sans-io) fill a ``Facts``; the interception shell
turns it into recorder events. Nothing here knows about HTTP or SQL.

A leaf module: ``relay.intercept`` fills these, ``relay.record`` and
``relay.metrics`` read them, and none of those needs the others for it.
"""

from __future__ import annotations

import msgspec


class Usage(msgspec.Struct, kw_only=True):
    """Token counts of one upstream response, as the provider reported them.

    ``input_tokens`` is normalised to mean *input tokens not read from cache*:
    Anthropic already reports it so; for OpenAI (whose prompt_tokens include
    cached tokens) the accumulator subtracts the cached count. ``raw`` keeps
    the provider's own usage object untouched.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    # Extra token types: cache_creation_5m/1h, web_search_requests, reasoning,
    # audio, accepted_prediction, rejected_prediction, ...
    extra: dict[str, int] = msgspec.field(default_factory=dict)
    raw: dict[str, object] = msgspec.field(default_factory=dict)


class ToolCall(msgspec.Struct, kw_only=True):
    """A tool call the model made, accumulated across stream fragments."""

    id: str
    name: str
    arguments: str = ""  # the full input, as the JSON text the model produced
    index: int = 0


class InjectedToolCall(msgspec.Struct, kw_only=True):
    """A call of an injected (MCP) tool that the relay ran itself."""

    id: str
    name: str  # the injected name the model called (bmcp_<server>_<tool>)
    arguments: str  # the JSON text the model produced
    server: str  # the configured MCP server's name
    server_url: str
    error: str | None = None  # why the call failed (the model was told)


class RoundUsage(msgspec.Struct, kw_only=True):
    """The usage of one inner upstream request of a tool loop (all but the last)."""

    response_id: str | None
    usage: Usage


class Facts(msgspec.Struct, kw_only=True):
    response_id: str | None = None
    model: str | None = None  # the model the provider says answered
    usage: Usage | None = None
    tool_calls: list[ToolCall] = msgspec.field(default_factory=list)
    thoughts: list[str] = msgspec.field(default_factory=list)
    stop_reason: str | None = None
    error_type: str | None = None
    error_message: str | None = None
    # MCP tool injection: the calls the relay ran, and the usage of each inner
    # request before the last (whose usage is ``usage``).
    injected_calls: list[InjectedToolCall] = msgspec.field(default_factory=list)
    round_usages: list[RoundUsage] = msgspec.field(default_factory=list)


#: ``Facts.error_type`` of a successful (2xx) blocking answer whose body is not
#: the JSON the API defines (cut short, or another format): the client got it
#: as it came, but the exchange did not complete and its usage is unknown.
RESPONSE_PARSE_ERROR = "response_parse_error"


def response_parse_error(facts: Facts, exc: Exception) -> None:
    """Mark ``facts`` as learned from a blocking body that could not be parsed."""
    facts.error_type = RESPONSE_PARSE_ERROR
    facts.error_message = f"the upstream response body could not be parsed: {exc}"[:2000]
