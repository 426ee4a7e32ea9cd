"""MCP tool injection end to end: a real MCP server, the relay, the scripted mock, the SDKs.

The MCP server is the official SDK's (Streamable HTTP on a loopback port, in
this process); the mock upstream calls the tools ``x-mock-tool-script`` names
(``relay.testing.mock_upstream.tool_script``); the official SDKs parse what the
client receives. Each test starts one relay and goes through several cases on it.
"""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import msgspec
import pytest
import trio

from relay.testing.mock_mcp import MockMcp, serve_mock_mcp
from relay.testing.mock_upstream.server import MockUpstream
from relay.testing.mock_upstream.tool_script import HEADER, round_usage
from tests.relay_harness import RunningRelay, mock_providers_env, running_relay

pytestmark = pytest.mark.usefixtures("pg_dsn")

USER = [{"role": "user", "content": "Add two and three."}]
CLIENT_TOOL = {
    "name": "read_file",
    "description": "Reads a file of the client's.",
    "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}},
}


def _script(*rounds: list[tuple[str, dict[str, Any]]]) -> dict[str, str]:
    return {HEADER: json.dumps([[{"name": n, "input": i} for n, i in calls] for calls in rounds])}


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def mcp_relay(
    pg_dsn: str, data_dir: Path, *, mcp_url: str | None = None, **env: str
) -> AsyncIterator[tuple[MockUpstream, RunningRelay, MockMcp | None]]:
    async with trio.open_nursery() as nursery:
        mcp = None
        if mcp_url is None:
            mcp = await serve_mock_mcp(nursery)
            mcp_url = mcp.url
        mock = MockUpstream(chunking="random", seed=3)
        await nursery.start(mock.serve, 0)
        full_env = {
            **mock_providers_env(mock),
            "CODER_AI_GATEWAY_MCP_SERVER_0_NAME": "mock",
            "CODER_AI_GATEWAY_MCP_SERVER_0_URL": mcp_url,
            "CODER_AI_GATEWAY_MCP_SERVER_0_HEADERS": "Authorization: Bearer mcp-secret",
            "CODER_AI_GATEWAY_MCP_SERVER_0_TOOL_DENY_REGEX": "^grow$",
            "CODER_AI_GATEWAY_MCP_CONNECT_TIMEOUT": "2s",
            **env,
        }
        try:
            async with running_relay(pg_dsn, data_dir, full_env) as relay:
                yield mock, relay, mcp
        finally:
            # An SDK client left to the garbage collector closes itself on whatever
            # asyncio loop runs then (the database thread's): close them here.
            while _OPEN:
                await _OPEN.pop().close()
        nursery.cancel_scope.cancel()


_OPEN: list[Any] = []  # the SDK clients of the running test, closed with its relay


def _client(relay: RunningRelay) -> anthropic.AsyncAnthropic:
    client = anthropic.AsyncAnthropic(
        api_key=relay.token, base_url=relay.gateway("anthropic"), max_retries=0
    )
    _OPEN.append(client)
    return client


def _texts(message: Any) -> list[str]:
    return [b.text for b in message.content if b.type == "text"]


