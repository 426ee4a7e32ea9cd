"""Issue 17: the Responses API over WebSocket, through the real relay.

A real hypercorn relay on loopback, a trio-websocket client (the official
``openai`` SDK's WebSocket mode needs the ``websockets`` package and asyncio),
the mock upstream WebSocket (``relay.testing.mock_responses_ws``) speaking
the Responses event protocol, and the relay's own PostgreSQL.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    WebSocketConnection,
    connect_websocket_url,
    open_websocket_url,
)

from relay.auth import create_token, create_user
from relay.budgets.store import set_budget
from relay.db import Database
from relay.testing.mock_responses_ws import MockResponsesSocket
from relay.testing.mock_upstream import scenarios
from tests.relay_harness import RunningRelay, config_settled, running_relay

KEY = "sk-upstream-test-key-0001"
CODEX_UA = "codex_cli_rs/0.46.0 (Ubuntu 24.4.0; x86_64) xterm-256color"
SESSION = "0199a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"


@contextlib.asynccontextmanager
async def ws_relay(
    pg_dsn: str, tmp_path: Path, extra_env: Mapping[str, str] | None = None
) -> AsyncIterator[tuple[MockResponsesSocket, RunningRelay]]:
    mock = MockResponsesSocket(key=KEY)
    async with trio.open_nursery() as nursery:
        await nursery.start(mock.serve)
        env = {
            "CODER_AI_GATEWAY_PROVIDER_0_TYPE": "anthropic",
            "CODER_AI_GATEWAY_PROVIDER_0_NAME": "anthropic",
            "CODER_AI_GATEWAY_PROVIDER_0_KEY": KEY,
            "CODER_AI_GATEWAY_PROVIDER_0_BASE_URL": mock.base_url,
            "CODER_AI_GATEWAY_PROVIDER_1_TYPE": "openai",
            "CODER_AI_GATEWAY_PROVIDER_1_NAME": "openai",
            "CODER_AI_GATEWAY_PROVIDER_1_KEY": KEY,
            "CODER_AI_GATEWAY_PROVIDER_1_BASE_URL": mock.base_url,
            # The same provider with its WebSocket switched off.
            "CODER_AI_GATEWAY_PROVIDER_2_TYPE": "openai",
            "CODER_AI_GATEWAY_PROVIDER_2_NAME": "openai-http",
            "CODER_AI_GATEWAY_PROVIDER_2_KEY": KEY,
            "CODER_AI_GATEWAY_PROVIDER_2_BASE_URL": mock.base_url,
            "CODER_AI_GATEWAY_PROVIDER_2_RESPONSES_WEBSOCKET": "false",
            **(extra_env or {}),
        }
        async with running_relay(pg_dsn, tmp_path, env) as relay:
            yield mock, relay
        nursery.cancel_scope.cancel()


def ws_url(relay: RunningRelay, provider: str = "openai", path: str = "/v1/responses") -> str:
    return relay.gateway(provider).replace("http://", "ws://") + path


def client_headers(token: str, **extra: str) -> list[tuple[bytes, bytes]]:
    headers = [
        (b"authorization", f"Bearer {token}".encode()),
        (b"user-agent", CODEX_UA.encode()),
        (b"originator", b"codex_cli_rs"),
        (b"session-id", SESSION.encode()),
        (b"openai-beta", b"responses_websockets=2026-02-06"),
    ]
    headers += [(k.replace("_", "-").encode(), v.encode()) for k, v in extra.items()]
    return headers


def create(model: str = "mock-text", text: str = "Say hello", **fields: Any) -> str:
    body = {
        "type": "response.create",
        "model": model,
        "input": [{"role": "user", "content": [{"type": "input_text", "text": text}]}],
        **fields,
    }
    return json.dumps(body)


async def read_turn(ws: WebSocketConnection) -> list[dict[str, Any]]:
    """Events until the turn's terminal event (or an error event)."""
    events: list[dict[str, Any]] = []
    with trio.fail_after(10):
        while True:
            message = await ws.get_message()
            assert isinstance(message, str)  # text stays text
            event = json.loads(message)
            events.append(event)
            if event["type"] in ("response.completed", "response.incomplete", "response.failed"):
                return events
            if event["type"] == "error":
                return events


