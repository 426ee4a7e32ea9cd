"""The mock upstream (relay/testing/mock_upstream) against the official SDKs and raw sockets."""

from __future__ import annotations

import random
import socket
import subprocess
import sys

import anthropic
import httpx
import msgspec
import openai
import pytest
import trio

from relay.testing.mock_upstream import (
    PARALLEL_TOOL_CALLS,
    REASONING_SUMMARY,
    TEXT,
    THINKING,
    THINKING_ANSWER,
    THINKING_SIGNATURE,
    TOOL_CALL,
    TOOL_PREAMBLE,
    MockUpstream,
    long_deltas,
    usage_for,
)
from relay.testing.mock_upstream import anthropic as anthropic_wire
from relay.testing.mock_upstream.framing import build_writes, pieces
from relay.testing.mock_upstream.scenarios import ID_PLACEHOLDER

ANTHROPIC_KEY = "sk-ant-test-key-0001"
OPENAI_KEY = "sk-test-key-0001"
MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture
async def mock(nursery: trio.Nursery) -> MockUpstream:
    upstream = MockUpstream(revoked_keys=["sk-revoked-0001"], rate_limited_keys=["sk-limited-0001"])
    await nursery.start(upstream.serve, 0)
    return upstream


def anthropic_client(mock: MockUpstream, key: str = ANTHROPIC_KEY) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(api_key=key, base_url=mock.base_url, max_retries=0)


def openai_client(mock: MockUpstream, key: str = OPENAI_KEY) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key=key, base_url=mock.openai_base_url, max_retries=0)


# -- raw HTTP helpers (exact bytes and write boundaries) ------------------------


async def raw_request(
    mock: MockUpstream, path: str, body: dict, headers: dict[str, str], version: str = "1.1"
) -> bytes:
    """Send one request with Connection: close and return every byte until EOF."""
    payload = msgspec.json.encode(body)
    head = f"POST {path} HTTP/{version}\r\nHost: mock\r\nConnection: close\r\n"
    head += f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    stream = await trio.open_tcp_stream("127.0.0.1", mock.port)
    async with stream:
        await stream.send_all(head.encode() + payload)
        received = bytearray()
        while data := await stream.receive_some(65536):
            received += data
    return bytes(received)


def split_response(raw: bytes) -> tuple[dict[str, str], list[bytes]]:
    """Headers and the payload of every HTTP chunk (terminating chunk excluded)."""
    head, _, rest = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")[1:]
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    chunks = []
    while True:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            assert rest == b"\r\n"
            return headers, chunks
        chunks.append(rest[:size])
        assert rest[size : size + 2] == b"\r\n"
        rest = rest[size + 2 :]


def normalized_body(raw: bytes) -> tuple[list[bytes], bytes]:
    """HTTP chunks, and the body with this request's random ids put back to the placeholder."""
    headers, chunks = split_response(raw)
    uid = (headers.get("request-id") or headers["x-request-id"]).removeprefix("req_")
    return chunks, b"".join(chunks).replace(uid.encode(), ID_PLACEHOLDER.encode())


# -- every scenario through the SDKs ---------------------------------------------


def assert_anthropic_usage(usage: anthropic.types.Usage, scenario: str, events: int = 0) -> None:
    want = usage_for(scenario, events) if scenario == "long" else usage_for(scenario)
    assert usage.input_tokens == want.input_tokens
    assert usage.output_tokens == want.output_tokens
    assert usage.cache_read_input_tokens == want.cache_read_tokens
    assert usage.cache_creation_input_tokens == want.cache_write_tokens
    assert usage.cache_creation is not None
    assert usage.cache_creation.ephemeral_5m_input_tokens == want.cache_write_5m_tokens
    assert usage.cache_creation.ephemeral_1h_input_tokens == want.cache_write_1h_tokens


def check_anthropic_message(message: anthropic.types.Message, scenario: str) -> None:
    blocks = message.content
    if scenario == "tool":
        assert blocks[0].type == "text" and blocks[0].text == TOOL_PREAMBLE
        assert blocks[1].type == "tool_use" and blocks[1].name == TOOL_CALL.name
        assert blocks[1].input == TOOL_CALL.input
        assert message.stop_reason == "tool_use"
    elif scenario == "parallel-tools":
        assert [(b.type, getattr(b, "name", None), getattr(b, "input", None)) for b in blocks] == [
            ("tool_use", c.name, c.input) for c in PARALLEL_TOOL_CALLS
        ]
        assert len({getattr(b, "id", None) for b in blocks}) == 3
    elif scenario == "thinking":
        assert blocks[0].type == "thinking" and blocks[0].thinking == THINKING
        assert blocks[0].signature == THINKING_SIGNATURE
        assert blocks[1].type == "text" and blocks[1].text == THINKING_ANSWER
    else:
        assert blocks[0].type == "text" and blocks[0].text == TEXT
        assert message.stop_reason == "end_turn"


