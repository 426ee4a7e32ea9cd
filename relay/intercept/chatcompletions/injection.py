"""MCP tool injection for Chat Completions: the request rewrite and the rounds' stream.

Sans-io, like ``relay.intercept.messages.injection``. The injected tools are
prepended as ``function`` tools and ``parallel_tool_calls`` is set to false.
A round's ``tool_calls`` fragments of injected tools are withheld; a round
that goes on (``finish_reason: tool_calls``, injected calls only) also loses
its finishing chunk, its usage chunk and its ``[DONE]``. The client sees one
completion: every chunk carries the first round's id, the usage chunk (only
when the client asked for ``stream_options.include_usage``; the relay always
asks, to account) sums every round.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from relay.facts import ToolCall
from relay.intercept.tool_rounds import BlockingRound
from relay.mcp.tools import ToolSet
from relay.streams.sse import SSEEvent, encode_event
from relay.wire.openai_chat import strip_null_usage

_decode = msgspec.json.decode
_encode = msgspec.json.encode
DONE = "[DONE]"


def sum_usage(a: Any, b: Any) -> Any:
    """Two usage objects added, number by number (nested objects too)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = dict(a)
        for key, value in b.items():
            out[key] = sum_usage(out[key], value) if key in out else value
        return out
    if isinstance(a, int) and isinstance(b, int) and not isinstance(a, bool):
        return a + b
    return b if b is not None else a


def inject_tools(body: dict[str, Any], toolset: ToolSet) -> tuple[dict[str, Any], ToolSet] | None:
    client_tools = body.get("tools")
    if client_tools is not None and not isinstance(client_tools, list):
        return None
    if body.get("tool_choice") == "none":
        return None
    names = [
        n
        for t in client_tools or ()
        if isinstance(t, dict)
        and isinstance(f := t.get("function"), dict)
        and isinstance(n := f.get("name"), str)
    ]
    toolset = toolset.without(names)
    if not toolset:
        return None
    injected = [
        {
            "type": "function",
            "function": {
                "name": t.name,
                "description": t.description,
                "parameters": dict(t.input_schema),
            },
        }
        for t in toolset.tools
    ]
    out = dict(body)
    out["tools"] = injected + list(client_tools or ())
    out["parallel_tool_calls"] = False
    if body.get("stream") is True:
        options = body.get("stream_options")
        out["stream_options"] = {
            **(options if isinstance(options, dict) else {}),
            "include_usage": True,
        }
    return out, toolset


def _client_wants_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


class ChatRound:
    """One streamed upstream completion of the loop."""

    def __init__(self, loop: ChatLoop) -> None:
        self._loop = loop
        self._builders: dict[int, dict[str, Any]] = {}  # upstream tool index -> call so far
        self._withheld: set[int] = set()
        self._client_index: dict[int, int] = {}
        self._text: list[str] = []
        self.id: str | None = None
        self.calls: list[ToolCall] = []
        self.client_tools = False
        self.finish_reason: str | None = None
        self.usage: Any = None
        self._decided = False

    @property
    def continues(self) -> bool:
        return self.finish_reason == "tool_calls" and bool(self.calls) and not self.client_tools

    @property
    def content(self) -> dict[str, Any]:
        """The assistant message the next request repeats."""
        return {
            "role": "assistant",
            "content": "".join(self._text) or None,
            "tool_calls": [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments},
                }
                for c in self.calls
            ],
        }

    def feed(self, event: SSEEvent) -> bytes:
        if not event.dispatch:
            return event.raw
        if event.data.strip() == DONE:
            return b"" if self.continues else event.raw
        try:
            chunk = _decode(event.data)
        except msgspec.DecodeError:
            return event.raw
        if not isinstance(chunk, dict) or "error" in chunk:
            return event.raw
        if self.id is None and isinstance(chunk.get("id"), str):
            self.id = chunk["id"]
        choices = chunk.get("choices")
        if choices == [] and isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
            if self.continues or not self._loop.client_usage:
                return b""
            chunk["usage"] = sum_usage(self._loop.usage_sum, self.usage)
            return self._out(event, chunk, changed=True)
        changed = False
        if isinstance(choices, list):
            kept = []
            for choice in choices:
                if not isinstance(choice, dict):
                    kept.append(choice)
                    continue
                choice, drop, choice_changed = self._choice(choice)
                changed = changed or choice_changed
                if not drop:
                    kept.append(choice)
            if len(kept) != len(choices):
                changed = True
            if not kept and choices:
                return b""
            chunk["choices"] = kept
        return self._out(event, chunk, changed)

    def _choice(self, choice: dict[str, Any]) -> tuple[dict[str, Any], bool, bool]:
        """(the choice for the client, drop it whole, it changed)."""
        delta = choice.get("delta")
        changed = False
        if isinstance(delta, dict):
            content = delta.get("content")
            if isinstance(content, str):
                self._text.append(content)
            calls = delta.get("tool_calls")
            if isinstance(calls, list) and calls:
                visible = [c for c in (self._fragment(f) for f in calls) if c is not None]
                if len(visible) != len(calls) or visible != calls:
                    changed = True
                    delta = dict(delta)
                    if visible:
                        delta["tool_calls"] = visible
                    else:
                        delta.pop("tool_calls")
                    choice = {**choice, "delta": delta}
        finish = choice.get("finish_reason")
        if isinstance(finish, str):
            self.finish_reason = finish
            self._close()
            if self.continues:
                delta = choice.get("delta")
                empty = not isinstance(delta, dict) or not any(
                    delta.get(k) for k in ("content", "tool_calls", "refusal")
                )
                if empty:
                    return choice, True, True
                choice = {**choice, "finish_reason": None}
                changed = True
        elif isinstance(delta, dict) and not any(delta.values()) and changed:
            return choice, True, True  # only withheld fragments were in it
        return choice, False, changed

    def _fragment(self, fragment: Any) -> Any | None:
        if not isinstance(fragment, dict) or not isinstance(fragment.get("index"), int):
            return fragment
        index = fragment["index"]
        builder = self._builders.get(index)
        raw_function = fragment.get("function")
        function: dict[str, Any] = raw_function if isinstance(raw_function, dict) else {}
        if builder is None:
            raw_name = function.get("name")
            name = raw_name if isinstance(raw_name, str) else ""
            builder = self._builders[index] = {
                "id": fragment.get("id") or "",
                "name": name,
                "args": [],
            }
            if self._loop.is_injected(name):
                self._withheld.add(index)
            else:
                self.client_tools = True
                self._client_index[index] = len(self._client_index)
        if isinstance(function.get("arguments"), str):
            builder["args"].append(function["arguments"])
        if index in self._withheld:
            return None
        client_index = self._client_index[index]
        if client_index != index:
            return {**fragment, "index": client_index}
        return fragment

    def _close(self) -> None:
        if self._decided:
            return
        self._decided = True
        for index in sorted(self._withheld):
            b = self._builders[index]
            self.calls.append(
                ToolCall(id=b["id"], name=b["name"], arguments="".join(b["args"]), index=index)
            )

    def _out(self, event: SSEEvent, chunk: dict[str, Any], changed: bool) -> bytes:
        first_id = self._loop.first_id
        if first_id is None:
            self._loop.first_id = first_id = self.id
        if self.id is not None and first_id is not None and self.id != first_id:
            chunk["id"] = first_id
            changed = True
        if changed:
            if not self._loop.client_usage and "usage" in chunk and chunk["usage"] is None:
                del chunk["usage"]  # the relay's include_usage added it
            return encode_event(_encode(chunk))
        return event.raw if self._loop.client_usage else strip_null_usage(event.raw)