async def interceptions(relay: RunningRelay, count: int) -> list[Any]:
    return await relay.wait_for_rows(
        "SELECT i.*, u.input_tokens, u.output_tokens FROM interceptions i "
        "LEFT JOIN token_usages u ON u.interception_id = i.id ORDER BY i.started_at",
        count=count,
    )


async def test_several_turns_with_previous_response_id(pg_dsn: str, tmp_path: Path) -> None:
    dumps = tmp_path / "dumps"
    async with ws_relay(pg_dsn, tmp_path, {"CODER_AI_GATEWAY_DUMP_DIR": str(dumps)}) as (
        mock,
        relay,
    ):
        async with open_websocket_url(
            ws_url(relay), extra_headers=client_headers(relay.token)
        ) as ws:
            await ws.send_message(create(text="first question"))
            first = await read_turn(ws)
            assert first[0]["type"] == "response.created"
            assert first[-1]["type"] == "response.completed"
            first_id = first[-1]["response"]["id"]
            await ws.send_message(create(text="second question", previous_response_id=first_id))
            second = await read_turn(ws)
            assert second[-1]["type"] == "response.completed"
            # A tool-call turn on the same socket.
            await ws.send_message(
                create("mock-tool", "use a tool", previous_response_id=second[-1]["response"]["id"])
            )
            third = await read_turn(ws)
            assert any(e["type"] == "response.function_call_arguments.done" for e in third)
        rows = await interceptions(relay, 3)
        assert [r["status"] for r in rows] == ["completed"] * 3
        assert {r["route"] for r in rows} == {"/v1/responses"}
        assert {r["client"] for r in rows} == {"codex"}
        assert {r["client_session_id"] for r in rows} == {SESSION}
        assert all(r["output_tokens"] for r in rows)
        prompts = await relay.wait_for_rows(
            "SELECT p.prompt FROM user_prompts p JOIN interceptions i ON i.id = p.interception_id "
            "ORDER BY i.started_at",
            count=3,
        )
        assert [p["prompt"] for p in prompts] == ["first question", "second question", "use a tool"]
        tools = await relay.wait_for_rows("SELECT name, input FROM tool_usages", count=1)
        assert [(t["name"], t["input"]) for t in tools] == [
            (scenarios.TOOL_CALL.name, scenarios.TOOL_CALL.arguments)
        ]
        # The upstream saw the provider's key and the client's headers, and the messages as sent.
        upgrade = mock.upgrades[0]
        assert upgrade["authorization"] == f"Bearer {KEY}"
        assert upgrade["openai-beta"] == "responses_websockets=2026-02-06"
        assert upgrade["session-id"] == SESSION
        assert upgrade["originator"] == "codex_cli_rs"
        assert json.loads(mock.received[0])["input"][0]["content"][0]["text"] == "first question"
        # Metrics: the socket is closed again, with its three turns; each turn an interception.
        metrics = relay.app.services.metrics.render()  # type: ignore[union-attr]
        assert b'relay_responses_websockets_open{provider="openai"} 0.0' in metrics
        assert b'relay_responses_websocket_turns_sum{provider="openai"} 3.0' in metrics
        # One dump per turn: the response.create as the request, the events as the response.
        with trio.fail_after(5):
            while len(requests := sorted(dumps.glob("openai/**/*.req.txt"))) < 3:
                await trio.sleep(0.05)
        assert "first question" in requests[0].read_text()
        assert (
            "response.completed"
            in requests[0].with_name(requests[0].name.replace(".req.txt", ".resp.txt")).read_text()
        )