SDK_SCENARIOS = ["text", "tool", "parallel-tools", "thinking", "slow-first-token"]


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "blocking"])
@pytest.mark.parametrize("scenario", SDK_SCENARIOS)
async def test_anthropic_sdk(mock: MockUpstream, scenario: str, stream: bool) -> None:
    client = anthropic_client(mock)
    extra = {"x-mock-first-token-ms": "20"} if scenario == "slow-first-token" else {}
    args = dict(model=f"mock-{scenario}", max_tokens=64, messages=MESSAGES, extra_headers=extra)
    if stream:
        async with client.messages.stream(**args) as events:
            message = await events.get_final_message()
    else:
        message = await client.messages.create(**args)
    check_anthropic_message(message, scenario)
    assert_anthropic_usage(message.usage, scenario)
    assert message.id.startswith("msg_") and ID_PLACEHOLDER not in message.id
    # anthropic 2.x sends the api key as Bearer; older versions and curl use x-api-key.
    sent = mock.requests[0].header("x-api-key") or mock.requests[0].header("authorization")
    assert sent in (ANTHROPIC_KEY, f"Bearer {ANTHROPIC_KEY}")


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "blocking"])
@pytest.mark.parametrize("scenario", SDK_SCENARIOS)
async def test_openai_chat_sdk(mock: MockUpstream, scenario: str, stream: bool) -> None:
    client = openai_client(mock)
    extra = {"x-mock-first-token-ms": "20"} if scenario == "slow-first-token" else {}
    args = dict(model=f"mock-{scenario}", messages=MESSAGES, extra_headers=extra)
    if stream:
        async with client.chat.completions.stream(
            **args, stream_options={"include_usage": True}
        ) as events:
            completion = await events.get_final_completion()
    else:
        completion = await client.chat.completions.create(**args)
    message = completion.choices[0].message
    calls = {"tool": [TOOL_CALL], "parallel-tools": list(PARALLEL_TOOL_CALLS)}.get(scenario, [])
    if calls:
        assert message.content is None
        got = [
            (c.function.name, msgspec.json.decode(c.function.arguments)) for c in message.tool_calls
        ]
        assert got == [(c.name, c.input) for c in calls]
        assert completion.choices[0].finish_reason == "tool_calls"
    else:
        assert message.content == (THINKING_ANSWER if scenario == "thinking" else TEXT)
    want = usage_for(scenario)
    usage = completion.usage
    assert usage is not None
    assert usage.prompt_tokens == want.input_tokens + want.cache_read_tokens
    assert usage.prompt_tokens_details.cached_tokens == want.cache_read_tokens
    assert usage.completion_tokens == want.output_tokens
    assert usage.completion_tokens_details.reasoning_tokens == want.reasoning_tokens
    assert mock.requests[0].header("authorization") == f"Bearer {OPENAI_KEY}"


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "blocking"])
@pytest.mark.parametrize("scenario", SDK_SCENARIOS)
async def test_openai_responses_sdk(mock: MockUpstream, scenario: str, stream: bool) -> None:
    client = openai_client(mock)
    extra = {"x-mock-first-token-ms": "20"} if scenario == "slow-first-token" else {}
    args = dict(model=f"mock-{scenario}", input="hi", extra_headers=extra)
    if stream:
        async with client.responses.stream(**args) as events:
            response = await events.get_final_response()
    else:
        response = await client.responses.create(**args)
    calls = {"tool": [TOOL_CALL], "parallel-tools": list(PARALLEL_TOOL_CALLS)}.get(scenario, [])
    if calls:
        got = [(o.name, msgspec.json.decode(o.arguments)) for o in response.output]
        assert got == [(c.name, c.input) for c in calls]
    elif scenario == "thinking":
        assert response.output[0].type == "reasoning"
        assert response.output[0].summary[0].text == REASONING_SUMMARY
        assert response.output_text == THINKING_ANSWER
    else:
        assert response.output_text == TEXT
    want = usage_for(scenario)
    assert response.usage is not None
    assert response.usage.input_tokens == want.input_tokens + want.cache_read_tokens
    assert response.usage.input_tokens_details.cached_tokens == want.cache_read_tokens
    assert response.usage.output_tokens == want.output_tokens
    assert response.usage.output_tokens_details.reasoning_tokens == want.reasoning_tokens


