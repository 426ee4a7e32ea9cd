"""The turns of a Responses WebSocket (``SocketTurns``), without sockets.

Each ``response.create`` is one interception; the upstream's text messages
are accounted to their turn by response id; the socket ending records what
is still open. The end-to-end behaviour is in tests/e2e/test_responses_websocket.py.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from relay.access import ClientCredential
from relay.identity import Principal
from relay.intercept.ports import InterceptionPorts
from relay.intercept.responses.websocket import (
    SocketContext,
    SocketTurns,
    TurnRefusal,
    sendable_close_code,
)
from relay.providers.types import Provider, ProviderType
from relay.record.events import InterceptionRecord, TokenUsageRecord, ToolUsageRecord
from relay.testing.mock_responses_ws import events_of, in_lane


class Records:
    def __init__(self) -> None:
        self.rows: list[Any] = []

    def record(self, records: Any) -> None:
        self.rows.extend(records)

    def ended(self) -> list[InterceptionRecord]:
        return [r for r in self.rows if isinstance(r, InterceptionRecord) and r.ended_at]


class NoMetrics:
    def interception_started(self, *args: Any) -> object:
        return object()

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


class NoDumps:
    def begin(self, *args: Any, **kwargs: Any) -> None:
        return None


def turns(refuse: TurnRefusal | None = None) -> tuple[SocketTurns, Records]:
    records = Records()
    ctx = SocketContext(
        ports=InterceptionPorts(records, NoMetrics(), NoDumps(), None),  # type: ignore[arg-type]
        provider=Provider(name="openai", type=ProviderType.OPENAI, keys=("sk-test-key-0001",)),
        api_path="/v1/responses",
        principal=Principal(str(uuid.uuid4()), "alice", "key-1"),
        credential=ClientCredential(relay_token="t", byok=False),
        headers=[(b"originator", b"codex_cli_rs"), (b"session-id", b"s-1")],
        upstream_headers=[],
        instance_id=None,
        max_stored_prompt=None,
        fold_model=lambda model: model,
        admit_turn=lambda model: refuse,
        lifetime=3600,
        ping_interval=0,
    )
    return SocketTurns(ctx), records


def create(model: str = "mock-text", text: str = "hi", **fields: Any) -> str:
    return json.dumps({"type": "response.create", "model": model, "input": text, **fields})


def check_two_turns(records: Records, socket: SocketTurns) -> None:
    """A text turn and a tool turn, each recorded with its own events."""
    ended = records.ended()
    assert len(ended) == 2 and {r.status for r in ended} == {"completed"}
    assert socket.open_turns == 0 and socket.count == 2
    assert len([r for r in records.rows if isinstance(r, TokenUsageRecord)]) == 2
    tools = [r for r in records.rows if isinstance(r, ToolUsageRecord)]
    assert [t.name for t in tools] == ["get_weather"]
    by_model = {r.model: r.id for r in ended}
    assert tools[0].interception_id == by_model["mock-tool"]
    usages = {u.interception_id: u for u in records.rows if isinstance(u, TokenUsageRecord)}
    assert (
        usages[by_model["mock-text"]].output_tokens != usages[by_model["mock-tool"]].output_tokens
    )
    assert {r.client for r in ended} == {"codex"} and {r.client_session_id for r in ended} == {
        "s-1"
    }


async def test_interleaved_turns_are_told_apart_by_stream_id_and_response_id() -> None:
    socket, records = turns()
    assert socket.client_text(create("mock-text", "first", stream_id="lane-a")) is None
    assert socket.client_text(create("mock-tool", "second", stream_id="lane-b")) is None
    # Two lanes served at once: every event echoes its lane's stream_id (only the
    # response.* ones carry the response id), the tool lane's events first.
    text = [in_lane(e, "lane-a") for e in events_of("text", "mock-text", "a" * 24)]
    tool = [in_lane(e, "lane-b") for e in events_of("tool", "mock-tool", "b" * 24)]
    socket.upstream_text(tool[0])
    socket.upstream_text(text[0])
    for a, b in zip(text[1:], tool[1:], strict=False):
        socket.upstream_text(b)
        socket.upstream_text(a)
    for rest in (*text[len(tool) :], *tool[len(text) :]):
        socket.upstream_text(rest)
    check_two_turns(records, socket)


async def test_turns_sent_ahead_without_a_lane_are_served_in_order() -> None:
    # No stream_id: one lane, served first come first served; the events of the
    # first response (most carry no response id) belong to the first turn.
    socket, records = turns()
    assert socket.client_text(create("mock-text", "first")) is None
    assert socket.client_text(create("mock-tool", "second")) is None
    for event in (
        *events_of("text", "mock-text", "a" * 24),
        *events_of("tool", "mock-tool", "b" * 24),
    ):
        socket.upstream_text(event)
    check_two_turns(records, socket)


async def test_an_error_before_response_created_ends_its_turn() -> None:
    socket, records = turns()
    socket.client_text(create())
    error = {"type": "error", "status": 400, "error": {"code": "previous_response_not_found"}}
    socket.upstream_text(json.dumps(error))
    [ended] = records.ended()
    assert ended.status == "failed" and ended.error_type == "previous_response_not_found"


async def test_a_refused_turn_is_answered_and_not_started() -> None:
    socket, records = turns(refuse=TurnRefusal(429, "slow down"))
    answer = socket.client_text(create())
    assert answer is not None and json.loads(answer)["status"] == 429
    assert socket.count == 0 and records.rows == []  # the relay's own rate: not recorded


async def test_a_turn_over_budget_is_recorded_refused() -> None:
    refusal = TurnRefusal(429, "spent", "insufficient_quota", record_as="budget_exceeded")
    socket, records = turns(refuse=refusal)
    answer = socket.client_text(create(text="over budget"))
    assert answer is not None and json.loads(answer)["status"] == 429
    assert json.loads(answer)["error"]["code"] == "insufficient_quota"
    assert socket.count == 0 and socket.open_turns == 0
    [ended] = records.ended()
    assert ended.status == "refused" and ended.error_type == "budget_exceeded"
    assert ended.error_message == "spent"
    # Other client messages are not turns.
    assert socket.client_text('{"type":"response.steer","input":"x"}') is None
    assert socket.client_text("not json") is None


async def test_open_turns_are_recorded_when_the_socket_ends() -> None:
    socket, records = turns()
    socket.client_text(create())
    socket.upstream_text(events_of("text", "mock-text", "c" * 24)[0])
    socket.end_open("cancelled")
    [ended] = records.ended()
    assert ended.status == "cancelled"


def test_close_codes_a_close_frame_cannot_carry_become_1011() -> None:
    assert [sendable_close_code(c) for c in (1000, 1001, 4003, 1005, 1006, 1015, None, 999)] == [
        1000,
        1001,
        4003,
        1011,
        1011,
        1011,
        1011,
        1011,
    ]
