"""Two-turn injected-tool exchanges (tests/fixtures/mcp/<case>/turn1, turn2) replayed
through each API's tool loop, as the relay would: turn 1 calls injected tools, turn 2
answers. Built from the providers' documented answers (the fixtures beside them, with
the tools renamed as injected tools are). What the client gets must be one answer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest

from relay.intercept.chatcompletions.injection import chat_tool_loop
from relay.intercept.messages.injection import messages_tool_loop
from relay.intercept.responses.injection import responses_tool_loop
from relay.mcp.tools import ServerTools, build_toolset
from relay.streams.sse import SSEDecoder

CASES = Path(__file__).resolve().parents[1] / "fixtures" / "mcp"
TOOLSET = build_toolset(
    [
        ServerTools(
            "weather",
            "http://weather",
            (("get_weather", "", {}), ("get_current_weather", "", {})),
        ),
        ServerTools("clock", "http://clock", (("get_time", "", {}), ("get_current_time", "", {}))),
    ]
)
LOOPS: dict[str, Any] = {
    "messages": (
        messages_tool_loop,
        {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "q"}]},
    ),
    "chat": (chat_tool_loop, {"model": "m", "messages": [{"role": "user", "content": "q"}]}),
    "responses": (responses_tool_loop, {"model": "m", "input": "q"}),
}
EXPECTED_CALLS = {
    "messages_stream_one_call": 1,
    "messages_stream_two_calls": 2,
    "messages_blocking_one_call": 1,
    "chat_stream_one_call": 2,
    "chat_stream_no_usage": 2,
    "chat_blocking_two_calls": 2,
    "responses_stream_one_call": 1,
    "responses_blocking_one_call": 1,
}


def _data(raw: bytes) -> list[tuple[str | None, Any]]:
    out: list[tuple[str | None, Any]] = []
    for block in raw.decode().split("\n\n"):
        lines = block.splitlines()
        event = next((ln[7:] for ln in lines if ln.startswith("event: ")), None)
        data = "\n".join(ln[6:] for ln in lines if ln.startswith("data: "))
        if data:
            out.append((event, data if data == "[DONE]" else json.loads(data)))
    return out


def _stream_round(loop: Any, data: bytes, step: int) -> tuple[bytes, Any]:
    decoder, round_, out = SSEDecoder(keep_raw=True), loop.round(), []
    for at in range(0, len(data), step):
        out += [round_.feed(e) for e in decoder.feed(data[at : at + step])]
    out += [round_.feed(e) for e in decoder.close()]
    return b"".join(out), round_


def test_there_are_eight_cases() -> None:
    assert sorted(p.name for p in CASES.iterdir() if p.is_dir()) == sorted(EXPECTED_CALLS)


@pytest.mark.parametrize("step", [1 << 20, 7, 1])
@pytest.mark.parametrize("case", sorted(EXPECTED_CALLS))
def test_a_two_turn_exchange_is_one_answer(case: str, step: int) -> None:
    api = case.split("_")[0]
    make, body = LOOPS[api]
    loop = make(body, TOOLSET)
    assert loop is not None
    folder = CASES / case
    streamed = (folder / "turn1.sse").exists()
    ext = "sse" if streamed else "json"
    turn1, turn2 = (folder / f"turn1.{ext}").read_bytes(), (folder / f"turn2.{ext}").read_bytes()
    if streamed:
        first, round1 = _stream_round(loop, turn1, step)
    else:
        if step != 1 << 20:
            pytest.skip("a blocking body is not split")
        first, round1 = b"", loop.whole(turn1)
    assert round1.continues
    assert len(round1.calls) == EXPECTED_CALLS[case]
    assert all(c.name.startswith("bmcp_") for c in round1.calls)
    follow = msgspec.json.decode(
        loop.follow_up(round1, [(c, f"result {i}", False) for i, c in enumerate(round1.calls)])
    )
    assert "result 0" in json.dumps(follow)
    if streamed:
        second, round2 = _stream_round(loop, turn2, step)
        assert not round2.continues
        raw = first + second
        assert b"bmcp_" not in raw  # no injected call reaches the client
        _check_stream(api, _data(raw))
    else:
        last = loop.whole(turn2)
        assert not last.continues
        merged = loop.whole_final(last)
        assert b"bmcp_" not in merged
        _check_whole(api, msgspec.json.decode(merged), msgspec.json.decode(turn1))


def _check_stream(api: str, events: list[tuple[str | None, Any]]) -> None:
    if api == "messages":
        kinds = [e for e, _ in events]
        assert kinds.count("message_start") == 1 and kinds[-1] == "message_stop"
        assert kinds.count("message_stop") == 1 and kinds.count("message_delta") == 1
        starts = [d["index"] for e, d in events if e == "content_block_start"]
        assert starts == list(range(len(starts)))
    elif api == "chat":
        assert events[-1][1] == "[DONE]" and [d for _, d in events].count("[DONE]") == 1
        chunks = [d for _, d in events if isinstance(d, dict)]
        assert len({c["id"] for c in chunks}) == 1
        finishes = [c for c in chunks for ch in c.get("choices", []) if ch.get("finish_reason")]
        assert len(finishes) == 1
    else:
        seqs = [d["sequence_number"] for _, d in events]
        assert seqs == list(range(len(seqs)))
        kinds = [d["type"] for _, d in events]
        assert kinds.count("response.created") == 1 and kinds[-1] == "response.completed"
        first_id = next(d["response"]["id"] for _, d in events if d["type"] == "response.created")
        assert events[-1][1]["response"]["id"] == first_id


def _check_whole(api: str, merged: dict[str, Any], turn1: dict[str, Any]) -> None:
    assert merged["id"] == turn1["id"]
    if api == "messages":
        assert merged["usage"]["input_tokens"] > turn1["usage"]["input_tokens"]
    elif api == "chat":
        assert merged["usage"]["prompt_tokens"] > turn1["usage"]["prompt_tokens"]
    else:
        assert merged["usage"]["input_tokens"] > turn1["usage"]["input_tokens"]