class ChatLoop:
    def __init__(self, body: dict[str, Any], toolset: ToolSet, client_usage: bool) -> None:
        self.body = body
        self.toolset = toolset
        self.client_usage = client_usage
        self.rounds = 0
        self.first_id: str | None = None
        self.usage_sum: Any = {}
        self._texts: list[str] = []
        self._first_whole: dict[str, Any] | None = None

    def is_injected(self, name: str) -> bool:
        return self.toolset.resolve(name) is not None

    def round(self) -> ChatRound:
        self.rounds += 1
        return ChatRound(self)

    def follow_up(
        self, round_: ChatRound | WholeChatRound, results: Sequence[tuple[ToolCall, str, bool]]
    ) -> bytes:
        if round_.usage is not None:
            self.usage_sum = sum_usage(self.usage_sum, round_.usage)
        if isinstance(round_, WholeChatRound):
            self._first_whole = self._first_whole or round_.data
            if round_.text:
                self._texts.append(round_.text)
        messages = list(self.body.get("messages") or ())
        messages.append(round_.content)
        for call, text, _failed in results:
            messages.append({"role": "tool", "tool_call_id": call.id, "content": text})
        self.body = {**self.body, "messages": messages}
        return _encode(self.body)

    def whole(self, body: bytes) -> WholeChatRound:
        self.rounds += 1
        return WholeChatRound(self, body)

    def whole_final(self, last: WholeChatRound) -> bytes:
        if self.rounds == 1 and not last.dropped:
            return last.raw
        out = dict(last.data)
        first = self._first_whole or last.data
        out["id"] = first.get("id", out.get("id"))
        choices = out.get("choices")
        if isinstance(choices, list) and choices and isinstance(choices[0], dict):
            choice = dict(choices[0])
            message = dict(choice.get("message") or {})
            message["content"] = "".join([*self._texts, last.text]) or None
            if last.visible_calls:
                message["tool_calls"] = last.visible_calls
            else:
                message.pop("tool_calls", None)
            choice["message"] = message
            out["choices"] = [choice, *choices[1:]]
        if last.usage is not None:
            out["usage"] = sum_usage(self.usage_sum, last.usage)
        return _encode(out)


class WholeChatRound(BlockingRound):
    def __init__(self, loop: ChatLoop, raw: bytes) -> None:
        super().__init__(raw)
        self.visible_calls: list[Any] = []
        choices = self.data.get("choices")
        choice = choices[0] if isinstance(choices, list) and choices else {}
        message = choice.get("message") if isinstance(choice, dict) else None
        message = message if isinstance(message, dict) else {}
        self.finish_reason = choice.get("finish_reason") if isinstance(choice, dict) else None
        self.finished = self.finish_reason == "tool_calls"
        content = message.get("content")
        self.text = content if isinstance(content, str) else ""
        for i, call in enumerate(message.get("tool_calls") or ()):
            function = call.get("function") if isinstance(call, dict) else None
            name = function.get("name") if isinstance(function, dict) else None
            if isinstance(name, str) and loop.is_injected(name):
                self.dropped = True
                arguments = function.get("arguments") if isinstance(function, dict) else None
                self.calls.append(
                    ToolCall(
                        id=str(call.get("id", "")),
                        name=name,
                        arguments=arguments if isinstance(arguments, str) else "{}",
                        index=i,
                    )
                )
            else:
                self.client_tools = True
                self.visible_calls.append(call)
        self.usage = self.data.get("usage")
        self.content = {
            "role": "assistant",
            "content": self.text or None,
            "tool_calls": [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments},
                }
                for c in self.calls
            ],
        }


def chat_tool_loop(body: dict[str, Any], toolset: ToolSet) -> ChatLoop | None:
    injected = inject_tools(body, toolset)
    if injected is None:
        return None
    new_body, kept = injected
    return ChatLoop(new_body, kept, _client_wants_usage(body))
