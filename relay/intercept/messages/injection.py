"""MCP tool injection for Anthropic Messages: the request rewrite and the rounds' stream.

Sans-io. ``inject_tools`` prepends the injected tools to a request (and turns
parallel tool use off). ``MessagesLoop`` holds what one client answer keeps
across the inner upstream requests: the blocks already sent (so every round's
content blocks are renumbered consecutively), the first ``message_start``
(the only one the client sees), the usage of every round (summed into the
final ``message_delta``), and the conversation to send next. A round's
``tool_use`` blocks of injected tools, and the ``message_delta`` /
``message_stop`` that end a turn that will go on, are withheld from the client.

A round continues the loop when its turn stopped for ``tool_use``, it called
at least one injected tool and no tool of the client's own: a call to a
client tool ends the loop there, and reaches the client as usual (any
injected call beside it is not run; the model is told nothing of it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from relay.facts import ToolCall
from relay.intercept.tool_rounds import BlockingRound
from relay.mcp.tools import ToolSet
from relay.streams.sse import SSEEvent, encode_event

_decode = msgspec.json.decode
_encode = msgspec.json.encode

_USAGE_KEYS = (
    "input_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
    "output_tokens",
)
_TOOL_BLOCKS = ("tool_use",)


def inject_tools(body: dict[str, Any], toolset: ToolSet) -> dict[str, Any] | None:
    """``body`` with ``toolset`` prepended to its tools; None when nothing is injected.

    Prepended, so the client's own tools (and any cache breakpoint on them) keep
    their place after a block that only changes when the servers' tools do.
    """
    client_tools = body.get("tools")
    if client_tools is not None and not isinstance(client_tools, list):
        return None
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") == "none":
        return None
    names = {t.get("name") for t in client_tools or () if isinstance(t, dict)}
    toolset = toolset.without(n for n in names if isinstance(n, str))
    if not toolset:
        return None
    injected = [
        {"name": t.name, "description": t.description, "input_schema": dict(t.input_schema)}
        for t in toolset.tools
    ]
    out = dict(body)
    out["tools"] = injected + list(client_tools or ())
    if isinstance(choice, dict):
        out["tool_choice"] = {**choice, "disable_parallel_tool_use": True}
    else:
        out["tool_choice"] = {"type": "auto", "disable_parallel_tool_use": True}
    return out


def _usage_of(obj: Any) -> dict[str, int]:
    if not isinstance(obj, dict):
        return {}
    return {k: v for k in _USAGE_KEYS if isinstance(v := obj.get(k), int)}


class MessagesRound:
    """One upstream response of the loop, streamed: events in, the client's bytes out."""

    __slots__ = (
        "_blocks",
        "_index_map",
        "_loop",
        "_partial",
        "_withheld",
        "calls",
        "client_tools",
        "content",
        "ended",
        "stop_reason",
        "usage",
    )

    def __init__(self, loop: MessagesLoop) -> None:
        self._loop = loop
        self._index_map: dict[int, int] = {}  # upstream index -> client index
        self._withheld: set[int] = set()
        self._blocks: dict[int, dict[str, Any]] = {}
        self._partial: dict[int, list[str]] = {}
        self.calls: list[ToolCall] = []  # injected calls, in order
        self.client_tools = False
        self.content: list[dict[str, Any]] = []
        self.stop_reason: str | None = None
        self.usage: dict[str, int] = {}
        self.ended = False  # the client's message is over (stop or error sent)

    @property
    def continues(self) -> bool:
        return (
            self.stop_reason == "tool_use"
            and bool(self.calls)
            and not self.client_tools
            and not self.ended
        )

    def feed(self, event: SSEEvent) -> bytes:
        if not event.dispatch:
            return event.raw  # a comment: the client may have it
        kind = event.event
        try:
            data = _decode(event.data)
        except msgspec.DecodeError:
            return event.raw
        if not isinstance(data, dict):
            return event.raw
        if kind == "message_start":
            message = data.get("message")
            self.usage.update(
                _usage_of(message.get("usage") if isinstance(message, dict) else None)
            )
            return self._loop.first_start(event.raw)
        if kind == "content_block_start":
            return self._block_start(event, data)
        if kind in ("content_block_delta", "content_block_stop"):
            return self._block_event(event, data, kind)
        if kind == "message_delta":
            delta = data.get("delta")
            if isinstance(delta, dict):
                self.stop_reason = delta.get("stop_reason") or self.stop_reason
            self.usage.update(_usage_of(data.get("usage")))
            self._close_blocks()
            if self.continues:
                return b""
            self.ended = True
            return self._loop.final_delta(event.raw, data, self.usage)
        if kind == "message_stop":
            if self.continues:
                return b""
            self.ended = True
            return event.raw
        if kind == "error":
            self.ended = True
        return event.raw

    def _block_start(self, event: SSEEvent, data: dict[str, Any]) -> bytes:
        index, block = data.get("index"), data.get("content_block")
        if not isinstance(index, int) or not isinstance(block, dict):
            return event.raw
        self._blocks[index] = dict(block)
        if block.get("type") in _TOOL_BLOCKS:
            self._partial[index] = []
            name = block.get("name")
            if isinstance(name, str) and self._loop.is_injected(name):
                self._withheld.add(index)
                return b""
            self.client_tools = True
        client_index = self._loop.take_index()
        self._index_map[index] = client_index
        return _reindexed(event, data, index, client_index)

    def _block_event(self, event: SSEEvent, data: dict[str, Any], kind: str) -> bytes:
        index = data.get("index")
        if not isinstance(index, int):
            return event.raw
        block = self._blocks.get(index)
        if block is not None and kind == "content_block_delta":
            _apply_delta(block, data.get("delta"), self._partial.get(index))
        if index in self._withheld:
            return b""
        client_index = self._index_map.get(index, index)
        return _reindexed(event, data, index, client_index)

    def _close_blocks(self) -> None:
        """The turn is over: the content as the next request repeats it, the injected calls."""
        if self.content:
            return
        for index in sorted(self._blocks):
            block = self._blocks[index]
            partial = self._partial.get(index)
            if partial is not None:
                text = "".join(partial)
                try:
                    block["input"] = _decode(text) if text else block.get("input") or {}
                except msgspec.DecodeError:
                    block["input"] = {}
                if index in self._withheld:
                    self.calls.append(
                        ToolCall(
                            id=str(block.get("id", "")),
                            name=str(block.get("name", "")),
                            arguments=text or _encode(block.get("input") or {}).decode(),
                            index=index,
                        )
                    )
            self.content.append(block)


