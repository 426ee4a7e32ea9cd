"""Facts of one OpenAI Chat Completions response, from its stream chunks or its JSON body.

Sans-io, and never raises on what the provider sent: a chunk that is not
JSON, or not shaped as expected, is skipped and accounting goes on.

Tool calls arrive as ``delta.tool_calls`` fragments keyed by ``index``; the
first fragment of an index carries ``id`` and ``function.name`` and the
others only pieces of ``function.arguments``. Some OpenAI-compatible
providers reuse index 0 for every call but give each a new ``id``: a
fragment whose id differs from the one at its index starts a new call.
"""

from __future__ import annotations

from typing import Any

import msgspec

from relay.facts import Facts, ToolCall, Usage, response_parse_error
from relay.streams.sse import SSEEvent
from relay.wire.common import get_int, openai_error_fields
from relay.wire.openai_chat import ChatChunk, ChatCompletion, CompletionChoice

__all__ = ["ChatAccumulator", "chat_usage"]

_CHUNK = msgspec.json.Decoder(ChatChunk)
_COMPLETION = msgspec.json.Decoder(ChatCompletion)
_CHOICE = msgspec.json.Decoder(CompletionChoice)


class _ToolBuilder:
    __slots__ = ("fragments", "id", "index", "name")

    def __init__(self, id_: str | None, index: int) -> None:
        self.id = id_
        self.name: str | None = None
        self.index = index
        self.fragments: list[str] = []

    def tool_call(self) -> ToolCall:
        return ToolCall(
            id=self.id or "",
            name=self.name or "",
            arguments="".join(self.fragments),
            index=self.index,
        )


def chat_usage(raw: dict[str, Any]) -> Usage:
    """Normalise a Chat Completions usage object.

    OpenAI counts cached (and cache-written) tokens inside ``prompt_tokens``;
    they are taken out of ``input_tokens`` so that, as for Anthropic,
    input + cache read + cache write is the whole prompt.
    """
    prompt = get_int(raw, "prompt_tokens") or 0
    cached = get_int(raw, "prompt_tokens_details", "cached_tokens") or 0
    cache_write = get_int(raw, "prompt_tokens_details", "cache_write_tokens") or 0
    extra: dict[str, int] = {}
    for key, path in (
        ("cached", ("prompt_tokens_details", "cached_tokens")),
        ("input_audio", ("prompt_tokens_details", "audio_tokens")),
        ("reasoning", ("completion_tokens_details", "reasoning_tokens")),
        ("output_audio", ("completion_tokens_details", "audio_tokens")),
        ("accepted_prediction", ("completion_tokens_details", "accepted_prediction_tokens")),
        ("rejected_prediction", ("completion_tokens_details", "rejected_prediction_tokens")),
    ):
        value = get_int(raw, *path)
        if value:
            extra[key] = value
    return Usage(
        input_tokens=max(prompt - cached - cache_write, 0),
        output_tokens=get_int(raw, "completion_tokens") or 0,
        cache_read_tokens=cached,
        cache_write_tokens=cache_write,
        extra=extra,
        raw=raw,
    )


class ChatAccumulator:
    """Accumulates usage, tool calls, reasoning, ids, finish reason and errors of one response."""

    def __init__(self) -> None:
        self._facts = Facts()
        self._usage: dict[str, Any] | None = None
        self._tools: list[_ToolBuilder] = []
        self._tool_at: dict[tuple[int, int], _ToolBuilder] = {}  # (choice, index) -> current
        self._reasoning: list[str] = []
        self.done = False  # saw data: [DONE]

    @property
    def facts(self) -> Facts:
        """What has been learned so far (complete once the stream or body has been fed)."""
        facts = self._facts
        facts.usage = chat_usage(self._usage) if self._usage is not None else None
        facts.tool_calls = [tool.tool_call() for tool in self._tools]
        reasoning = "".join(self._reasoning)
        facts.thoughts = [reasoning] if reasoning else []
        return facts

    def feed(self, event: SSEEvent) -> None:
        """Account for one stream event (a chunk, an error payload or ``[DONE]``)."""
        if not event.dispatch:
            return
        data = event.data
        if data.startswith("[DONE]"):
            self.done = True
            return
        try:
            chunk = _CHUNK.decode(data)
        except msgspec.DecodeError:
            return
        facts = self._facts
        if chunk.error is not None:
            self._set_error(chunk.error)
        if facts.response_id is None and chunk.id:
            facts.response_id = chunk.id
        if facts.model is None and chunk.model:
            facts.model = chunk.model
        if isinstance(chunk.usage, dict):
            self._usage = chunk.usage  # the usage chunk; if sent more than once, the last counts
        for choice in chunk.choices or ():
            if choice.finish_reason is not None:
                facts.stop_reason = choice.finish_reason
            delta = choice.delta
            if delta is None:
                continue
            if delta.tool_calls:
                for fragment in delta.tool_calls:
                    self._add_fragment(choice.index, fragment.index, fragment.id, fragment.function)
            reasoning = delta.reasoning_content or delta.reasoning
            if isinstance(reasoning, str) and reasoning:
                self._reasoning.append(reasoning)

    def feed_response(self, body: bytes) -> None:
        """Account for a blocking response: a ``chat.completion`` object, or an error body."""
        try:
            completion = _COMPLETION.decode(body)
        except msgspec.DecodeError as exc:
            response_parse_error(self._facts, exc)
            return
        facts = self._facts
        if completion.error is not None:
            self._set_error(completion.error)
        if isinstance(completion.id, str):
            facts.response_id = completion.id
        if isinstance(completion.model, str):
            facts.model = completion.model
        if isinstance(completion.usage, dict):
            self._usage = completion.usage
        for raw_choice in completion.choices or ():
            try:
                choice = _CHOICE.decode(raw_choice)
            except msgspec.DecodeError:
                continue
            if isinstance(choice.finish_reason, str):
                facts.stop_reason = choice.finish_reason
            message = choice.message
            if message is None:
                continue
            for position, call in enumerate(message.tool_calls or ()):
                tool = _ToolBuilder(call.id if isinstance(call.id, str) else None, position)
                function = call.function
                if function is not None:
                    tool.name = function.name if isinstance(function.name, str) else None
                    if isinstance(function.arguments, str):
                        tool.fragments.append(function.arguments)
                self._tools.append(tool)
            reasoning = message.reasoning_content or message.reasoning
            if isinstance(reasoning, str) and reasoning:
                self._reasoning.append(reasoning)

    def _add_fragment(self, choice: int, index: int, id_: str | None, function: Any) -> None:
        key = (choice, index)
        tool = self._tool_at.get(key)
        if tool is None or (id_ and tool.id and id_ != tool.id):
            tool = self._tool_at[key] = _ToolBuilder(id_, index)
            self._tools.append(tool)
        elif id_ and not tool.id:
            tool.id = id_
        if function is not None:
            if function.name and not tool.name:
                tool.name = function.name
            if function.arguments:
                tool.fragments.append(function.arguments)

    def _set_error(self, error: Any) -> None:
        type_, message = openai_error_fields(error)
        if type_ is not None:
            self._facts.error_type = type_
            self._facts.error_message = message