async def test_long_stream_counts_events(mock: MockUpstream) -> None:
    client = anthropic_client(mock)
    async with client.messages.stream(
        model="mock-long", max_tokens=8, messages=MESSAGES, extra_headers={"x-mock-events": "250"}
    ) as events:
        deltas = [e.delta.text async for e in events if e.type == "content_block_delta"]
        message = await events.get_final_message()
    assert deltas == long_deltas(250)
    assert_anthropic_usage(message.usage, "long", 250)


async def test_responses_sequence_numbers_count_from_zero(mock: MockUpstream) -> None:
    raw = await raw_request(
        mock,
        "/v1/responses",
        {"model": "mock-tool", "stream": True},
        {"Authorization": f"Bearer {OPENAI_KEY}"},
    )
    _, body = normalized_body(raw)
    payloads = [msgspec.json.decode(e.split(b"data: ", 1)[1]) for e in body.split(b"\n\n") if e]
    assert [p["sequence_number"] for p in payloads] == list(range(len(payloads)))
    assert payloads[-1]["type"] == "response.completed"
    assert b"[DONE]" not in body


# -- include_usage semantics ------------------------------------------------------


@pytest.mark.parametrize("include_usage", [True, False])
async def test_chat_include_usage_semantics(mock: MockUpstream, include_usage: bool) -> None:
    body: dict = {"model": "mock-text", "stream": True}
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    raw = await raw_request(
        mock, "/v1/chat/completions", body, {"Authorization": f"Bearer {OPENAI_KEY}"}
    )
    _, stream = normalized_body(raw)
    events = [e for e in stream.split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]"
    chunks = [msgspec.json.decode(e.removeprefix(b"data: ")) for e in events[:-1]]
    if include_usage:
        *content, last = chunks
        assert all(c["usage"] is None and c["choices"] for c in content)
        assert last["choices"] == [] and last["usage"] == usage_for("text").openai_chat()
    else:
        assert all("usage" not in c and c["choices"] for c in chunks)


# -- chunking ----------------------------------------------------------------------


@pytest.mark.parametrize("api", ["anthropic", "chat", "responses"])
async def test_every_chunking_carries_the_same_bytes(mock: MockUpstream, api: str) -> None:
    path, headers = {
        "anthropic": ("/v1/messages", {"x-api-key": ANTHROPIC_KEY}),
        "chat": ("/v1/chat/completions", {"Authorization": f"Bearer {OPENAI_KEY}"}),
        "responses": ("/v1/responses", {"Authorization": f"Bearer {OPENAI_KEY}"}),
    }[api]
    body = {"model": "mock-thinking", "stream": True}
    results = {}
    for chunking in ("event", "coalesce", "random", "bytes1"):
        raw = await raw_request(mock, path, body, {**headers, "x-mock-chunking": chunking})
        results[chunking] = normalized_body(raw)
    event_chunks, reference = results["event"]
    # event: one SSE event per chunk (= per write).
    assert all(c.endswith(b"\n\n") and c.count(b"\n\n") == 1 for c in event_chunks)
    for chunking, (_, stream) in results.items():
        assert stream == reference, chunking
    assert len(results["coalesce"][0]) < len(event_chunks)
    assert all(len(c) == 1 for c in results["bytes1"][0])
    # Connection: close was honoured once each reply was complete.
    closes = [e for e in mock.events if e.kind.startswith("closed")]
    assert [(e.kind, e.phase) for e in closes] == [("closed-by-server", "idle")] * 4
    assert len(results["random"][0]) > len(event_chunks)


async def test_writes_are_separate_socket_writes(mock: MockUpstream) -> None:
    raw = await raw_request(
        mock,
        "/v1/messages",
        {"model": "mock-text", "stream": True},
        {"x-api-key": ANTHROPIC_KEY, "x-mock-chunking": "bytes1"},
    )
    chunks, _ = normalized_body(raw)
    # Headers, one write per byte, the terminating chunk.
    assert mock.paused_writes.writes == 1 + len(chunks) + 1