async def test_interleaved_turns_are_told_apart(pg_dsn: str, tmp_path: Path) -> None:
    async with ws_relay(pg_dsn, tmp_path) as (mock, relay):
        mock.interleave = 2  # two lanes answered at once, event for event
        async with open_websocket_url(
            ws_url(relay), extra_headers=client_headers(relay.token)
        ) as ws:
            # The tool turn first: its function_call events (no response id) are its own.
            await ws.send_message(create("mock-tool", "the tool lane", stream_id="lane-b"))
            await ws.send_message(create("mock-text", "the text lane", stream_id="lane-a"))
            events: list[dict[str, Any]] = []
            done: set[str] = set()
            with trio.fail_after(10):
                while len(done) < 2:
                    event = json.loads(await ws.get_message())
                    events.append(event)
                    if event["type"] == "response.completed":
                        done.add(event["stream_id"])
        # The client got both lanes, interleaved as the provider sent them.
        lanes = [e["stream_id"] for e in events]
        assert lanes[:6] == ["lane-b", "lane-a"] * 3
        ids = {
            e["stream_id"]: e["response"]["id"] for e in events if e["type"] == "response.created"
        }
        assert ids["lane-a"] != ids["lane-b"]
        usage = {
            e["stream_id"]: e["response"]["usage"]
            for e in events
            if e["type"] == "response.completed"
        }
        rows = await relay.wait_for_rows(
            "SELECT i.model, i.status, u.provider_response_id, u.input_tokens, u.output_tokens, "
            "p.prompt FROM interceptions i "
            "JOIN token_usages u ON u.interception_id = i.id "
            "JOIN user_prompts p ON p.interception_id = i.id ORDER BY i.model",
            count=2,
        )
        assert [
            (r["model"], r["status"], r["provider_response_id"], r["prompt"]) for r in rows
        ] == [
            ("mock-text", "completed", ids["lane-a"], "the text lane"),
            ("mock-tool", "completed", ids["lane-b"], "the tool lane"),
        ]
        # Each its own usage, as its own response.completed gave it.
        assert [r["output_tokens"] for r in rows] == [
            usage["lane-a"]["output_tokens"],
            usage["lane-b"]["output_tokens"],
        ]
        assert rows[0]["output_tokens"] != rows[1]["output_tokens"]
        tools = await relay.wait_for_rows(
            "SELECT i.model, t.provider_response_id, t.name FROM tool_usages t "
            "JOIN interceptions i ON i.id = t.interception_id",
            count=1,
        )
        assert [(t["model"], t["provider_response_id"], t["name"]) for t in tools] == [
            ("mock-tool", ids["lane-b"], scenarios.TOOL_CALL.name)
        ]


async def test_refusals_of_the_upgrade(pg_dsn: str, tmp_path: Path) -> None:
    async with ws_relay(pg_dsn, tmp_path) as (mock, relay):
        # No or a bad relay token: 401, before anything goes upstream.
        with pytest.raises(ConnectionRejected) as refused:
            async with open_websocket_url(
                ws_url(relay), extra_headers=client_headers("not-a-token")
            ):
                pass
        assert refused.value.status_code == 401
        assert json.loads(refused.value.body or b"")["error"]["message"]
        # A provider type or path the relay does not bridge: 426 (Codex falls back to HTTP).
        for provider, path in (
            ("anthropic", "/v1/messages"),
            ("openai", "/v1/chat/completions"),
            ("openai-http", "/v1/responses"),  # its RESPONSES_WEBSOCKET is false
        ):
            with pytest.raises(ConnectionRejected) as refused:
                async with open_websocket_url(
                    ws_url(relay, provider, path), extra_headers=client_headers(relay.token)
                ):
                    pass
            assert refused.value.status_code == 426, (provider, path)
        # The provider refusing the upgrade: its status and body, not an accepted socket.
        with pytest.raises(ConnectionRejected) as refused:
            async with open_websocket_url(
                ws_url(relay), extra_headers=client_headers(relay.token, x_mock_ws_reject="429")
            ):
                pass
        assert refused.value.status_code == 429
        assert b"refused by the mock" in (refused.value.body or b"")
        # A header block over the relay's bound (16 KiB), however TCP split it: 431,
        # as over HTTP, and nothing of it goes upstream.
        many = {f"x_pad_{i}": "p" * 1000 for i in range(20)}
        with pytest.raises(ConnectionRejected) as refused:
            async with open_websocket_url(
                ws_url(relay), extra_headers=client_headers(relay.token, **many)
            ):
                pass
        assert refused.value.status_code == 431
        assert json.loads(refused.value.body or b"")["error"]["message"]
        assert mock.upgrades == []


