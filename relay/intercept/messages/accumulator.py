"""Facts of one Anthropic Messages response, from its stream events or its JSON body.

Sans-io: feed it the ``SSEEvent``s the decoder produced from the bytes the
relay forwarded, or the blocking JSON body, and read ``facts``. It never
raises on what the provider sent: an event of an unknown type, a delta or
block type it does not know, or an event whose JSON is broken is skipped,
and accounting of the rest goes on.

Usage: ``message_start`` carries the first usage object; every
``message_delta`` carries cumulative figures (later values replace earlier
ones, field by field; null or absent fields keep the earlier value).
"""

from __future__ import annotations

from typing import Any

import msgspec

from relay.facts import Facts, ToolCall, Usage, response_parse_error
from relay.streams.sse import SSEEvent
from relay.wire.anthropic import (
    BlockDeltaEvent,
    BlockStartEvent,
    ContentBlock,
    ErrorEvent,
    MessageDeltaEvent,
    MessageResponse,
    MessageStartEvent,
)
from relay.wire.common import get_int

__all__ = ["MessagesAccumulator", "anthropic_usage"]

_MESSAGE_START = msgspec.json.Decoder(MessageStartEvent)
_BLOCK_START = msgspec.json.Decoder(BlockStartEvent)
_BLOCK_DELTA = msgspec.json.Decoder(BlockDeltaEvent)
_MESSAGE_DELTA = msgspec.json.Decoder(MessageDeltaEvent)
_ERROR = msgspec.json.Decoder(ErrorEvent)
_RESPONSE = msgspec.json.Decoder(MessageResponse)
_CONTENT_BLOCK = msgspec.json.Decoder(ContentBlock)


class _TypeProbe(msgspec.Struct):
    type: Any = None


_TYPE_PROBE = msgspec.json.Decoder(_TypeProbe)

# Deltas the accumulator has no use for, recognised without decoding. Each
# marker has a quote preceded by a letter, which inside a JSON string would be
# escaped, so it can only match the JSON structure itself. When a provider
# formats its JSON otherwise the marker misses and the event is decoded: slower,
# never wrong.
_SKIPPED_DELTAS = (
    '"delta":{"type":"text_delta"',
    '"delta":{"type":"signature_delta"',
    '"delta":{"type":"citations_delta"',
)
_SKIPPED_DELTAS_BYTES = tuple(marker.encode() for marker in _SKIPPED_DELTAS)
_TOOL_BLOCK_TYPES = frozenset({"tool_use", "server_tool_use", "mcp_tool_use"})


class _ToolBuilder:
    __slots__ = ("fragments", "id", "index", "name", "start_input")

    def __init__(self, block: ContentBlock, index: int) -> None:
        self.id = block.id or ""
        self.name = block.name or ""
        self.index = index
        self.start_input = bytes(block.input).decode() if block.input else ""
        self.fragments: list[str] = []

    def tool_call(self) -> ToolCall:
        # Streams start a tool_use block with input {} and send the real input as
        # input_json_delta fragments; a tool without input may send none (or "").
        arguments = "".join(self.fragments) or self.start_input or "{}"
        return ToolCall(id=self.id, name=self.name, arguments=arguments, index=self.index)


def anthropic_usage(raw: dict[str, Any]) -> Usage:
    """Normalise an Anthropic usage object (input_tokens already excludes cache reads/writes)."""
    extra: dict[str, int] = {}
    for key, path in (
        ("cache_creation_5m", ("cache_creation", "ephemeral_5m_input_tokens")),
        ("cache_creation_1h", ("cache_creation", "ephemeral_1h_input_tokens")),
        ("web_search_requests", ("server_tool_use", "web_search_requests")),
        ("web_fetch_requests", ("server_tool_use", "web_fetch_requests")),
        ("reasoning", ("output_tokens_details", "thinking_tokens")),
    ):
        value = get_int(raw, *path)
        if value:
            extra[key] = value
    return Usage(
        input_tokens=get_int(raw, "input_tokens") or 0,
        output_tokens=get_int(raw, "output_tokens") or 0,
        cache_read_tokens=get_int(raw, "cache_read_input_tokens") or 0,
        cache_write_tokens=get_int(raw, "cache_creation_input_tokens") or 0,
        extra=extra,
        raw=dict(raw),  # a copy: later events keep merging into the accumulator's own
    )


