"""The Anthropic tool loop's sans-io core: rounds fed bytes split anywhere."""

from __future__ import annotations

import json
from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.intercept.messages.injection import MessagesLoop, messages_tool_loop
from relay.mcp.tools import ServerTools, build_toolset
from relay.streams.sse import SSEDecoder
from relay.testing.mock_upstream import tool_script

TOOLSET = build_toolset(
    [ServerTools("mock", "http://mcp", (("add", "Adds.", {"type": "object"}),))]
)
BODY: dict[str, Any] = {
    "model": "claude-sonnet-4-5",
    "max_tokens": 10,
    "messages": [{"role": "user", "content": "hi"}],
}
SCRIPT = tool_script.parse_script(json.dumps([[{"name": "bmcp_mock_add", "input": {"a": 1}}]]))


def _stream(body: dict[str, Any]) -> bytes:
    return b"".join(tool_script.anthropic_stream(SCRIPT, body, "m"))


def _run(loop: MessagesLoop, data: bytes, cuts: list[int]) -> tuple[bytes, Any]:
    decoder = SSEDecoder(keep_raw=True)
    round_ = loop.round()
    out = []
    bounds = sorted({c % (len(data) + 1) for c in cuts})
    pieces = [data[a:b] for a, b in zip([0, *bounds], [*bounds, len(data)], strict=True)]
    for piece in pieces:
        for event in decoder.feed(piece):
            out.append(round_.feed(event))
    for event in decoder.close():
        out.append(round_.feed(event))
    return b"".join(out), round_


def _events(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for block in raw.decode().split("\n\n"):
        lines = block.splitlines()
        event = next((ln[7:] for ln in lines if ln.startswith("event: ")), None)
        data = "".join(ln[6:] for ln in lines if ln.startswith("data: "))
        if event:
            out.append((event, json.loads(data)))
    return out


def test_the_request_gets_the_tools_first_and_parallel_use_off() -> None:
    body = {**BODY, "tools": [{"name": "mine", "input_schema": {"type": "object"}}]}
    loop = messages_tool_loop(body, TOOLSET)
    assert loop is not None
    assert [t["name"] for t in loop.body["tools"]] == ["bmcp_mock_add", "mine"]
    assert loop.body["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}
    # tool_choice none: nothing to inject; a client tool of the same name wins.
    assert messages_tool_loop({**BODY, "tool_choice": {"type": "none"}}, TOOLSET) is None
    same = {**BODY, "tools": [{"name": "bmcp_mock_add", "input_schema": {}}]}
    assert messages_tool_loop(same, TOOLSET) is None


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=10_000), max_size=12))
def test_two_rounds_make_one_message_whatever_the_splits(cuts: list[int]) -> None:
    loop = messages_tool_loop(BODY, TOOLSET)
    assert loop is not None
    first, round1 = _run(loop, _stream(loop.body), cuts)
    assert round1.continues
    assert [(c.name, json.loads(c.arguments)) for c in round1.calls] == [
        ("bmcp_mock_add", {"a": 1})
    ]
    next_body = msgspec.json.decode(loop.follow_up(round1, [(round1.calls[0], "2", False)]))
    assert next_body["messages"][-1]["content"][0]["content"] == "2"
    second, round2 = _run(loop, _stream(next_body), cuts)
    assert not round2.continues
    events = _events(first + second)
    kinds = [k for k, _ in events]
    assert kinds.count("message_start") == 1 and kinds.count("message_stop") == 1
    assert [d["index"] for k, d in events if k == "content_block_start"] == [0, 1]
    assert all(
        d["index"] in (0, 1)
        for k, d in events
        if k in ("content_block_delta", "content_block_stop")
    )
    delta = next(d for k, d in events if k == "message_delta")
    assert delta["usage"]["input_tokens"] == 100 + 200
    assert delta["usage"]["output_tokens"] == 10 + 20
    assert not any(d.get("content_block", {}).get("type") == "tool_use" for _, d in events)


def test_a_round_that_stays_alone_is_forwarded_byte_for_byte() -> None:
    loop = messages_tool_loop(BODY, TOOLSET)
    assert loop is not None
    done = [
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "x", "content": "1"}]}
    ]
    data = _stream({**loop.body, "messages": [*BODY["messages"], *done]})
    out, round_ = _run(loop, data, [5, 77, 300])
    assert not round_.continues and out == data
