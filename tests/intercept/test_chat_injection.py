"""The Chat Completions tool loop's sans-io core: rounds fed bytes split anywhere."""

from __future__ import annotations

import json
from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.intercept.chatcompletions.injection import ChatLoop, chat_tool_loop, sum_usage
from relay.mcp.tools import ServerTools, build_toolset
from relay.streams.sse import SSEDecoder
from relay.testing.mock_upstream import tool_script

TOOLSET = build_toolset(
    [ServerTools("mock", "http://mcp", (("add", "Adds.", {"type": "object"}),))]
)
BODY: dict[str, Any] = {
    "model": "gpt-x",
    "stream": True,
    "messages": [{"role": "user", "content": "hi"}],
}
SCRIPT = tool_script.parse_script(json.dumps([[{"name": "bmcp_mock_add", "input": {"a": 1}}]]))


def _stream(body: dict[str, Any], uid: str) -> bytes:
    raw = b"".join(tool_script.chat_stream(SCRIPT, body, "gpt-x"))
    return raw.replace(tool_script.ID_PLACEHOLDER.encode(), uid.encode())


def _run(loop: ChatLoop, data: bytes, cuts: list[int]) -> tuple[bytes, Any]:
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


def _chunks(raw: bytes) -> list[Any]:
    out = []
    for block in raw.decode().split("\n\n"):
        data = "".join(ln[6:] for ln in block.splitlines() if ln.startswith("data: "))
        if data:
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def test_the_request_gets_the_tools_first_no_parallel_calls_and_usage() -> None:
    body = {**BODY, "tools": [{"type": "function", "function": {"name": "mine"}}]}
    loop = chat_tool_loop(body, TOOLSET)
    assert loop is not None
    assert [t["function"]["name"] for t in loop.body["tools"]] == ["bmcp_mock_add", "mine"]
    assert loop.body["parallel_tool_calls"] is False
    assert loop.body["stream_options"] == {"include_usage": True}
    assert not loop.client_usage
    assert chat_tool_loop({**BODY, "tool_choice": "none"}, TOOLSET) is None


def test_usage_sums_nested_numbers() -> None:
    assert sum_usage(
        {"prompt_tokens": 1, "details": {"cached_tokens": 2}},
        {"prompt_tokens": 3, "details": {"cached_tokens": 4}},
    ) == {"prompt_tokens": 4, "details": {"cached_tokens": 6}}


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=10_000), max_size=12), st.booleans())
def test_two_rounds_make_one_completion_whatever_the_splits(
    cuts: list[int], wants_usage: bool
) -> None:
    client_body = {**BODY, **({"stream_options": {"include_usage": True}} if wants_usage else {})}
    loop = chat_tool_loop(client_body, TOOLSET)
    assert loop is not None
    first, round1 = _run(loop, _stream(loop.body, "a" * 24), cuts)
    assert round1.continues
    assert [(c.name, json.loads(c.arguments)) for c in round1.calls] == [
        ("bmcp_mock_add", {"a": 1})
    ]
    next_body = msgspec.json.decode(loop.follow_up(round1, [(round1.calls[0], "2", False)]))
    assert next_body["messages"][-2]["tool_calls"][0]["function"]["name"] == "bmcp_mock_add"
    assert next_body["messages"][-1] == {
        "role": "tool",
        "tool_call_id": round1.calls[0].id,
        "content": "2",
    }
    second, round2 = _run(loop, _stream(next_body, "b" * 24), cuts)
    assert not round2.continues
    chunks = _chunks(first + second)
    assert chunks[-1] == "[DONE]" and chunks.count("[DONE]") == 1
    objects = [c for c in chunks if isinstance(c, dict)]
    assert {c["id"] for c in objects} == {"chatcmpl-" + "a" * 24}
    assert not any(
        d.get("delta", {}).get("tool_calls") for c in objects for d in c.get("choices", [])
    )
    finishes = [d["finish_reason"] for c in objects for d in c["choices"] if d.get("finish_reason")]
    assert finishes == ["stop"]
    text = "".join(d["delta"].get("content") or "" for c in objects for d in c["choices"])
    assert text == "Checking.Done: 2"
    usage = [c for c in objects if c.get("choices") == []]
    if wants_usage:
        assert [u["usage"]["prompt_tokens"] for u in usage] == [107 + 207]
        assert all("usage" in c for c in objects)
    else:
        assert usage == [] and not any("usage" in c for c in objects)
