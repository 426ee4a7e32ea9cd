"""MCP tool injection for OpenAI Responses: the request rewrite and the rounds' stream.

Sans-io, like ``relay.intercept.messages.injection``. The injected tools are
prepended as ``function`` tools and ``parallel_tool_calls`` is set to false.
A round's ``function_call`` items of injected tools are withheld (every event
of their ``output_index``); a round that goes on also loses its
``response.completed``, and later rounds their ``response.created`` /
``response.in_progress``. The client sees one response: the first round's id,
``output_index`` and ``sequence_number`` consecutive across rounds, and a
``response.completed`` whose ``output`` holds every round's visible items and
whose usage is summed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from relay.facts import ToolCall
from relay.intercept.chatcompletions.injection import sum_usage
from relay.intercept.tool_rounds import BlockingRound
from relay.mcp.tools import ToolSet
from relay.streams.sse import SSEEvent, encode_event

_decode = msgspec.json.decode
_encode = msgspec.json.encode

_OPENING = frozenset({"response.created", "response.in_progress"})
_ENDINGS = frozenset({"response.completed", "response.incomplete", "response.failed"})


def inject_tools(body: dict[str, Any], toolset: ToolSet) -> tuple[dict[str, Any], ToolSet] | None:
    client_tools = body.get("tools")
    if client_tools is not None and not isinstance(client_tools, list):
        return None
    if body.get("tool_choice") == "none":
        return None
    names = [
        n for t in client_tools or () if isinstance(t, dict) and isinstance(n := t.get("name"), str)
    ]
    toolset = toolset.without(names)
    if not toolset:
        return None
    injected = [
        {
            "type": "function",
            "name": t.name,
            "description": t.description,
            "parameters": dict(t.input_schema),
            "strict": False,
        }
        for t in toolset.tools
    ]
    out = dict(body)
    out["tools"] = injected + list(client_tools or ())
    out["parallel_tool_calls"] = False
    return out, toolset


def _call_of(item: dict[str, Any], index: int) -> ToolCall:
    arguments = item.get("arguments")
    return ToolCall(
        id=str(item.get("call_id", "")),
        name=str(item.get("name", "")),
        arguments=arguments if isinstance(arguments, str) else "{}",
        index=index,
    )


class ResponsesRound:
    """One streamed upstream response of the loop."""

    def __init__(self, loop: ResponsesLoop) -> None:
        self._loop = loop
        self._withheld: set[int] = set()
        self._index_map: dict[int, int] = {}
        self.calls: list[ToolCall] = []
        self.client_tools = False
        self.items: list[Any] = []  # every output item, for the next request
        self.visible: list[Any] = []
        self.usage: Any = None
        self.response_id: str | None = None
        self.completed = False
        self.ended = False

    @property
    def continues(self) -> bool:
        return self.completed and bool(self.calls) and not self.client_tools and not self.ended

    @property
    def content(self) -> list[Any]:
        return self.items

    def feed(self, event: SSEEvent) -> bytes:
        if not event.dispatch:
            return event.raw
        try:
            data = _decode(event.data)
        except msgspec.DecodeError:
            return event.raw
        if not isinstance(data, dict):
            return event.raw
        kind = data.get("type", event.event)
        loop = self._loop
        if kind in _OPENING:
            response = data.get("response")
            if isinstance(response, dict) and isinstance(response.get("id"), str):
                self.response_id = self.response_id or response["id"]
                loop.first_id = loop.first_id or response["id"]
            if loop.rounds > 1:
                return b""
            return self._out(event, data, False)
        if kind in _ENDINGS:
            return self._ending(event, data, kind)
        index = data.get("output_index")
        if not isinstance(index, int):
            return self._out(event, data, False)
        if kind == "response.output_item.added":
            item = data.get("item")
            if isinstance(item, dict) and item.get("type") == "function_call":
                name = item.get("name")
                if isinstance(name, str) and loop.is_injected(name):
                    self._withheld.add(index)
                    return b""
                self.client_tools = True
            self._index_map[index] = loop.take_index()
        if index in self._withheld:
            if kind == "response.output_item.done" and isinstance(data.get("item"), dict):
                self.calls.append(_call_of(data["item"], index))
            return b""
        if kind == "response.output_item.done" and data.get("item") is not None:
            self.visible.append(data["item"])
        client_index = self._index_map.get(index, index)
        changed = client_index != index
        if changed:
            data["output_index"] = client_index
        return self._out(event, data, changed)

    def _ending(self, event: SSEEvent, data: dict[str, Any], kind: str) -> bytes:
        response = data.get("response")
        response = response if isinstance(response, dict) else {}
        self.usage = response.get("usage")
        output = response.get("output")
        self.items = list(output) if isinstance(output, list) else []
        self.completed = kind == "response.completed"
        if self.continues:
            return b""
        self.ended = True
        loop = self._loop
        if loop.rounds == 1 and not self._withheld:
            return self._out(event, data, False)
        final = dict(response)
        final["id"] = loop.first_id or final.get("id")
        final["output"] = [*loop.visible, *self.visible]
        if self.usage is not None:
            final["usage"] = sum_usage(loop.usage_sum, self.usage)
        data["response"] = final
        return self._out(event, data, True)

    def _out(self, event: SSEEvent, data: dict[str, Any], changed: bool) -> bytes:
        seq = self._loop.take_seq()
        if data.get("sequence_number") != seq:
            data["sequence_number"] = seq
            changed = True
        if not changed:
            return event.raw
        return encode_event(_encode(data), str(data.get("type", event.event)))


class ResponsesLoop:
    def __init__(self, body: dict[str, Any], toolset: ToolSet) -> None:
        self.body = body
        self.toolset = toolset
        self.rounds = 0
        self.first_id: str | None = None
        self.usage_sum: Any = {}
        self.visible: list[Any] = []  # the items of the rounds before, as the client saw them
        self._next_index = 0
        self._next_seq = 0
        self._first_whole: dict[str, Any] | None = None

    def is_injected(self, name: str) -> bool:
        return self.toolset.resolve(name) is not None

    def take_index(self) -> int:
        index = self._next_index
        self._next_index += 1
        return index

    def take_seq(self) -> int:
        seq = self._next_seq
        self._next_seq += 1
        return seq

    def round(self) -> ResponsesRound:
        self.rounds += 1
        return ResponsesRound(self)

    def follow_up(
        self,
        round_: ResponsesRound | WholeResponsesRound,
        results: Sequence[tuple[ToolCall, str, bool]],
    ) -> bytes:
        if round_.usage is not None:
            self.usage_sum = sum_usage(self.usage_sum, round_.usage)
        self.visible.extend(round_.visible)
        if isinstance(round_, WholeResponsesRound):
            self._first_whole = self._first_whole or round_.data
        given = self.body.get("input")
        if isinstance(given, str):
            items: list[Any] = [{"role": "user", "content": given}]
        else:
            items = list(given) if isinstance(given, list) else []
        # Reasoning items can only be sent back with their encrypted content.
        items += [
            i
            for i in round_.items
            if not (
                isinstance(i, dict)
                and i.get("type") == "reasoning"
                and not i.get("encrypted_content")
            )
        ]
        items += [
            {"type": "function_call_output", "call_id": call.id, "output": text}
            for call, text, _failed in results
        ]
        self.body = {**self.body, "input": items}
        return _encode(self.body)

    def whole(self, body: bytes) -> WholeResponsesRound:
        self.rounds += 1
        return WholeResponsesRound(self, body)

    def whole_final(self, last: WholeResponsesRound) -> bytes:
        if self.rounds == 1 and not last.dropped:
            return last.raw
        out = dict(last.data)
        first = self._first_whole or last.data
        out["id"] = first.get("id", out.get("id"))
        out["output"] = [*self.visible, *last.visible]
        if last.usage is not None:
            out["usage"] = sum_usage(self.usage_sum, last.usage)
        return _encode(out)


class WholeResponsesRound(BlockingRound):
    def __init__(self, loop: ResponsesLoop, raw: bytes) -> None:
        super().__init__(raw)
        self.visible: list[Any] = []
        output = self.data.get("output")
        self.items: list[Any] = list(output) if isinstance(output, list) else []
        for index, item in enumerate(self.items):
            if isinstance(item, dict) and item.get("type") == "function_call":
                name = item.get("name")
                if isinstance(name, str) and loop.is_injected(name):
                    self.dropped = True
                    self.calls.append(_call_of(item, index))
                    continue
                self.client_tools = True
            self.visible.append(item)
        self.usage = self.data.get("usage")
        self.finished = self.data.get("status") == "completed"


def responses_tool_loop(body: dict[str, Any], toolset: ToolSet) -> ResponsesLoop | None:
    injected = inject_tools(body, toolset)
    if injected is None:
        return None
    new_body, kept = injected
    return ResponsesLoop(new_body, kept)
