"""Facts of one OpenAI Responses response, from its stream events or its JSON body.

Sans-io, and never raises on what the provider sent: an event of an unknown
type or with broken JSON is skipped and accounting goes on.

The response id comes from ``response.created``; usage and the final output
items from the terminal event (``response.completed``, ``response.incomplete``
or ``response.failed``). Tool calls (``function_call``, ``custom_tool_call``,
``mcp_call`` items) are also followed through their own events, so a stream
cut before its end still reports the calls begun so far. Reasoning summaries
are kept per (item, summary part); a later full text (``.done`` or the item
itself) replaces the deltas gathered for that part.
"""

from __future__ import annotations

from typing import Any

import msgspec

from relay.facts import Facts, ToolCall, Usage, response_parse_error
from relay.streams.sse import SSEEvent
from relay.wire.common import get_int, openai_error_fields
from relay.wire.openai_responses import (
    ArgumentsDeltaEvent,
    ArgumentsDoneEvent,
    ErrorEvent,
    OutputItem,
    OutputItemEvent,
    ResponseEvent,
    ResponseObject,
    SummaryTextDeltaEvent,
    SummaryTextDoneEvent,
)

__all__ = ["ResponsesAccumulator", "responses_usage"]

_RESPONSE_EVENT = msgspec.json.Decoder(ResponseEvent)
_RESPONSE = msgspec.json.Decoder(ResponseObject)
_ITEM_EVENT = msgspec.json.Decoder(OutputItemEvent)
_ITEM = msgspec.json.Decoder(OutputItem)
_ARGUMENTS_DELTA = msgspec.json.Decoder(ArgumentsDeltaEvent)
_ARGUMENTS_DONE = msgspec.json.Decoder(ArgumentsDoneEvent)
_SUMMARY_DELTA = msgspec.json.Decoder(SummaryTextDeltaEvent)
_SUMMARY_DONE = msgspec.json.Decoder(SummaryTextDoneEvent)
_ERROR = msgspec.json.Decoder(ErrorEvent)


class _TypeProbe(msgspec.Struct):
    type: Any = None


_TYPE_PROBE = msgspec.json.Decoder(_TypeProbe)

_TOOL_ITEM_TYPES = frozenset({"function_call", "custom_tool_call", "mcp_call"})
_TERMINAL_STATUSES = frozenset({"completed", "incomplete", "failed", "cancelled"})


class _ToolBuilder:
    __slots__ = ("call_id", "final", "fragments", "index", "item_id", "name")

    def __init__(self, item_id: str | None, index: int) -> None:
        self.item_id = item_id
        self.call_id: str | None = None
        self.name: str | None = None
        self.index = index
        self.fragments: list[str] = []
        self.final: str | None = None  # the full text, once an event gave it

    def tool_call(self) -> ToolCall:
        arguments = self.final if self.final is not None else "".join(self.fragments)
        return ToolCall(
            id=self.call_id or self.item_id or "",
            name=self.name or "",
            arguments=arguments,
            index=self.index,
        )


def responses_usage(raw: dict[str, Any]) -> Usage:
    """Normalise a Responses usage object (cached tokens are inside input_tokens: taken out)."""
    total_input = get_int(raw, "input_tokens") or 0
    cached = get_int(raw, "input_tokens_details", "cached_tokens") or 0
    cache_write = get_int(raw, "input_tokens_details", "cache_write_tokens") or 0
    extra: dict[str, int] = {}
    if cached:
        extra["cached"] = cached
    reasoning = get_int(raw, "output_tokens_details", "reasoning_tokens")
    if reasoning:
        extra["reasoning"] = reasoning
    return Usage(
        input_tokens=max(total_input - cached - cache_write, 0),
        output_tokens=get_int(raw, "output_tokens") or 0,
        cache_read_tokens=cached,
        cache_write_tokens=cache_write,
        extra=extra,
        raw=raw,
    )