def _apply_delta(block: dict[str, Any], delta: Any, partial: list[str] | None) -> None:
    if not isinstance(delta, dict):
        return
    kind = delta.get("type")
    if kind == "text_delta":
        block["text"] = str(block.get("text", "")) + str(delta.get("text", ""))
    elif kind == "thinking_delta":
        block["thinking"] = str(block.get("thinking", "")) + str(delta.get("thinking", ""))
    elif kind == "signature_delta":
        block["signature"] = delta.get("signature", "")
    elif kind == "input_json_delta" and partial is not None:
        partial.append(str(delta.get("partial_json", "")))
    elif kind == "citations_delta":
        citations = block.setdefault("citations", [])
        if isinstance(citations, list):
            citations.append(delta.get("citation"))


def _reindexed(event: SSEEvent, data: dict[str, Any], index: int, client_index: int) -> bytes:
    if index == client_index:
        return event.raw
    data["index"] = client_index
    return encode_event(_encode(data), event.event)


class MessagesLoop:
    """What one client answer keeps across its rounds (streamed or blocking)."""

    def __init__(self, body: dict[str, Any], toolset: ToolSet) -> None:
        self.body = body  # the request with the tools injected
        self.toolset = toolset
        self.rounds = 0
        self._next_index = 0
        self._started = False
        self._usage_sum: dict[str, int] = {}
        self._whole: dict[str, Any] | None = None
        self._whole_content: list[Any] = []

    def is_injected(self, name: str) -> bool:
        return self.toolset.resolve(name) is not None

    def round(self) -> MessagesRound:
        self.rounds += 1
        return MessagesRound(self)

    def take_index(self) -> int:
        index = self._next_index
        self._next_index += 1
        return index

    def first_start(self, raw: bytes) -> bytes:
        if self._started:
            return b""
        self._started = True
        return raw

    def add_usage(self, usage: dict[str, int]) -> None:
        for key, value in usage.items():
            self._usage_sum[key] = self._usage_sum.get(key, 0) + value

    def final_delta(self, raw: bytes, data: dict[str, Any], usage: dict[str, int]) -> bytes:
        """The last round's ``message_delta``, its usage summed over every round."""
        if self.rounds == 1:
            return raw
        summed = dict(self._usage_sum)
        for key, value in usage.items():
            summed[key] = summed.get(key, 0) + value
        reported = data.get("usage")
        data["usage"] = {**(reported if isinstance(reported, dict) else {}), **summed}
        return encode_event(_encode(data), "message_delta")

    def follow_up(
        self, round_: MessagesRound | WholeRound, results: Sequence[tuple[ToolCall, str, bool]]
    ) -> bytes:
        """The next request: the turn so far, then the tools' results (``is_error`` on failures).

        The round's usage joins the sum the final message reports.
        """
        self.add_usage(round_.usage)
        if isinstance(round_, WholeRound):
            self.keep_whole(round_)
        messages = list(self.body.get("messages") or ())
        messages.append({"role": "assistant", "content": list(round_.content)})
        messages.append(
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": call.id,
                        "content": text,
                        **({"is_error": True} if failed else {}),
                    }
                    for call, text, failed in results
                ],
            }
        )
        self.body = {**self.body, "messages": messages}
        return _encode(self.body)

    # --- blocking -------------------------------------------------------------------------

    def whole(self, body: bytes) -> WholeRound:
        """One blocking response of the loop."""
        self.rounds += 1
        return WholeRound(self, body)

    def whole_final(self, last: WholeRound) -> bytes:
        """The client's one message: the first id, every round's visible content, usage summed."""
        if self.rounds == 1 and not last.dropped:
            return last.raw
        first = self._whole or last.data
        out = dict(last.data)
        out["id"] = first.get("id", out.get("id"))
        out["content"] = [*self._whole_content, *last.visible]
        usage = dict(self._usage_sum)
        for key, value in last.usage.items():
            usage[key] = usage.get(key, 0) + value
        reported = out.get("usage")
        out["usage"] = {**(reported if isinstance(reported, dict) else {}), **usage}
        return _encode(out)

    def keep_whole(self, round_: WholeRound) -> None:
        """A round that goes on: its visible content waits for the final message."""
        if self._whole is None:
            self._whole = round_.data
        self._whole_content.extend(round_.visible)


