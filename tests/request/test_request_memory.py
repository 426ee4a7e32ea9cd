"""Memory a request may hold: the process's budget for bodies, and the stored prompt.

The budget is tried with raw sockets: one client sends most of a large body
and stops, holding its bytes in the relay; another request that would go
over the budget gets 503 in the provider's shape, and once the first ends its
bytes are given back.
"""

from __future__ import annotations

import json

import httpx
import pytest
import trio

from tests.relay_harness import RunningRelay, mock_and_relay

pytestmark = pytest.mark.usefixtures("pg_dsn")

MIB = 1024 * 1024


def messages_body(size: int, model: str = "mock-text") -> bytes:
    """An Anthropic Messages body of exactly ``size`` bytes."""
    empty = json.dumps(
        {"model": model, "max_tokens": 5, "messages": [{"role": "user", "content": ""}]}
    ).encode()
    return empty.replace(b'"content": ""', b'"content": "' + b"x" * (size - len(empty)) + b'"')


def request_head(relay: RunningRelay, length: int) -> bytes:
    return (
        f"POST /api/v2/ai-gateway/anthropic/v1/messages HTTP/1.1\r\nhost: relay\r\n"
        f"x-api-key: {relay.token}\r\ncontent-type: application/json\r\n"
        f"content-length: {length}\r\n\r\n"
    ).encode()


async def connect(relay: RunningRelay) -> trio.SocketStream:
    host, port = relay.url.removeprefix("http://").rsplit(":", 1)
    return await trio.open_tcp_stream(host, int(port))


async def read_response(stream: trio.SocketStream) -> tuple[int, dict[str, str], bytes]:
    data = b""
    with trio.fail_after(10):
        while b"\r\n\r\n" not in data:
            data += await stream.receive_some(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        headers = dict(line.lower().split(": ", 1) for line in lines[1:])
        while len(body) < int(headers["content-length"]):
            body += await stream.receive_some(65536)
    return int(lines[0].split()[1]), headers, body


async def send_quietly(stream: trio.SocketStream, data: bytes) -> None:
    """Send what the relay takes: it may answer and stop reading before the end."""
    try:
        await stream.send_all(data)
    except trio.BrokenResourceError:
        pass


async def given_back(budget) -> None:  # type: ignore[no-untyped-def]
    """The relay gives the bytes back as the request ends, just after its last byte is sent."""
    with trio.fail_after(10):
        while budget.used:
            await trio.sleep(0.01)


async def test_bodies_in_flight_are_bounded(pg_dsn, tmp_path):
    env = {
        "CODER_AI_GATEWAY_MAX_REQUEST_BODY": "1MiB",
        "CODER_AI_GATEWAY_MAX_BODIES_IN_FLIGHT": "1MiB",
    }
    async with mock_and_relay(pg_dsn, tmp_path, extra_env=env) as (mock, relay):
        budget = relay.app.guards.body_budget  # type: ignore[union-attr]
        big = messages_body(900_000)
        holder = await connect(relay)
        await holder.send_all(request_head(relay, len(big)) + big[:800_000])
        with trio.fail_after(10):  # the relay has read what was sent, and holds it
            while budget.used < 800_000:
                await trio.sleep(0.01)

        # 300 KB more would be 1.1 MB: refused, in Anthropic's shape, before upstream.
        other = messages_body(300_000)
        stream = await connect(relay)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_quietly, stream, request_head(relay, len(other)) + other)
            status, headers, body = await read_response(stream)
            nursery.cancel_scope.cancel()
        await stream.aclose()
        assert status == 503, body
        assert headers["retry-after"] == "1"
        error = json.loads(body)
        assert error["type"] == "error" and error["error"]["type"] == "overloaded_error"
        assert "request bodies" in error["error"]["message"]
        assert budget.refused == 1
        assert mock.requests == []

        with trio.fail_after(10):  # the refused request gives its bytes back as it ends
            while budget.used > 800_000:
                await trio.sleep(0.01)
        # The holder finishes: relayed, and its bytes are given back.
        await holder.send_all(big[800_000:])
        status, _, body = await read_response(holder)
        await holder.aclose()
        assert status == 200, body
        await given_back(budget)
        async with httpx.AsyncClient(timeout=30) as http:
            r = await http.post(
                relay.gateway("anthropic") + "/v1/messages",
                headers={"x-api-key": relay.token, "content-type": "application/json"},
                content=other,
            )
        assert r.status_code == 200
        await given_back(budget)
        assert len(mock.requests) == 2


async def test_the_stored_prompt_is_capped_and_says_so(pg_dsn, tmp_path):
    prompt = "☕" + "y" * 100_000  # 100,003 bytes of UTF-8
    async with mock_and_relay(pg_dsn, tmp_path) as (_mock, relay):
        async with httpx.AsyncClient(timeout=30) as http:
            for content in (prompt, "short"):
                r = await http.post(
                    relay.gateway("anthropic") + "/v1/messages",
                    headers={"x-api-key": relay.token},
                    json={
                        "model": "mock-text",
                        "max_tokens": 5,
                        "messages": [{"role": "user", "content": content}],
                    },
                )
                assert r.status_code == 200
        rows = await relay.wait_for_rows(
            "SELECT prompt, truncated, original_bytes FROM user_prompts ORDER BY original_bytes",
            count=2,
        )
    short, long = rows
    assert (short["prompt"], short["truncated"], short["original_bytes"]) == ("short", False, 5)
    assert long["truncated"] is True and long["original_bytes"] == 100_003
    assert len(long["prompt"].encode()) == 64 * 1024
    assert prompt.startswith(long["prompt"])


async def test_a_rewritten_body_counts_too(pg_dsn, tmp_path):
    """A streaming chat request is rewritten (include_usage): both copies are held."""
    env = {
        "CODER_AI_GATEWAY_MAX_REQUEST_BODY": "1MiB",
        "CODER_AI_GATEWAY_MAX_BODIES_IN_FLIGHT": "1MiB",
    }
    content = "z" * 600_000
    async with mock_and_relay(pg_dsn, tmp_path, extra_env=env) as (mock, relay):
        async with httpx.AsyncClient(timeout=30) as http:
            url = relay.gateway("openai") + "/v1/chat/completions"
            headers = {"authorization": f"Bearer {relay.token}"}
            body = {"model": "mock-text", "messages": [{"role": "user", "content": content}]}
            r = await http.post(url, headers=headers, json={**body, "stream": True})
            assert r.status_code == 503, r.text
            assert r.json()["error"]["type"] == "server_error"
            assert mock.requests == []
            r = await http.post(url, headers=headers, json=body)  # not rewritten: fits
            assert r.status_code == 200
            await given_back(relay.app.guards.body_budget)  # type: ignore[union-attr]