async def test_feature_off_and_socket_caps_answer_426(pg_dsn: str, tmp_path: Path) -> None:
    env = {
        "CODER_AI_GATEWAY_RESPONSES_WEBSOCKET_MAX_PER_USER": "1",
        "CODER_AI_GATEWAY_RESPONSES_WEBSOCKET_MAX": "2",
    }
    async with ws_relay(pg_dsn, tmp_path, env) as (_mock, relay):
        tokens = {"alice": relay.token}
        for user in ("bob", "carol"):
            await create_user(relay.db, user)
            tokens[user], _ = await create_token(relay.db, user)
        await config_settled(relay.app)

        async def refused_with(token: str) -> int:
            with pytest.raises(ConnectionRejected) as refused:
                async with open_websocket_url(ws_url(relay), extra_headers=client_headers(token)):
                    pass
            return refused.value.status_code

        headers = client_headers(relay.token)
        async with open_websocket_url(ws_url(relay), extra_headers=headers):
            # alice's second socket: over the per-person cap.
            assert await refused_with(relay.token) == 426
            async with open_websocket_url(
                ws_url(relay), extra_headers=client_headers(tokens["bob"])
            ):
                # carol holds none, but the process holds its two: over the process cap.
                assert await refused_with(tokens["carol"]) == 426
        metrics = relay.app.services.metrics.render()  # type: ignore[union-attr]
        assert b'relay_responses_websocket_refusals_total{reason="user_cap"} 1.0' in metrics
        assert b'relay_responses_websocket_refusals_total{reason="process_cap"} 1.0' in metrics
        # The places are given back when the sockets close.
        async with open_websocket_url(ws_url(relay), extra_headers=headers) as ws:
            await ws.send_message(create())
            assert (await read_turn(ws))[-1]["type"] == "response.completed"


async def test_feature_off_answers_426(pg_dsn: str, tmp_path: Path) -> None:
    async with ws_relay(pg_dsn, tmp_path, {"CODER_AI_GATEWAY_RESPONSES_WEBSOCKET": "false"}) as (
        mock,
        relay,
    ):
        with pytest.raises(ConnectionRejected) as refused:
            async with open_websocket_url(ws_url(relay), extra_headers=client_headers(relay.token)):
                pass
        assert refused.value.status_code == 426
        assert mock.upgrades == []


async def test_close_codes_go_both_ways(pg_dsn: str, tmp_path: Path) -> None:
    async with ws_relay(pg_dsn, tmp_path) as (mock, relay):
        headers = client_headers(relay.token)
        # The provider closes mid-response with its code: the client gets the same code.
        async with open_websocket_url(ws_url(relay), extra_headers=headers) as ws:
            await ws.send_message(create("mock-ws-close-4003", "closing"))
            with pytest.raises(ConnectionClosed) as closed:
                await read_turn(ws)
            assert closed.value.reason.code == 4003
        # The provider drops the TCP connection (1006 on the relay's side): 1011 to the client.
        async with open_websocket_url(ws_url(relay), extra_headers=headers) as ws:
            await ws.send_message(create("mock-ws-drop", "dropping"))
            with pytest.raises(ConnectionClosed) as closed:
                await read_turn(ws)
            assert closed.value.reason.code == 1011
        # The client closes with its code: the provider gets the same code.
        mock.socket_closed = trio.Event()
        async with open_websocket_url(ws_url(relay), extra_headers=headers) as ws:
            await ws.send_message(create())
            await read_turn(ws)
            await ws.aclose(4000)
        with trio.fail_after(5):
            await mock.socket_closed.wait()
        assert mock.closes[-1] == 4000
        rows = await interceptions(relay, 3)
        assert [r["status"] for r in rows] == ["failed", "failed", "completed"]
        assert rows[0]["error_type"] == "upstream_closed"


