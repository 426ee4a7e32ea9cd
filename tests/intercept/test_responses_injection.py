"""The Responses tool loop's sans-io core: rounds fed bytes split anywhere."""

from __future__ import annotations

import json
from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.intercept.responses.injection import ResponsesLoop, responses_tool_loop
from relay.mcp.tools import ServerTools, build_toolset
from relay.streams.sse import SSEDecoder
from relay.testing.mock_upstream import tool_script

TOOLSET = build_toolset(
    [ServerTools("mock", "http://mcp", (("add", "Adds.", {"type": "object"}),))]
)
BODY: dict[str, Any] = {"model": "gpt-x", "stream": True, "input": "hi"}
SCRIPT = tool_script.parse_script(json.dumps([[{"name": "bmcp_mock_add", "input": {"a": 1}}]]))


def _stream(body: dict[str, Any], uid: str) -> bytes:
    raw = b"".join(tool_script.responses_stream(SCRIPT, body, "gpt-x"))
    return raw.replace(tool_script.ID_PLACEHOLDER.encode(), uid.encode())


def _run(loop: ResponsesLoop, data: bytes, cuts: list[int]) -> tuple[bytes, Any]:
    decoder = SSEDecoder(keep_raw=True)
    round_ = loop.round()
    bounds = sorted({c % (len(data) + 1) for c in cuts})
    out = []
    for a, b in zip([0, *bounds], [*bounds, len(data)], strict=True):
        for event in decoder.feed(data[a:b]):
            out.append(round_.feed(event))
    for event in decoder.close():
        out.append(round_.feed(event))
    return b"".join(out), round_


def _events(raw: bytes) -> list[dict[str, Any]]:
    out = []
    for block in raw.decode().split("\n\n"):
        data = "".join(ln[6:] for ln in block.splitlines() if ln.startswith("data: "))
        if data:
            out.append(json.loads(data))
    return out


def test_the_request_gets_the_tools_first_and_no_parallel_calls() -> None:
    body = {**BODY, "tools": [{"type": "function", "name": "mine"}]}
    loop = responses_tool_loop(body, TOOLSET)
    assert loop is not None
    assert [t["name"] for t in loop.body["tools"]] == ["bmcp_mock_add", "mine"]
    assert loop.body["parallel_tool_calls"] is False


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=20_000), max_size=12))
def test_two_rounds_make_one_response_whatever_the_splits(cuts: list[int]) -> None:
    loop = responses_tool_loop(BODY, TOOLSET)
    assert loop is not None
    first, round1 = _run(loop, _stream(loop.body, "a" * 24), cuts)
    assert round1.continues
    assert [(c.name, json.loads(c.arguments)) for c in round1.calls] == [
        ("bmcp_mock_add", {"a": 1})
    ]
    next_body = msgspec.json.decode(loop.follow_up(round1, [(round1.calls[0], "2", False)]))
    assert next_body["input"][0] == {"role": "user", "content": "hi"}
    assert next_body["input"][-1] == {
        "type": "function_call_output",
        "call_id": round1.calls[0].id,
        "output": "2",
    }
    second, round2 = _run(loop, _stream(next_body, "b" * 24), cuts)
    assert not round2.continues
    events = _events(first + second)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    kinds = [e["type"] for e in events]
    assert kinds.count("response.created") == 1 and kinds.count("response.completed") == 1
    assert kinds[-1] == "response.completed"
    added = [e for e in events if e["type"] == "response.output_item.added"]
    assert [e["output_index"] for e in added] == [0, 1]
    assert all(e["item"]["type"] == "message" for e in added)
    final = events[-1]["response"]
    assert final["id"] == "resp_" + "a" * 24
    assert [i["content"][0]["text"] for i in final["output"]] == ["Checking.", "Done: 2"]
    assert final["usage"]["input_tokens"] == 107 + 207