def test_random_pieces_are_seeded_and_lossless() -> None:
    events = anthropic_wire.build_stream("text", "mock-text", 0).events
    first = pieces(events, "random", random.Random(7))
    # Some write starts inside a multi-byte UTF-8 character.
    assert any(p[0] & 0xC0 == 0x80 for p in first)
    assert first == pieces(events, "random", random.Random(7))
    assert first != pieces(events, "random", random.Random(8))
    assert b"".join(first) == b"".join(events)
    writes = build_writes(first, chunked=True)
    assert len(writes.spans()) == len(first)
    assert writes.wire.startswith(b"%x\r\n" % len(first[0]))


async def test_http10_client_gets_unframed_stream(mock: MockUpstream) -> None:
    raw = await raw_request(
        mock,
        "/v1/chat/completions",
        {"model": "mock-text", "stream": True},
        {"Authorization": f"Bearer {OPENAI_KEY}"},
        version="1.0",
    )
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"transfer-encoding" not in head.lower()
    assert body.startswith(b"data: {") and body.endswith(b"data: [DONE]\n\n")


# -- close detection -----------------------------------------------------------------


async def test_close_before_response_is_seen(mock: MockUpstream) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", mock.port)
    payload = b'{"model": "mock-text", "stream": true}'
    await stream.send_all(
        b"POST /v1/messages HTTP/1.1\r\nHost: m\r\nx-api-key: k\r\n"
        b"x-mock-headers-delay-ms: 60000\r\nContent-Length: %d\r\n\r\n%b" % (len(payload), payload)
    )
    await mock.wait_for_request(0)
    await stream.aclose()
    # The server would sleep 60 s before answering; seeing the close within
    # the timeout proves it is noticed while waiting, not at the next write.
    closed = await mock.wait_for_close(request_index=0, timeout=20)
    assert (closed.kind, closed.phase) == ("closed-by-peer", "before-response")
    assert mock.open_connections == 0


async def test_close_before_first_byte_is_seen(mock: MockUpstream) -> None:
    async with httpx.AsyncClient() as client:
        async with client.stream(
            "POST",
            mock.base_url + "/v1/messages",
            json={"model": "mock-slow-first-token", "stream": True},
            headers={"x-api-key": ANTHROPIC_KEY, "x-mock-first-token-ms": "60000"},
        ) as response:
            assert response.status_code == 200
        # Leaving the block with the body unread closes the connection.
    closed = await mock.wait_for_close(request_index=0, timeout=20)
    assert (closed.kind, closed.phase) == ("closed-by-peer", "before-first-byte")
    assert [e.kind for e in mock.events if e.kind == "first-byte"] == []


async def test_close_mid_stream_is_seen(mock: MockUpstream) -> None:
    async with httpx.AsyncClient() as client:
        async with client.stream(
            "POST",
            mock.openai_base_url + "/chat/completions",
            json={"model": "mock-long", "stream": True},
            headers={"Authorization": f"Bearer {OPENAI_KEY}", "x-mock-gap-ms": "60000"},
        ) as response:
            first = await response.aiter_raw().__anext__()
            assert first.startswith(b"data: ")
    closed = await mock.wait_for_close(request_index=0, timeout=20)
    assert (closed.kind, closed.phase) == ("closed-by-peer", "mid-stream")
    kinds = [e.kind for e in mock.events if e.conn_id == closed.conn_id]
    assert kinds == ["opened", "request", "response-started", "first-byte", "closed-by-peer"]


async def test_keep_alive_reuse_and_idle_close(mock: MockUpstream) -> None:
    client = openai_client(mock)
    for _ in range(3):
        await client.chat.completions.create(model="mock-text", messages=MESSAGES)
    assert {r.conn_id for r in mock.requests} == {1}
    assert mock.open_connections == 1
    await client.close()
    closed = await mock.wait_for_close(mock.requests[-1], timeout=20)
    assert (closed.kind, closed.phase) == ("closed-by-peer", "idle")