async def test_client_leaving_mid_turn_closes_the_upstream(pg_dsn: str, tmp_path: Path) -> None:
    async with ws_relay(pg_dsn, tmp_path) as (mock, relay):
        mock.event_delay = 0.05
        async with open_websocket_url(
            ws_url(relay), extra_headers=client_headers(relay.token)
        ) as ws:
            await ws.send_message(create("mock-long", "a long answer"))
            assert json.loads(await ws.get_message())["type"] == "response.created"
        with trio.fail_after(5):
            await mock.socket_closed.wait()
        rows = await interceptions(relay, 1)
        assert rows[0]["status"] == "cancelled"
        assert len(mock.closes) == 1


async def test_a_5_mb_message_passes(pg_dsn: str, tmp_path: Path) -> None:
    async with ws_relay(pg_dsn, tmp_path) as (mock, relay):
        big = "x" * (5 * 1000 * 1000)
        async with open_websocket_url(
            ws_url(relay), extra_headers=client_headers(relay.token), max_message_size=16 << 20
        ) as ws:
            await ws.send_message(create(text=big))
            assert (await read_turn(ws))[-1]["type"] == "response.completed"
        assert len(mock.received[0]) > 5_000_000
        prompts = await relay.wait_for_rows(
            "SELECT truncated, original_bytes FROM user_prompts", count=1
        )
        assert prompts[0]["truncated"] and prompts[0]["original_bytes"] == len(big)


async def test_refused_turns_get_an_error_event_and_the_socket_stays_open(
    pg_dsn: str, tmp_path: Path
) -> None:
    async with ws_relay(pg_dsn, tmp_path, {"CODER_AI_GATEWAY_RATE_LIMIT": "2"}) as (mock, relay):
        async with open_websocket_url(
            ws_url(relay), extra_headers=client_headers(relay.token)
        ) as ws:
            # No model: refused by the relay (400), as on HTTP; nothing goes upstream.
            await ws.send_message(json.dumps({"type": "response.create", "input": "hi"}))
            assert (await read_turn(ws))[0]["status"] == 400
            for _ in range(2):  # the rate limit's burst (the 400 above took nothing)
                await ws.send_message(create())
                assert (await read_turn(ws))[-1]["type"] == "response.completed"
            await ws.send_message(create())
            refusal = await read_turn(ws)
            assert refusal == [
                {
                    "type": "error",
                    "status": 429,
                    "error": {
                        "type": "requests",
                        "code": "rate_limit_exceeded",
                        "message": refusal[0]["error"]["message"],
                        "param": None,
                    },
                }
            ]
            # The provider's own error event for a turn: recorded as failed.
            await trio.sleep(0.55)
            await ws.send_message(create(previous_response_id="resp_unknown"))
            error = await read_turn(ws)
            assert error[0]["error"]["code"] == "previous_response_not_found"
        assert len([m for m in mock.received if "response.create" in m]) == 3
        rows = await interceptions(relay, 3)
        assert [r["status"] for r in rows] == ["completed", "completed", "failed"]
        assert rows[2]["error_type"] == "previous_response_not_found"


async def test_the_lifetime_ends_the_socket(pg_dsn: str, tmp_path: Path) -> None:
    env = {"CODER_AI_GATEWAY_RESPONSES_WEBSOCKET_LIFETIME": "300ms"}
    async with ws_relay(pg_dsn, tmp_path, env) as (mock, relay):
        async with open_websocket_url(
            ws_url(relay), extra_headers=client_headers(relay.token)
        ) as ws:
            with trio.fail_after(5):
                event = json.loads(await ws.get_message())
            assert event["error"]["code"] == "websocket_connection_limit_reached"
            with pytest.raises(ConnectionClosed) as closed:
                await ws.get_message()
            assert closed.value.reason.code == 1001
        with trio.fail_after(5):
            await mock.socket_closed.wait()
        assert mock.closes == [1001]