class WholeRound(BlockingRound):
    """A blocking response: its injected calls, the content the client will see."""

    def __init__(self, loop: MessagesLoop, raw: bytes) -> None:
        super().__init__(raw)
        self.visible: list[Any] = []
        content = self.data.get("content")
        self.content: list[Any] = content if isinstance(content, list) else []
        for index, block in enumerate(self.content):
            if isinstance(block, dict) and block.get("type") in _TOOL_BLOCKS:
                name = block.get("name")
                if isinstance(name, str) and loop.is_injected(name):
                    self.dropped = True
                    self.calls.append(
                        ToolCall(
                            id=str(block.get("id", "")),
                            name=name,
                            arguments=_encode(block.get("input") or {}).decode(),
                            index=index,
                        )
                    )
                    continue
                self.client_tools = True
            self.visible.append(block)
        self.stop_reason = self.data.get("stop_reason")
        self.finished = self.stop_reason == "tool_use"
        self.usage = _usage_of(self.data.get("usage"))


def messages_tool_loop(body: dict[str, Any], toolset: ToolSet) -> MessagesLoop | None:
    """The loop of a request with ``toolset`` injected; None when nothing is injected."""
    injected = inject_tools(body, toolset)
    if injected is None:
        return None
    return MessagesLoop(injected, toolset.without(_client_names(body)))


def _client_names(body: dict[str, Any]) -> list[str]:
    tools = body.get("tools")
    if not isinstance(tools, list):
        return []
    return [n for t in tools if isinstance(t, dict) and isinstance(n := t.get("name"), str)]