class ResponsesAccumulator:
    """Accumulates usage, tool calls, reasoning summaries, ids, status and errors."""

    def __init__(self) -> None:
        self._facts = Facts()
        self._usage: dict[str, Any] | None = None
        self._tools: dict[str, _ToolBuilder] = {}  # by output item id, in stream order
        self._summaries: dict[tuple[str | None, int], list[str]] = {}
        self._handlers = {
            "response.created": self._on_response,
            "response.in_progress": self._on_response,
            "response.completed": self._on_response,
            "response.incomplete": self._on_response,
            "response.failed": self._on_response,
            "response.output_item.added": self._on_item,
            "response.output_item.done": self._on_item,
            "response.function_call_arguments.delta": self._on_arguments_delta,
            "response.custom_tool_call_input.delta": self._on_arguments_delta,
            "response.mcp_call_arguments.delta": self._on_arguments_delta,
            "response.function_call_arguments.done": self._on_arguments_done,
            "response.custom_tool_call_input.done": self._on_arguments_done,
            "response.mcp_call_arguments.done": self._on_arguments_done,
            "response.reasoning_summary_text.delta": self._on_summary_delta,
            "response.reasoning_summary_text.done": self._on_summary_done,
            "error": self._on_error,
        }

    @property
    def facts(self) -> Facts:
        """What has been learned so far (complete once the stream or body has been fed)."""
        facts = self._facts
        facts.usage = responses_usage(self._usage) if self._usage is not None else None
        facts.tool_calls = [tool.tool_call() for tool in self._tools.values() if tool.name]
        facts.thoughts = [text for parts in self._summaries.values() if (text := "".join(parts))]
        return facts

    def feed(self, event: SSEEvent) -> None:
        """Account for one stream event."""
        if not event.dispatch:
            return
        name = event.event
        if name == "message":  # no "event:" line: go by the payload's own type
            try:
                probed = _TYPE_PROBE.decode(event.data).type
            except msgspec.DecodeError:
                return
            if not isinstance(probed, str):
                return
            name = probed
        # output_text deltas, the bulk of a stream, have no handler: dropped here undecoded.
        handler = self._handlers.get(name)
        if handler is not None:
            handler(event.data)

    def feed_response(self, body: bytes) -> None:
        """Account for a blocking response: the response object, or an error body."""
        try:
            response = _RESPONSE.decode(body)
        except msgspec.DecodeError as exc:
            response_parse_error(self._facts, exc)
            return
        self._apply_response(response)

    # --- events ------------------------------------------------------------

    def _on_response(self, data: str) -> None:
        try:
            response = _RESPONSE_EVENT.decode(data).response
        except msgspec.DecodeError:
            return
        self._apply_response(response)

    def _on_item(self, data: str) -> None:
        try:
            event = _ITEM_EVENT.decode(data)
        except msgspec.DecodeError:
            return
        self._apply_item(event.item, event.output_index)

    def _on_arguments_delta(self, data: str) -> None:
        try:
            event = _ARGUMENTS_DELTA.decode(data)
        except msgspec.DecodeError:
            return
        tool = self._tools.get(event.item_id or "")
        if tool is not None and event.delta:
            tool.fragments.append(event.delta)

    def _on_arguments_done(self, data: str) -> None:
        try:
            event = _ARGUMENTS_DONE.decode(data)
        except msgspec.DecodeError:
            return
        tool = self._tools.get(event.item_id or "")
        text = event.arguments if event.arguments is not None else event.input
        if tool is not None and text is not None:
            tool.final = text

    def _on_summary_delta(self, data: str) -> None:
        try:
            event = _SUMMARY_DELTA.decode(data)
        except msgspec.DecodeError:
            return
        if event.delta:
            self._summaries.setdefault((event.item_id, event.summary_index), []).append(event.delta)

    def _on_summary_done(self, data: str) -> None:
        try:
            event = _SUMMARY_DONE.decode(data)
        except msgspec.DecodeError:
            return
        if event.text is not None:
            self._summaries[(event.item_id, event.summary_index)] = [event.text]

    def _on_error(self, data: str) -> None:
        try:
            event = _ERROR.decode(data)
        except msgspec.DecodeError:
            return
        if event.error is not None:
            self._set_error(event.error)
        else:
            self._set_error({"code": event.code, "message": event.message})

    # --- helpers -----------------------------------------------------------

    def _apply_response(self, response: ResponseObject) -> None:
        facts = self._facts
        if isinstance(response.id, str):
            facts.response_id = response.id
        if isinstance(response.model, str):
            facts.model = response.model
        if isinstance(response.usage, dict):
            self._usage = response.usage
        if response.error is not None:
            self._set_error(response.error)
        status = response.status
        if status in _TERMINAL_STATUSES:
            facts.stop_reason = status
            if status == "incomplete":
                details = response.incomplete_details
                reason = details.get("reason") if isinstance(details, dict) else None
                facts.error_type = "incomplete"
                facts.error_message = reason if isinstance(reason, str) else None
                if facts.error_message:
                    facts.stop_reason = facts.error_message
        for index, raw_item in enumerate(response.output or ()):
            try:
                item = _ITEM.decode(raw_item)
            except msgspec.DecodeError:
                continue
            self._apply_item(item, index)

    def _apply_item(self, item: OutputItem, index: int) -> None:
        if item.type in _TOOL_ITEM_TYPES:
            key = item.id or item.call_id or f"#{index}"
            tool = self._tools.get(key)
            if tool is None:
                tool = self._tools[key] = _ToolBuilder(item.id, index)
            if item.call_id:
                tool.call_id = item.call_id
            if item.name:
                tool.name = item.name
            # output_item.added carries "" here; done and the final response the full text.
            text = item.arguments if item.arguments is not None else item.input
            if text:
                tool.final = text
        elif item.type == "reasoning" and item.summary:
            for position, part in enumerate(item.summary):
                if isinstance(part.text, str) and part.text:
                    self._summaries[(item.id, position)] = [part.text]

    def _set_error(self, error: Any) -> None:
        type_, message = openai_error_fields(error)
        if type_ is not None:
            self._facts.error_type = type_
            self._facts.error_message = message