class MessagesAccumulator:
    """Accumulates usage, tool calls, thinking, ids, stop reason and errors of one response."""

    def __init__(self) -> None:
        self._facts = Facts()
        self._usage: dict[str, Any] | None = None
        # By content block index, in the order the blocks started.
        self._tools: dict[int, _ToolBuilder] = {}
        self._thinking: dict[int, list[str]] = {}
        self._handlers = {
            "message_start": self._on_message_start,
            "content_block_start": self._on_block_start,
            "content_block_delta": self._on_block_delta,
            "message_delta": self._on_message_delta,
            "error": self._on_error,
        }

    @property
    def facts(self) -> Facts:
        """What has been learned so far (complete once the stream or body has been fed)."""
        facts = self._facts
        facts.usage = anthropic_usage(self._usage) if self._usage is not None else None
        facts.tool_calls = [tool.tool_call() for tool in self._tools.values()]
        facts.thoughts = [text for parts in self._thinking.values() if (text := "".join(parts))]
        return facts

    def feed(self, event: SSEEvent) -> None:
        """Account for one stream event."""
        if not event.dispatch:
            return
        name = event.event
        data = event.data
        if name == "content_block_delta":
            # The hot path: most deltas are text, which carries nothing to account.
            for marker in _SKIPPED_DELTAS:
                if marker in data:
                    return
            self._on_block_delta(data)
        elif name == "message":  # no "event:" line: go by the payload's own type
            self.feed_payload(data)
        else:
            handler = self._handlers.get(name)
            if handler is not None:
                handler(data)

    def feed_payload(self, data: str | bytes) -> None:
        """Account for one event given only its JSON payload (its ``type`` names the event).

        For streams that carry the events without SSE framing (Bedrock).
        """
        # Only a content_block_delta has these markers.
        if isinstance(data, str):
            if any(marker in data for marker in _SKIPPED_DELTAS):
                return
        elif any(marker in data for marker in _SKIPPED_DELTAS_BYTES):
            return
        try:
            name = _TYPE_PROBE.decode(data).type
        except msgspec.DecodeError:
            return
        handler = self._handlers.get(name) if isinstance(name, str) else None
        if handler is not None:
            handler(data)

    def feed_response(self, body: bytes) -> None:
        """Account for a blocking response: a message, or an error body."""
        try:
            response = _RESPONSE.decode(body)
        except msgspec.DecodeError as exc:
            response_parse_error(self._facts, exc)
            return
        facts = self._facts
        if response.error is not None or response.type == "error":
            self._set_error(response.error)
        if isinstance(response.id, str):
            facts.response_id = response.id
        if isinstance(response.model, str):
            facts.model = response.model
        if isinstance(response.stop_reason, str):
            facts.stop_reason = response.stop_reason
        if response.usage is not None:
            self._usage = response.usage
        for index, raw_block in enumerate(response.content or ()):
            try:
                block = _CONTENT_BLOCK.decode(raw_block)
            except msgspec.DecodeError:
                continue
            self._start_block(index, block)

    # --- events ------------------------------------------------------------

    def _on_message_start(self, data: str | bytes) -> None:
        try:
            message = _MESSAGE_START.decode(data).message
        except msgspec.DecodeError:
            return
        facts = self._facts
        if message.id is not None:
            facts.response_id = message.id
        if message.model is not None:
            facts.model = message.model
        if message.stop_reason is not None:
            facts.stop_reason = message.stop_reason
        if message.usage is not None:
            self._merge_usage(message.usage)

    def _on_block_start(self, data: str | bytes) -> None:
        try:
            start = _BLOCK_START.decode(data)
        except msgspec.DecodeError:
            return
        self._start_block(start.index, start.content_block)

    def _start_block(self, index: int, block: ContentBlock) -> None:
        if block.type in _TOOL_BLOCK_TYPES:
            self._tools[index] = _ToolBuilder(block, index)
        elif block.type == "thinking":
            self._thinking[index] = [block.thinking or ""]

    def _on_block_delta(self, data: str | bytes) -> None:
        try:
            event = _BLOCK_DELTA.decode(data)
        except msgspec.DecodeError:
            return
        delta = event.delta
        if delta.type == "input_json_delta":
            tool = self._tools.get(event.index)
            if tool is not None and delta.partial_json:
                tool.fragments.append(delta.partial_json)
        elif delta.type == "thinking_delta":
            parts = self._thinking.get(event.index)
            if parts is not None and delta.thinking:
                parts.append(delta.thinking)

    def _on_message_delta(self, data: str | bytes) -> None:
        try:
            event = _MESSAGE_DELTA.decode(data)
        except msgspec.DecodeError:
            return
        if event.delta is not None and event.delta.stop_reason is not None:
            self._facts.stop_reason = event.delta.stop_reason
        if event.usage is not None:
            self._merge_usage(event.usage)

    def _on_error(self, data: str | bytes) -> None:
        try:
            event = _ERROR.decode(data)
        except msgspec.DecodeError:
            return
        self._set_error(event.error)

    # --- helpers -----------------------------------------------------------

    def _merge_usage(self, usage: dict[str, Any]) -> None:
        if self._usage is None:
            self._usage = {}
        merged = self._usage
        for key, value in usage.items():
            if value is not None:
                merged[key] = value

    def _set_error(self, error: Any) -> None:
        type_ = getattr(error, "type", None)
        message = getattr(error, "message", None)
        self._facts.error_type = type_ if isinstance(type_, str) else "error"
        self._facts.error_message = message if isinstance(message, str) else None
