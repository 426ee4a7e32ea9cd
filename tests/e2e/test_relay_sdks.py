"""The official SDKs through the relay, against the mock upstream.

Each test runs the real relay (hypercorn, trio worker) on a loopback port,
on its own PostgreSQL database, in front of the bundled mock upstream, and
checks what the client sees and what the relay recorded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import anthropic
import httpx
import openai
import pytest
import trio

from relay.testing.mock_upstream import scenarios
from tests.relay_harness import mock_and_relay

pytestmark = pytest.mark.usefixtures("pg_dsn")


def anthropic_client(relay, provider: str = "anthropic") -> anthropic.AsyncAnthropic:  # type: ignore[no-untyped-def]
    return anthropic.AsyncAnthropic(
        api_key=relay.token, base_url=relay.gateway(provider), max_retries=0
    )


def openai_client(relay, provider: str = "openai") -> openai.AsyncOpenAI:  # type: ignore[no-untyped-def]
    return openai.AsyncOpenAI(
        api_key=relay.token, base_url=relay.gateway(provider) + "/v1", max_retries=0
    )


USER = [{"role": "user", "content": "What is the weather in Paris?"}]


async def test_anthropic_stream_text_and_usage_recorded(pg_dsn, tmp_path):
    async with mock_and_relay(pg_dsn, tmp_path, chunking="random") as (mock, relay):
        client = anthropic_client(relay)
        async with client.messages.stream(
            model="mock-text", max_tokens=100, messages=USER
        ) as stream:
            text = "".join([t async for t in stream.text_stream])
            final = await stream.get_final_message()
        assert text == scenarios.TEXT
        expected = scenarios.usage_for("text")
        assert final.usage.input_tokens == expected.input_tokens

        upstream = mock.requests[0]
        # The relay token never reaches the provider; the provider key does.
        assert upstream.header("x-api-key") == "sk-upstream-test-key-0001"
        assert relay.token not in repr(upstream.headers)

        rows = await relay.wait_for_rows(
            "SELECT i.status, i.provider_name, i.model, i.client, u.input_tokens, "
            "u.output_tokens, u.cache_read_tokens, u.cache_write_tokens, p.prompt "
            "FROM interceptions i JOIN token_usages u ON u.interception_id = i.id "
            "JOIN user_prompts p ON p.interception_id = i.id"
        )
        row = rows[0]
        assert row["status"] == "completed"
        assert row["provider_name"] == "anthropic"
        assert row["model"] == "mock-text"
        assert (row["input_tokens"], row["output_tokens"]) == (
            expected.input_tokens,
            expected.output_tokens,
        )
        assert row["cache_read_tokens"] == expected.cache_read_tokens
        assert row["cache_write_tokens"] == expected.cache_write_tokens
        assert row["prompt"] == USER[0]["content"]


async def test_anthropic_blocking_tool_use(pg_dsn, tmp_path):
    async with mock_and_relay(pg_dsn, tmp_path) as (_mock, relay):
        client = anthropic_client(relay)
        message = await client.messages.create(model="mock-tool", max_tokens=100, messages=USER)
        tool = next(b for b in message.content if b.type == "tool_use")
        assert tool.name == scenarios.TOOL_CALL.name
        rows = await relay.wait_for_rows("SELECT name, input FROM tool_usages")
        assert rows[0]["name"] == scenarios.TOOL_CALL.name
        assert json.loads(rows[0]["input"]) == tool.input


async def test_anthropic_stream_parallel_tools_and_thinking(pg_dsn, tmp_path):
    async with mock_and_relay(pg_dsn, tmp_path, chunking="random") as (_mock, relay):
        client = anthropic_client(relay)
        async with client.messages.stream(
            model="mock-parallel-tools", max_tokens=100, messages=USER
        ) as stream:
            final = await stream.get_final_message()
        calls = [b for b in final.content if b.type == "tool_use"]
        assert len(calls) == len(scenarios.PARALLEL_TOOL_CALLS)
        async with client.messages.stream(
            model="mock-thinking", max_tokens=100, messages=USER
        ) as stream:
            final = await stream.get_final_message()
        thinking = next(b for b in final.content if b.type == "thinking")
        assert thinking.thinking == scenarios.THINKING
        rows = await relay.wait_for_rows(
            "SELECT name, input FROM tool_usages ORDER BY name", count=len(calls)
        )
        assert sorted(r["name"] for r in rows) == sorted(c.name for c in calls)
        for call in calls:
            stored = next(r for r in rows if r["name"] == call.name)
            assert json.loads(stored["input"]) == call.input
        thoughts = await relay.wait_for_rows("SELECT content FROM model_thoughts")
        assert thoughts[0]["content"] == scenarios.THINKING


async def test_openai_chat_stream_usage_injected_and_hidden(pg_dsn, tmp_path):
    """The relay asks for usage; the client sees exactly what it would see directly."""
    async with mock_and_relay(pg_dsn, tmp_path, chunking="random") as (mock, relay):
        client = openai_client(relay)
        stream = await client.chat.completions.create(model="mock-tool", messages=USER, stream=True)
        chunks = [c async for c in stream]
        assert all(c.usage is None for c in chunks)  # the injected usage chunk is gone
        args = "".join(
            tc.function.arguments or ""
            for c in chunks
            for ch in c.choices
            for tc in (ch.delta.tool_calls or [])
        )
        assert json.loads(args) == json.loads(scenarios.TOOL_CALL.arguments)
        sent = mock.requests[0].json()
        assert sent["stream_options"] == {"include_usage": True}
        expected = scenarios.usage_for("tool")
        rows = await relay.wait_for_rows(
            "SELECT u.input_tokens, u.output_tokens, u.cache_read_tokens, t.name "
            "FROM token_usages u JOIN tool_usages t USING (interception_id)"
        )
        assert rows[0]["input_tokens"] == expected.input_tokens  # prompt minus cached
        assert rows[0]["cache_read_tokens"] == expected.cache_read_tokens
        assert rows[0]["output_tokens"] == expected.output_tokens


async def test_openai_chat_stream_with_include_usage_is_untouched(pg_dsn, tmp_path):
    async with mock_and_relay(pg_dsn, tmp_path) as (_mock, relay):
        client = openai_client(relay)
        stream = await client.chat.completions.create(
            model="mock-text",
            messages=USER,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [c async for c in stream]
        assert chunks[-1].usage is not None
        assert chunks[-1].usage.completion_tokens == scenarios.usage_for("text").output_tokens


async def test_openai_chat_blocking(pg_dsn, tmp_path):
    async with mock_and_relay(pg_dsn, tmp_path) as (_mock, relay):
        client = openai_client(relay)
        completion = await client.chat.completions.create(model="mock-text", messages=USER)
        assert completion.choices[0].message.content == scenarios.TEXT
        rows = await relay.wait_for_rows("SELECT output_tokens FROM token_usages")
        assert rows[0]["output_tokens"] == scenarios.usage_for("text").output_tokens


async def test_openai_responses_stream_function_calls_and_reasoning(pg_dsn, tmp_path):
    async with mock_and_relay(pg_dsn, tmp_path, chunking="random") as (_mock, relay):
        client = openai_client(relay)
        stream = await client.responses.create(
            model="mock-parallel-tools", input="What is the weather?", stream=True
        )
        events = [e async for e in stream]
        done = events[-1]
        assert done.type == "response.completed"
        calls = [o for o in done.response.output if o.type == "function_call"]
        assert len(calls) == len(scenarios.PARALLEL_TOOL_CALLS)
        stream = await client.responses.create(
            model="mock-thinking", input="What is the answer?", stream=True
        )
        events = [e async for e in stream]
        assert events[-1].type == "response.completed"
        rows = await relay.wait_for_rows(
            "SELECT name FROM tool_usages", count=len(scenarios.PARALLEL_TOOL_CALLS)
        )
        assert sorted(r["name"] for r in rows) == sorted(c.name for c in calls)
        thoughts = await relay.wait_for_rows("SELECT content FROM model_thoughts")
        assert thoughts[0]["content"] == scenarios.REASONING_SUMMARY
        usage = await relay.wait_for_rows(
            "SELECT u.extra FROM token_usages u JOIN interceptions i ON i.id = u.interception_id "
            "WHERE i.model = 'mock-thinking'"
        )
        extra = usage[0]["extra"]
        extra = json.loads(extra) if isinstance(extra, str) else extra
        assert scenarios.usage_for("thinking").reasoning_tokens in extra.values()


async def test_openai_responses_blocking(pg_dsn, tmp_path):
    async with mock_and_relay(pg_dsn, tmp_path) as (_mock, relay):
        client = openai_client(relay)
        response = await client.responses.create(model="mock-text", input="Hello")
        assert response.output_text == scenarios.TEXT
        rows = await relay.wait_for_rows("SELECT prompt FROM user_prompts")
        assert rows[0]["prompt"] == "Hello"


async def test_sdks_raise_authentication_errors(pg_dsn, tmp_path):
    async with mock_and_relay(pg_dsn, tmp_path) as (mock, relay):
        for bad in ("", "relay_nope_nope", relay.token[:-3] + "abc", "sk-ant-real-key"):
            a = anthropic.AsyncAnthropic(
                api_key=bad or "x", base_url=relay.gateway("anthropic"), max_retries=0
            )
            with pytest.raises(anthropic.AuthenticationError):
                await a.messages.create(model="mock-text", max_tokens=10, messages=USER)
            o = openai.AsyncOpenAI(
                api_key=bad or "x", base_url=relay.gateway("openai") + "/v1", max_retries=0
            )
            with pytest.raises(openai.AuthenticationError) as info:
                await o.chat.completions.create(model="mock-text", messages=USER)
            assert info.value.code == "invalid_api_key"
        assert mock.requests == []  # nothing went upstream


async def test_legacy_prefix_and_passthrough(pg_dsn, tmp_path):
    async with mock_and_relay(pg_dsn, tmp_path) as (mock, relay):
        legacy = f"{relay.url}/api/v2/aibridge/anthropic"
        a = anthropic.AsyncAnthropic(api_key=relay.token, base_url=legacy, max_retries=0)
        message = await a.messages.create(model="mock-text", max_tokens=10, messages=USER)
        assert message.content[0].text == scenarios.TEXT
        models = await a.models.list()
        assert len(models.data) > 0
        o = openai_client(relay)
        listed = await o.models.list()
        assert len(listed.data) > 0
        count = await a.messages.count_tokens(model="mock-text", messages=USER)
        assert count.input_tokens > 0
        paths = [r.path for r in mock.requests]
        assert "/v1/models" in paths
        assert any(p.startswith("/v1/messages/count_tokens") for p in paths)


async def test_query_string_and_unknown_headers_pass_through(pg_dsn, tmp_path):
    async with mock_and_relay(pg_dsn, tmp_path) as (mock, relay):
        async with httpx.AsyncClient() as client:
            r = await client.post(
                relay.gateway("anthropic") + "/v1/messages?beta=true",
                headers={
                    "x-api-key": relay.token,
                    "anthropic-version": "2023-06-01",
                    "anthropic-beta": "interleaved-thinking-2025-05-14,context-1m-2025-08-07",
                    "X-Claude-Code-Session-Id": "sess-123",
                    "user-agent": "claude-cli/2.0.14 (external, cli)",
                },
                json={"model": "mock-text", "max_tokens": 10, "messages": USER},
            )
        assert r.status_code == 200
        upstream = mock.requests[0]
        assert upstream.path == "/v1/messages?beta=true"
        assert upstream.header("anthropic-beta") == (
            "interleaved-thinking-2025-05-14,context-1m-2025-08-07"
        )
        assert upstream.header("x-claude-code-session-id") == "sess-123"
        rows = await relay.wait_for_rows("SELECT client, client_session_id FROM interceptions")
        assert rows[0]["client"] == "claude-code"
        assert rows[0]["client_session_id"] == "sess-123"


async def test_relay_usage_command_reports_what_was_recorded(pg_dsn, tmp_path):
    async with mock_and_relay(pg_dsn, tmp_path) as (_mock, relay):
        client = anthropic_client(relay)
        await client.messages.create(model="mock-tool", max_tokens=10, messages=USER)
        await relay.wait_for_rows("SELECT id FROM token_usages")
    env = {**os.environ, "CODER_PG_CONNECTION_URL": pg_dsn}
    result = await trio.to_thread.run_sync(
        lambda: subprocess.run(
            [sys.executable, "-m", "relay.cli", "usage", "--since", "1d"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    )
    assert result.returncode == 0, result.stderr
    line = next(x for x in result.stdout.splitlines() if "mock-tool" in x)
    assert "alice" in line
    expected = scenarios.usage_for("tool")
    assert str(expected.input_tokens) in line.split()
    assert str(expected.output_tokens) in line.split()


async def test_admin_api_lists_interceptions_through_the_relay(pg_dsn, tmp_path):
    admin = "admin-secret-token-for-tests"
    async with mock_and_relay(
        pg_dsn, tmp_path, extra_env={"CODER_AI_GATEWAY_ADMIN_TOKEN": admin}
    ) as (_mock, relay):
        client = anthropic_client(relay)
        await client.messages.create(model="mock-tool", max_tokens=10, messages=USER)
        await relay.wait_for_rows("SELECT id FROM tool_usages")
        url = f"{relay.url}/api/v2/ai-gateway/admin/interceptions?user=alice"
        async with httpx.AsyncClient() as http:
            # A user's relay token is a credential, but not an admin's.
            refused = await http.get(url, headers={"authorization": f"Bearer {relay.token}"})
            assert refused.status_code == 403 and refused.json()["error"] == "forbidden"
            page = (await http.get(url, headers={"authorization": f"Bearer {admin}"})).json()
        [item] = page["interceptions"]
        assert item["model"] == "mock-tool"
        assert item["initiator_name"] == "alice"
        assert item["tool_usages"][0]["name"] == scenarios.TOOL_CALL.name
        assert item["token_usages"][0]["output_tokens"] == scenarios.usage_for("tool").output_tokens