async def test_a_slow_client_slows_the_upstream(pg_dsn: str, tmp_path: Path) -> None:
    async with ws_relay(pg_dsn, tmp_path) as (mock, relay):
        mock.long_events, mock.event_padding = 100, 128 * 1024  # about 13 MB of deltas
        async with open_websocket_url(
            ws_url(relay), extra_headers=client_headers(relay.token), receive_buffer_size=1 << 16
        ) as ws:
            await ws.send_message(create("mock-long", "a long answer"))
            await trio.sleep(0.3)  # the client reads nothing meanwhile
            stalled = mock.sent
            print("events sent while the client stalled:", stalled)
            # What the provider could send is what the sockets' buffers hold,
            # not the stream: the relay reads one message ahead of the client.
            assert stalled < 50, stalled  # of 108 events
            started = trio.current_time()
            events = await read_turn(ws)
            print("read in", trio.current_time() - started)
            assert events[-1]["type"] == "response.completed"
            assert mock.sent == 108


async def test_a_shutdown_closes_open_sockets_and_records_the_cut_turn(
    pg_dsn: str, tmp_path: Path
) -> None:
    env = {"CODER_AI_GATEWAY_SHUTDOWN_GRACE": "200ms"}
    async with trio.open_nursery() as nursery:
        async with ws_relay(pg_dsn, tmp_path, env) as (mock, relay):
            mock.long_events, mock.event_delay = 100, 0.05
            ws = await connect_websocket_url(
                nursery, ws_url(relay), extra_headers=client_headers(relay.token)
            )
            await ws.send_message(create("mock-long", "cut by the shutdown"))
            assert json.loads(await ws.get_message())["type"] == "response.created"
        # The relay has stopped: the socket was closed with 1001, going away.
        with pytest.raises(ConnectionClosed) as closed, trio.fail_after(5):
            while True:
                await ws.get_message()
        assert closed.value.reason.code == 1001
        nursery.cancel_scope.cancel()
    async with Database.open(pg_dsn, max_size=1) as db:
        rows = await db.fetch("SELECT status FROM interceptions")
    assert [r["status"] for r in rows] == ["cancelled"]


async def test_a_spent_budget_refuses_the_next_turn(pg_dsn: str, tmp_path: Path) -> None:
    env = {"CODER_AI_GATEWAY_BUDGET_REFRESH_INTERVAL": "100ms"}
    async with ws_relay(pg_dsn, tmp_path, env) as (mock, relay):
        await set_budget(relay.db, "alice-monthly", user="alice", limit_micros=1)
        budgets = relay.app.services.budgets  # type: ignore[union-attr]
        with trio.fail_after(10):
            while not budgets.budgets:
                await trio.sleep(0.01)
        async with open_websocket_url(
            ws_url(relay), extra_headers=client_headers(relay.token)
        ) as ws:
            await ws.send_message(create("gpt-4o", "a priced turn"))
            assert (await read_turn(ws))[-1]["type"] == "response.completed"
            [row] = await interceptions(relay, 1)
            user, key = str(row["initiator_id"]), row["api_key_id"]
            with trio.fail_after(10):  # its cost reaches the budget's spend
                while budgets.check(user, key, "gpt-4o") is None:
                    await trio.sleep(0.05)
            await ws.send_message(create("gpt-4o", "over budget"))
            refusal = await read_turn(ws)
            assert refusal[0]["status"] == 429
            assert refusal[0]["error"]["code"] == "insufficient_quota"
        assert len([m for m in mock.received if "response.create" in m]) == 1
        # Recorded as an HTTP request over budget is: a refused row, with its prompt.
        [refused] = await relay.wait_for_rows(
            "SELECT i.status, i.error_type, i.client, p.prompt FROM interceptions i "
            "JOIN user_prompts p ON p.interception_id = i.id WHERE i.status = 'refused'",
            count=1,
        )
        assert (refused["error_type"], refused["client"], refused["prompt"]) == (
            "budget_exceeded",
            "codex",
            "over budget",
        )