def _sse_events(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for block in raw.decode().split("\n\n"):
        lines = block.splitlines()
        event = next((ln[7:] for ln in lines if ln.startswith("event: ")), None)
        data = "".join(ln[6:] for ln in lines if ln.startswith("data: "))
        if event and data:
            out.append((event, json.loads(data)))
    return out


async def test_anthropic_stream_and_blocking_run_the_injected_tools(
    pg_dsn: str, tmp_path: Path
) -> None:
    async with mcp_relay(pg_dsn, tmp_path) as (mock, relay, mcp):
        assert mcp is not None
        client = _client(relay)
        # One call, streamed: the SDK sees one message with both rounds' text.
        async with client.messages.stream(
            model="claude-sonnet-4-5",
            max_tokens=100,
            messages=USER,
            extra_headers=_script([("bmcp_mock_add", {"a": 2, "b": 3})]),
        ) as stream:
            final = await stream.get_final_message()
        assert _texts(final) == ["Checking.", "Done: 5"]
        assert final.stop_reason == "end_turn"
        assert (
            final.usage.input_tokens
            == round_usage(0)["input_tokens"] + round_usage(1)["input_tokens"]
        )
        assert final.usage.output_tokens == 10 + 20
        assert mcp.calls == {"add": 1}
        assert all(h.get("authorization") == "Bearer mcp-secret" for h in mcp.headers)

        first, second = mock.requests[0], mock.requests[1]
        sent = msgspec.json.decode(first.body)
        names = [t["name"] for t in sent["tools"]]
        assert names[:2] == ["bmcp_mock_echo", "bmcp_mock_add"] and "bmcp_mock_grow" not in names
        assert sent["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}
        follow = msgspec.json.decode(second.body)
        assert follow["messages"][0] == USER[0]
        assert follow["messages"][1]["role"] == "assistant"
        assert follow["messages"][1]["content"][1]["name"] == "bmcp_mock_add"
        assert follow["messages"][1]["content"][1]["input"] == {"a": 2, "b": 3}
        assert follow["messages"][2]["content"][0]["type"] == "tool_result"
        assert follow["messages"][2]["content"][0]["content"] == "5"

        # The raw stream: one message_start, blocks numbered 0, 1, one message_stop.
        async with httpx.AsyncClient(timeout=10) as http:
            raw = await http.post(
                relay.gateway("anthropic") + "/v1/messages",
                headers={
                    "x-api-key": relay.token,
                    "anthropic-version": "2023-06-01",
                    **_script([("bmcp_mock_echo", {"text": "hi"})]),
                },
                json={
                    "model": "claude-sonnet-4-5",
                    "max_tokens": 50,
                    "messages": USER,
                    "stream": True,
                },
            )
        events = _sse_events(raw.content)
        kinds = [e for e, _ in events]
        assert kinds.count("message_start") == 1 and kinds.count("message_stop") == 1
        assert kinds.count("message_delta") == 1 and kinds[-1] == "message_stop"
        starts = [d["index"] for e, d in events if e == "content_block_start"]
        assert starts == [0, 1]
        assert not any(d.get("content_block", {}).get("type") == "tool_use" for _, d in events)

        # Two calls in one turn, blocking: one message, both results.
        message = await client.messages.create(
            model="claude-sonnet-4-5",
            max_tokens=100,
            messages=USER,
            extra_headers=_script(
                [("bmcp_mock_add", {"a": 1, "b": 1}), ("bmcp_mock_echo", {"text": "two"})]
            ),
        )
        assert _texts(message) == ["Checking.", "Done: 2 | echo: two"]
        assert message.usage.input_tokens == 300
        assert message.id.startswith("msg_")

        rows = await relay.wait_for_rows(
            "SELECT t.name, t.input, t.injected, t.invocation_error, t.server_url "
            "FROM tool_usages t ORDER BY t.created_at, t.name",
            count=4,
        )
        injected = [r for r in rows if r["injected"]]
        assert sorted(r["name"] for r in injected) == [
            "bmcp_mock_add",
            "bmcp_mock_add",
            "bmcp_mock_echo",
            "bmcp_mock_echo",
        ]
        assert all(r["server_url"] == mcp.url and r["invocation_error"] is None for r in injected)
        usages = await relay.wait_for_rows(
            "SELECT count(*) AS n, sum(input_tokens) AS input FROM token_usages"
        )
        assert (usages[0]["n"], usages[0]["input"]) == (6, 900)


async def test_anthropic_failures_client_tools_and_the_round_cap(
    pg_dsn: str, tmp_path: Path
) -> None:
    async with mcp_relay(
        pg_dsn,
        tmp_path,
        CODER_AI_GATEWAY_MCP_MAX_ROUNDS="3",
        CODER_AI_GATEWAY_MCP_TOOL_TIMEOUT="300ms",
    ) as (_mock, relay, _mcp):
        client = _client(relay)
        # A failing tool: the model is told (is_error), and answers.
        async with client.messages.stream(
            model="claude-sonnet-4-5",
            max_tokens=100,
            messages=USER,
            extra_headers=_script([("bmcp_mock_fail", {"reason": "kaput"})]),
        ) as stream:
            final = await stream.get_final_message()
        assert _texts(final)[-1].startswith("Done: ERROR ")
        # A tool that does not answer in time: a timeout error, and the answer goes on.
        message = await client.messages.create(
            model="claude-sonnet-4-5",
            max_tokens=100,
            messages=USER,
            extra_headers=_script([("bmcp_mock_slow", {"seconds": 30})]),
        )
        assert _texts(message)[-1] == "Done: ERROR the tool call timed out after 0.3s"
        # A tool of the client's own: the loop ends, the client gets its tool_use.
        async with client.messages.stream(
            model="claude-sonnet-4-5",
            max_tokens=100,
            messages=USER,
            tools=[CLIENT_TOOL],  # type: ignore[list-item]
            extra_headers=_script([("read_file", {"path": "/etc/motd"})]),
        ) as stream:
            final = await stream.get_final_message()
        assert final.stop_reason == "tool_use"
        assert [b.type for b in final.content] == ["text", "tool_use"]
        assert final.content[1].name == "read_file"  # type: ignore[union-attr]
        # A runaway loop: stopped at the cap with an error the SDK raises.
        with pytest.raises(anthropic.APIError, match="MCP_MAX_ROUNDS"):
            async with client.messages.stream(
                model="claude-sonnet-4-5",
                max_tokens=100,
                messages=USER,
                extra_headers=_script(*[[("bmcp_mock_echo", {"text": str(i)})] for i in range(5)]),
            ) as stream:
                await stream.get_final_message()
        rows = await relay.wait_for_rows(
            "SELECT i.status, i.error_type FROM interceptions i ORDER BY i.started_at", count=4
        )
        assert [(r["status"], r["error_type"]) for r in rows] == [
            ("completed", None),
            ("completed", None),
            ("completed", None),
            ("failed", "mcp_max_rounds"),
        ]
        errors = await relay.wait_for_rows(
            "SELECT name, invocation_error FROM tool_usages WHERE injected ORDER BY created_at",
            count=2,
        )
        assert errors[0]["name"] == "bmcp_mock_fail" and errors[0]["invocation_error"]
        assert errors[1]["invocation_error"] == "the tool call timed out after 0.3s"
        client_rows = await relay.wait_for_rows(
            "SELECT name FROM tool_usages WHERE NOT injected", count=1
        )
        assert [r["name"] for r in client_rows] == ["read_file"]


def _raw(relay: RunningRelay, api: str, **body: Any) -> tuple[str, dict[str, str], dict[str, Any]]:
    """The URL, headers and body of a hand-made request to ``api``."""
    if api == "anthropic":
        return (
            relay.gateway("anthropic") + "/v1/messages",
            {"x-api-key": relay.token, "anthropic-version": "2023-06-01"},
            {"model": "claude-sonnet-4-5", "max_tokens": 50, "messages": USER, **body},
        )
    auth = {"authorization": f"Bearer {relay.token}"}
    if api == "chat":
        url = relay.gateway("openai") + "/v1/chat/completions"
        return url, auth, {"model": "gpt-x", "messages": USER, **body}
    url = relay.gateway("openai") + "/v1/responses"
    return url, auth, {"model": "gpt-x", "input": USER[0]["content"], **body}


APIS = pytest.mark.parametrize("api", ["anthropic", "chat", "responses"])


@APIS
async def test_a_disconnect_during_a_tool_call_cancels_it(
    pg_dsn: str, tmp_path: Path, api: str
) -> None:
    async with mcp_relay(pg_dsn, tmp_path) as (_mock, relay, mcp):
        assert mcp is not None
        url, headers, body = _raw(relay, api, stream=True)
        async with httpx.AsyncClient(timeout=10) as http:
            async with http.stream(
                "POST",
                url,
                headers={**headers, **_script([("bmcp_mock_slow", {"seconds": 30})])},
                json=body,
            ) as response:
                assert response.status_code == 200
                with trio.fail_after(5):
                    await mcp.slow_started.wait()
        # The client is gone: the interception ends cancelled, at once.
        with trio.fail_after(3):
            rows = await relay.wait_for_rows("SELECT status FROM interceptions")
        assert rows[0]["status"] == "cancelled"
        # ... and the MCP call with it: the server's tool is cancelled too.
        with trio.fail_after(3):
            await mcp.slow_cancelled.wait()


@APIS
async def test_a_server_down_at_start_keeps_the_bytes(
    pg_dsn: str, tmp_path: Path, api: str
) -> None:
    async with mcp_relay(pg_dsn, tmp_path, mcp_url=f"http://127.0.0.1:{_closed_port()}/mcp") as (
        mock,
        relay,
        _,
    ):
        # (A chat stream that does not ask for usage is rewritten to, MCP or not.)
        usage = {"stream_options": {"include_usage": True}} if api == "chat" else {}
        url, headers, fields = _raw(relay, api, stream=True, **usage)
        body = json.dumps(fields).encode()
        async with httpx.AsyncClient(timeout=10) as http:
            response = await http.post(url, headers=headers, content=body)
        assert response.status_code == 200
        assert mock.requests[0].body == body  # nothing injected: the client's own bytes
        if api == "anthropic":
            return
        # Through the SDK, streamed and blocking: answered, and still no tools sent.
        client = _openai(relay)
        for stream in (True, False):
            assert await _openai_text(client, api, stream=stream, headers={})
        for request in mock.requests[1:]:
            sent = msgspec.json.decode(request.body)
            assert "tools" not in sent and "parallel_tool_calls" not in sent
        rows = await relay.wait_for_rows("SELECT status FROM interceptions", count=3)
        assert [r["status"] for r in rows] == ["completed"] * 3


async def test_no_tools_for_a_small_fast_model(pg_dsn: str, tmp_path: Path) -> None:
    async with mcp_relay(pg_dsn, tmp_path) as (mock, relay, _):
        body = json.dumps(
            {"model": "claude-haiku-4-5", "max_tokens": 20, "messages": USER}
        ).encode()
        async with httpx.AsyncClient(timeout=10) as http:
            response = await http.post(
                relay.gateway("anthropic") + "/v1/messages",
                headers={"x-api-key": relay.token, "anthropic-version": "2023-06-01"},
                content=body,
            )
        assert response.status_code == 200
        assert mock.requests[0].body == body


def _openai(relay: RunningRelay) -> Any:
    import openai

    client = openai.AsyncOpenAI(
        api_key=relay.token, base_url=relay.gateway("openai") + "/v1", max_retries=0
    )
    _OPEN.append(client)
    return client


async def test_chat_completions_stream_and_blocking(pg_dsn: str, tmp_path: Path) -> None:
    async with mcp_relay(pg_dsn, tmp_path) as (mock, relay, mcp):
        assert mcp is not None
        client = _openai(relay)
        # Streamed, without include_usage: the SDK's accumulated completion has both
        # rounds' text, one id, no tool call, no usage chunk.
        chunks = []
        stream = await client.chat.completions.create(
            model="gpt-x",
            messages=USER,
            stream=True,
            extra_headers=_script([("bmcp_mock_add", {"a": 2, "b": 3})]),
        )
        async for chunk in stream:
            chunks.append(chunk)
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
            "Checking.Done: 5"
        )
        assert len({c.id for c in chunks}) == 1
        assert not any(c.choices and c.choices[0].delta.tool_calls for c in chunks)
        assert [
            c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
        ] == ["stop"]
        assert all(c.usage is None for c in chunks)
        sent = msgspec.json.decode(mock.requests[0].body)
        assert sent["parallel_tool_calls"] is False
        assert sent["tools"][0]["function"]["name"] == "bmcp_mock_echo"
        # With include_usage: one usage chunk, summed over both rounds.
        async with client.chat.completions.stream(
            model="gpt-x",
            messages=USER,
            stream_options={"include_usage": True},
            extra_headers=_script([("bmcp_mock_echo", {"text": "x"})]),
        ) as s:
            final = await s.get_final_completion()
        assert final.choices[0].message.content == "Checking.Done: echo: x"
        assert final.usage is not None and final.usage.prompt_tokens == 107 + 207
        # Blocking, a failing tool, then a client tool.
        done = await client.chat.completions.create(
            model="gpt-x",
            messages=USER,
            extra_headers=_script([("bmcp_mock_fail", {})]),
        )
        assert done.choices[0].message.content.startswith("Checking.Done: ")
        assert done.usage is not None and done.usage.completion_tokens == 30
        mine = await client.chat.completions.create(
            model="gpt-x",
            messages=USER,
            tools=[{"type": "function", "function": {"name": "read_file", "parameters": {}}}],
            extra_headers=_script([("read_file", {"path": "a"})]),
        )
        assert mine.choices[0].finish_reason == "tool_calls"
        assert mine.choices[0].message.tool_calls[0].function.name == "read_file"
        rows = await relay.wait_for_rows(
            "SELECT name, injected, invocation_error FROM tool_usages ORDER BY created_at", count=4
        )
        assert [(r["name"], r["injected"], r["invocation_error"] is not None) for r in rows] == [
            ("bmcp_mock_add", True, False),
            ("bmcp_mock_echo", True, False),
            ("bmcp_mock_fail", True, True),
            ("read_file", False, False),
        ]


async def test_responses_stream_and_blocking(pg_dsn: str, tmp_path: Path) -> None:
    async with mcp_relay(pg_dsn, tmp_path) as (mock, relay, _):
        client = _openai(relay)
        async with client.responses.stream(
            model="gpt-x",
            input="Add two and three.",
            extra_headers=_script([("bmcp_mock_add", {"a": 2, "b": 3})]),
        ) as stream:
            final = await stream.get_final_response()
        assert final.output_text == "Checking.Done: 5"
        assert [i.type for i in final.output] == ["message", "message"]
        assert final.usage is not None and final.usage.input_tokens == 107 + 207
        sent = msgspec.json.decode(mock.requests[0].body)
        assert sent["parallel_tool_calls"] is False and sent["tools"][0]["name"] == "bmcp_mock_echo"
        follow = msgspec.json.decode(mock.requests[1].body)
        assert follow["input"][-1]["type"] == "function_call_output"
        assert follow["input"][-1]["output"] == "5"
        # Blocking, two calls in one turn.
        response = await client.responses.create(
            model="gpt-x",
            input="Two things.",
            extra_headers=_script(
                [("bmcp_mock_add", {"a": 1, "b": 1}), ("bmcp_mock_echo", {"text": "two"})]
            ),
        )
        assert response.output_text == "Checking.Done: 2 | echo: two"
        assert response.id == msgspec.json.decode(mock.requests[2].response_body)["id"]
        # A count(*) always returns one row: wait for the four usage rows themselves
        # (the recorder writes in the background), then check there are no more.
        rows = await relay.wait_for_rows("SELECT id FROM token_usages", count=4)
        assert len(rows) == 4


async def _openai_text(client: Any, api: str, *, stream: bool, headers: dict[str, str]) -> str:
    """The SDK-parsed answer's text, from Chat Completions or Responses."""
    if api == "chat":
        if stream:
            async with client.chat.completions.stream(
                model="gpt-x", messages=USER, extra_headers=headers
            ) as s:
                completion = await s.get_final_completion()
        else:
            completion = await client.chat.completions.create(
                model="gpt-x", messages=USER, extra_headers=headers
            )
        return str(completion.choices[0].message.content)
    text = USER[0]["content"]
    if stream:
        async with client.responses.stream(model="gpt-x", input=text, extra_headers=headers) as s:
            response = await s.get_final_response()
    else:
        response = await client.responses.create(model="gpt-x", input=text, extra_headers=headers)
    return str(response.output_text)


@pytest.mark.parametrize("api", ["chat", "responses"])
async def test_openai_tool_timeout(pg_dsn: str, tmp_path: Path, api: str) -> None:
    async with mcp_relay(pg_dsn, tmp_path, CODER_AI_GATEWAY_MCP_TOOL_TIMEOUT="300ms") as (
        _mock,
        relay,
        _mcp,
    ):
        client = _openai(relay)
        # A tool that does not answer in time, streamed and blocking: the model is
        # given the timeout's text, and the answer goes on.
        for stream in (True, False):
            text = await _openai_text(
                client, api, stream=stream, headers=_script([("bmcp_mock_slow", {"seconds": 30})])
            )
            assert text.endswith("the tool call timed out after 0.3s")
        rows = await relay.wait_for_rows(
            "SELECT i.status, i.error_type FROM interceptions i ORDER BY i.started_at", count=2
        )
        assert [(r["status"], r["error_type"]) for r in rows] == [("completed", None)] * 2
        calls = await relay.wait_for_rows(
            "SELECT name, injected, invocation_error FROM tool_usages ORDER BY created_at", count=2
        )
        assert [(r["name"], r["injected"], r["invocation_error"]) for r in calls] == [
            ("bmcp_mock_slow", True, "the tool call timed out after 0.3s")
        ] * 2


@pytest.mark.parametrize("api", ["chat", "responses"])
async def test_openai_round_cap(pg_dsn: str, tmp_path: Path, api: str) -> None:
    import openai

    # The default tool timeout: a loaded machine must not turn an echo into a timeout.
    async with mcp_relay(pg_dsn, tmp_path, CODER_AI_GATEWAY_MCP_MAX_ROUNDS="3") as (
        _mock,
        relay,
        _mcp,
    ):
        client = _openai(relay)
        # A runaway loop, streamed and blocking: stopped at the cap with an error the SDK raises.
        runaway = _script(*[[("bmcp_mock_echo", {"text": str(i)})] for i in range(5)])
        for stream in (True, False):
            with pytest.raises(openai.APIError, match="MCP_MAX_ROUNDS"):
                await _openai_text(client, api, stream=stream, headers=runaway)
        rows = await relay.wait_for_rows(
            "SELECT i.status, i.error_type FROM interceptions i ORDER BY i.started_at", count=2
        )
        assert [(r["status"], r["error_type"]) for r in rows] == [("failed", "mcp_max_rounds")] * 2
        calls = await relay.wait_for_rows(
            "SELECT name, injected, invocation_error FROM tool_usages ORDER BY created_at",
            count=2 * 2,
        )
        assert [(r["name"], r["injected"], r["invocation_error"]) for r in calls] == [
            ("bmcp_mock_echo", True, None)
        ] * 4