async def test_backpressure_pauses_writes(mock: MockUpstream) -> None:
    sock = trio.socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await sock.connect(("127.0.0.1", mock.port))
    stream = trio.SocketStream(sock)
    payload = b'{"model": "mock-long", "stream": true}'
    await stream.send_all(
        b"POST /v1/messages HTTP/1.1\r\nHost: m\r\nx-api-key: k\r\nx-mock-events: 50000\r\n"
        b"Content-Length: %d\r\n\r\n%b" % (len(payload), payload)
    )
    with trio.fail_after(20):  # a deadline against hanging, not a timing assertion
        while mock.paused_writes.blocked_now == 0:
            await trio.sleep(0.01)
    await stream.aclose()
    closed = await mock.wait_for_close(request_index=0, timeout=20)
    assert (closed.kind, closed.phase) == ("closed-by-peer", "mid-stream")
    assert mock.paused_writes.paused_seconds > 0


# -- failures ------------------------------------------------------------------------


async def test_anthropic_error_midstream_is_an_overloaded_event(mock: MockUpstream) -> None:
    client = anthropic_client(mock)
    with pytest.raises(anthropic.APIStatusError) as raised:
        async with client.messages.stream(
            model="mock-error-midstream", max_tokens=8, messages=MESSAGES
        ) as events:
            async for _ in events:
                pass
    assert raised.value.body["error"]["type"] == "overloaded_error"
    finished = [e for e in mock.events if e.kind == "finished"]
    assert len(finished) == 1  # the stream ends properly after the error event


@pytest.mark.parametrize("scenario,kind", [("drop", "drop"), ("error-midstream", "reset")])
async def test_openai_streams_fail_by_losing_the_connection(
    mock: MockUpstream, scenario: str, kind: str
) -> None:
    async with httpx.AsyncClient() as client:
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            async with client.stream(
                "POST",
                mock.openai_base_url + "/chat/completions",
                json={"model": f"mock-{scenario}", "stream": True},
                headers={"Authorization": f"Bearer {OPENAI_KEY}"},
            ) as response:
                async for _ in response.aiter_raw():
                    pass
    closed = await mock.wait_for_close(request_index=0)
    assert (closed.kind, closed.phase) == ("closed-by-server", "mid-stream")


async def test_error_status_shapes(mock: MockUpstream) -> None:
    with pytest.raises(anthropic.APIStatusError) as raised:
        await anthropic_client(mock).messages.create(
            model="mock-error-status",
            max_tokens=8,
            messages=MESSAGES,
            extra_headers={"x-mock-status": "529"},
        )
    assert raised.value.status_code == 529
    assert raised.value.body["error"]["type"] == "overloaded_error"
    with pytest.raises(openai.InternalServerError) as failed:
        await openai_client(mock).chat.completions.create(
            model="mock-error-status", messages=MESSAGES
        )
    assert failed.value.status_code == 500
    assert failed.value.body["type"] == "server_error"
    with pytest.raises(openai.BadRequestError):
        await openai_client(mock).responses.create(
            model="whatever", input="hi", extra_headers={"x-mock-scenario": "no-such"}
        )


async def test_auth_failures_in_provider_shapes(mock: MockUpstream) -> None:
    with pytest.raises(anthropic.AuthenticationError) as denied:
        await anthropic_client(mock, "sk-revoked-0001").messages.create(
            model="mock-text", max_tokens=8, messages=MESSAGES
        )
    assert denied.value.body["error"]["type"] == "authentication_error"
    with pytest.raises(openai.AuthenticationError) as refused:
        await openai_client(mock, "sk-revoked-0001").models.list()
    assert refused.value.body["code"] == "invalid_api_key"
    assert "sk-revoked-0001" not in refused.value.body["message"]  # masked
    with pytest.raises(anthropic.RateLimitError) as limited:
        await anthropic_client(mock, "sk-limited-0001").messages.create(
            model="mock-text", max_tokens=8, messages=MESSAGES
        )
    assert limited.value.response.headers["retry-after"] == "1"
    assert limited.value.body["error"]["type"] == "rate_limit_error"
    with pytest.raises(openai.RateLimitError) as slowed:
        await openai_client(mock, "sk-limited-0001").chat.completions.create(
            model="mock-text", messages=MESSAGES
        )
    assert slowed.value.body["code"] == "rate_limit_exceeded"
    async with httpx.AsyncClient() as client:
        missing = await client.post(mock.base_url + "/v1/messages", json={"model": "mock-text"})
    assert missing.status_code == 401
    assert missing.json()["error"]["type"] == "authentication_error"


async def test_only_configured_keys_are_accepted(nursery: trio.Nursery) -> None:
    upstream = MockUpstream(keys=["sk-good-0001"])
    await nursery.start(upstream.serve, 0)
    await openai_client(upstream, "sk-good-0001").models.list()
    with pytest.raises(openai.AuthenticationError):
        await openai_client(upstream, "sk-other-0001").models.list()


# -- passthrough routes and recording ----------------------------------------------


async def test_passthrough_routes(mock: MockUpstream) -> None:
    ant = anthropic_client(mock)
    models = await ant.models.list()
    assert "mock-text" in [m.id for m in models.data]
    assert (await ant.models.retrieve("mock-tool")).id == "mock-tool"
    counted = await ant.messages.count_tokens(model="mock-text", messages=MESSAGES)
    want = usage_for("text")
    assert counted.input_tokens == (
        want.input_tokens + want.cache_read_tokens + want.cache_write_tokens
    )
    oai = openai_client(mock)
    assert "mock-text" in [m.id async for m in oai.models.list()]
    assert (await oai.models.retrieve("mock-long")).id == "mock-long"
    retrieved = await oai.responses.retrieve("resp_abc")
    assert (retrieved.id, retrieved.output_text) == ("resp_abc", TEXT)
    assert (await oai.responses.cancel("resp_abc")).status == "cancelled"
    items = await oai.responses.input_items.list("resp_abc")
    assert items.data[0].type == "message"
    await oai.responses.delete("resp_abc")
    conversation = await oai.conversations.retrieve("conv_abc")
    assert conversation.id == "conv_abc"
    async with httpx.AsyncClient() as client:
        unknown = await client.post(
            mock.openai_base_url + "/completions", headers={"Authorization": "Bearer k"}
        )
    assert unknown.status_code == 404
    assert unknown.json()["error"]["message"] == "Invalid URL (POST /v1/completions)"


async def test_requests_are_recorded_as_received(mock: MockUpstream) -> None:
    async with httpx.AsyncClient() as client:
        await client.post(
            mock.base_url + "/v1/messages?beta=true",
            content=b'{"model": "mock-text"}',
            headers={"X-Api-Key": "k", "X-Claude-Code-Session-Id": "abc"},
        )
    request = mock.requests[0]
    assert (request.method, request.path, request.index) == ("POST", "/v1/messages?beta=true", 0)
    assert ("X-Claude-Code-Session-Id", "abc") in request.headers
    assert request.header("x-claude-code-session-id") == "abc"
    assert request.body == b'{"model": "mock-text"}'
    assert request.json() == {"model": "mock-text"}


async def test_standalone_process_serves() -> None:
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "relay.testing.mock_upstream", "--port", "0"],
        stdout=subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = b""
        with trio.fail_after(30):
            while not line.endswith(b"\n"):
                line += await process.stdout.receive_some(1)
        url = line.decode().split()[-1]
        assert url.startswith("http://127.0.0.1:")
        async with httpx.AsyncClient() as client:
            answer = await client.post(
                url + "/v1/chat/completions",
                json={"model": "mock-text"},
                headers={"Authorization": "Bearer k"},
            )
        assert answer.json()["choices"][0]["message"]["content"] == TEXT
    finally:
        process.kill()
        await process.wait()


async def test_scenario_header_wins_and_real_models_get_text(mock: MockUpstream) -> None:
    client = openai_client(mock)
    real = await client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert (real.model, real.choices[0].message.content) == ("gpt-4o", TEXT)
    overridden = await client.chat.completions.create(
        model="mock-text", messages=MESSAGES, extra_headers={"x-mock-scenario": "tool"}
    )
    assert overridden.choices[0].message.tool_calls[0].function.name == TOOL_CALL.name


@pytest.mark.parametrize("chunking", ["event", "random"])
async def test_recorded_response_body_is_what_was_sent(mock: MockUpstream, chunking: str) -> None:
    headers = {"x-api-key": ANTHROPIC_KEY, "x-mock-chunking": chunking}
    raw = await raw_request(mock, "/v1/messages", {"model": "mock-tool", "stream": True}, headers)
    _, chunks = split_response(raw)
    assert (mock.requests[0].status, mock.requests[0].response_body) == (200, b"".join(chunks))
    raw = await raw_request(mock, "/v1/messages", {"model": "mock-error-status"}, headers)
    assert mock.requests[1].status == 500
    assert raw.endswith(b"\r\n\r\n" + mock.requests[1].response_body)
