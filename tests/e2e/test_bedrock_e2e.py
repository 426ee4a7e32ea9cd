"""A bedrock provider through the real relay, against the mock Bedrock runtime.

The relay (hypercorn, trio worker) runs on a loopback port in front of
``relay.testing.mock_bedrock.MockBedrock``, which recomputes every SigV4 signature
with botocore and refuses a mismatch. Clients are the official SDKs: the
Anthropic SDK on ``/v1/messages`` and its Bedrock client (what Claude Code in
Bedrock mode uses) on the native routes.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import AsyncIterator, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import anthropic
import httpx
import msgspec
import pytest
import trio

from relay.app import RelayApp
from relay.intercept.bedrock.stream import STREAM_EXCEPTION_ERROR_TYPES
from relay.options import load_options
from relay.testing import mock_bedrock
from relay.testing.mock_bedrock import MockBedrock, script_for
from tests.relay_harness import RunningRelay, running_relay

REGION = "us-west-2"
ACCESS_KEY = "AKIDRELAYE2E00000001"
SECRET = "relay-e2e-secret-key-0000000000000000000"
API_KEY = "ABSKrelay-e2e-bedrock-api-key-0001"
MODEL = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"
SMALL_MODEL = "us.anthropic.claude-haiku-4-5-20251001-v1:0"
PROVIDER = "claude-aws"
USER = [{"role": "user", "content": "What is the weather in Paris?"}]
TEXT = "".join(mock_bedrock.TEXT_DELTAS)


@pytest.fixture(autouse=True)
def hermetic_aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No AWS settings of the machine reach the relay's credential chain; no IMDS calls."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def provider_env(mock: MockBedrock, **fields: str) -> dict[str, str]:
    env = {
        "CODER_AI_GATEWAY_PROVIDER_0_TYPE": "bedrock",
        "CODER_AI_GATEWAY_PROVIDER_0_NAME": PROVIDER,
        "CODER_AI_GATEWAY_PROVIDER_0_BEDROCK_BASE_URL": mock.base_url,
        "CODER_AI_GATEWAY_PROVIDER_0_BEDROCK_MODEL": MODEL,
        "CODER_AI_GATEWAY_PROVIDER_0_BEDROCK_SMALL_FAST_MODEL": SMALL_MODEL,
    }
    env.update({f"CODER_AI_GATEWAY_PROVIDER_0_{k.upper()}": v for k, v in fields.items()})
    return env


STATIC_KEYS = {
    "bedrock_region": REGION,
    "bedrock_access_key": ACCESS_KEY,
    "bedrock_access_key_secret": SECRET,
}


@contextlib.asynccontextmanager
async def bedrock_relay(
    pg_dsn: str,
    tmp_path: Path,
    *,
    fields: Mapping[str, str] = STATIC_KEYS,
    extra_env: Mapping[str, str] | None = None,
    region: str = REGION,
    **mock_kwargs: Any,
) -> AsyncIterator[tuple[MockBedrock, RunningRelay]]:
    mock = MockBedrock(
        region=region, credentials={ACCESS_KEY: SECRET}, api_keys={API_KEY}, **mock_kwargs
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(mock.serve, 0)
        env = {**provider_env(mock, **fields), **(extra_env or {})}
        async with running_relay(pg_dsn, tmp_path, env) as relay:
            yield mock, relay
        nursery.cancel_scope.cancel()


def anthropic_client(relay: RunningRelay) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(
        api_key=relay.token, base_url=relay.gateway(PROVIDER), max_retries=0
    )


# anthropic 2.14's Bedrock client puts its own API version (2026-10-21) in the body
# where Bedrock (and the mock) expect bedrock-2023-05-31, the version Claude Code sends.
BEDROCK_VERSION = {"anthropic_version": "bedrock-2023-05-31"}


def bedrock_client(relay: RunningRelay, **kwargs: Any) -> anthropic.AsyncAnthropicBedrock:
    """The SDK's Bedrock client with the relay token as its API key (Authorization: Bearer)."""
    return anthropic.AsyncAnthropicBedrock(
        api_key=relay.token,
        base_url=relay.gateway(PROVIDER),
        aws_region=REGION,
        max_retries=0,
        **kwargs,
    )


def expected_sse(events: list[dict[str, Any]]) -> bytes:
    """Anthropic's SSE for these events: what the Anthropic API itself would send."""
    out = []
    for event in events:
        event = {k: v for k, v in event.items() if k != "amazon-bedrock-invocationMetrics"}
        data = msgspec.json.encode(event)
        out.append(b"event: " + event["type"].encode() + b"\ndata: " + data + b"\n\n")
    return b"".join(out)


def expected_event_stream(events: list[dict[str, Any]]) -> bytes:
    return b"".join(mock_bedrock._chunk_frame(e, i) for i, e in enumerate(events))


async def post_raw(relay: RunningRelay, path: str, body: bytes) -> tuple[int, httpx.Headers, bytes]:
    headers = {"x-api-key": relay.token, "content-type": "application/json"}
    async with httpx.AsyncClient(trust_env=False) as client:
        url = relay.gateway(PROVIDER) + path
        async with client.stream("POST", url, headers=headers, content=body) as response:
            raw = b"".join([c async for c in response.aiter_raw()])
            return response.status_code, response.headers, raw


USAGE_SQL = (
    "SELECT i.status, i.provider_type, i.model, i.route, i.error_type, u.input_tokens, "
    "u.output_tokens, u.cache_read_tokens, u.cache_write_tokens "
    "FROM interceptions i JOIN token_usages u ON u.interception_id = i.id ORDER BY i.started_at"
)


def assert_mock_usage(row: Mapping[str, Any], scenario: str = "text") -> None:
    assert row["input_tokens"] == mock_bedrock.INPUT_TOKENS
    assert row["output_tokens"] == mock_bedrock.OUTPUT_TOKENS[scenario]
    assert row["cache_read_tokens"] == mock_bedrock.CACHE_READ_TOKENS
    assert row["cache_write_tokens"] == mock_bedrock.CACHE_WRITE_TOKENS


# --- /v1/messages -------------------------------------------------------------------


@pytest.mark.parametrize("write_size", [None, 7])
async def test_messages_stream_is_byte_exact_anthropic_sse(pg_dsn, tmp_path, write_size):
    """Bedrock frames (whole, or cut every 7 bytes) come out as Anthropic's own SSE bytes."""
    async with bedrock_relay(pg_dsn, tmp_path, write_size=write_size) as (mock, relay):
        body = {"model": "claude-sonnet-4-6", "max_tokens": 64, "stream": True, "messages": USER}
        status, headers, raw = await post_raw(relay, "/v1/messages", json.dumps(body).encode())
        assert status == 200
        assert headers["content-type"].startswith("text/event-stream")
        assert raw == expected_sse(script_for("text", MODEL))
        sent = mock.requests[-1]
        assert sent.status == 200  # the mock verified the SigV4 signature
        assert (
            sent.path
            == "/model/us.anthropic.claude-sonnet-4-5-20250929-v1%3A0/invoke-with-response-stream"
        )


async def test_sdk_stream_usage_with_cache_tokens_recorded(pg_dsn, tmp_path):
    async with bedrock_relay(pg_dsn, tmp_path) as (mock, relay):
        client = anthropic_client(relay)
        async with client.messages.stream(
            model="claude-sonnet-4-6",
            max_tokens=64,
            messages=USER,
            metadata={"user_id": "someone"},
            extra_headers={
                "anthropic-beta": "interleaved-thinking-2025-05-14,files-api-2025-04-14"
            },
        ) as stream:
            text = "".join([t async for t in stream.text_stream])
            final = await stream.get_final_message()
        assert text == TEXT
        assert final.usage.cache_read_input_tokens == mock_bedrock.CACHE_READ_TOKENS

        upstream = mock.requests[-1]
        sent = json.loads(upstream.body)
        assert sent["anthropic_version"] == "bedrock-2023-05-31"
        assert sent["anthropic_beta"] == ["interleaved-thinking-2025-05-14"]
        assert not {"model", "stream", "metadata"} & sent.keys()
        assert upstream.header("authorization").startswith("AWS4-HMAC-SHA256 Credential=AKID")
        assert relay.token not in repr(upstream.headers)

        rows = await relay.wait_for_rows(USAGE_SQL)
        row = rows[0]
        assert (row["status"], row["provider_type"], row["model"]) == (
            "completed",
            "bedrock",
            MODEL,
        )
        assert row["route"] == "/v1/messages"
        assert_mock_usage(row)
        prompts = await relay.wait_for_rows("SELECT prompt FROM user_prompts")
        assert prompts[0]["prompt"] == USER[0]["content"]


async def test_sdk_blocking_haiku_mapping_and_header_usage(pg_dsn, tmp_path):
    async with bedrock_relay(pg_dsn, tmp_path) as (mock, relay):
        client = anthropic_client(relay)
        message = await client.messages.create(
            model="claude-haiku-4-5", max_tokens=64, messages=USER
        )
        assert message.content[0].type == "text"
        assert message.content[0].text == TEXT
        assert mock.requests[-1].path.endswith("haiku-4-5-20251001-v1%3A0/invoke")
        rows = await relay.wait_for_rows(USAGE_SQL)
        assert (rows[0]["status"], rows[0]["model"]) == ("completed", SMALL_MODEL)
        assert_mock_usage(rows[0])


async def test_tool_use_and_thinking_recorded(pg_dsn, tmp_path):
    async with bedrock_relay(pg_dsn, tmp_path, write_size=13) as (mock, relay):
        client = anthropic_client(relay)
        mock.scenario = "tool_use"
        async with client.messages.stream(model="opus", max_tokens=64, messages=USER) as stream:
            final = await stream.get_final_message()
        tool = next(b for b in final.content if b.type == "tool_use")
        assert tool.input == {"city": "Paris", "unit": "celsius"}
        mock.scenario = "thinking"
        async with client.messages.stream(model="opus", max_tokens=64, messages=USER) as stream:
            await stream.get_final_message()
        tools = await relay.wait_for_rows("SELECT tool_call_id, name, input FROM tool_usages")
        assert (tools[0]["tool_call_id"], tools[0]["name"]) == (
            mock_bedrock.TOOL_ID,
            mock_bedrock.TOOL_NAME,
        )
        assert json.loads(tools[0]["input"]) == tool.input
        thoughts = await relay.wait_for_rows("SELECT content FROM model_thoughts")
        assert thoughts[0]["content"] == "".join(mock_bedrock.THINKING_DELTAS)
        rows = await relay.wait_for_rows(USAGE_SQL, count=2)
        assert_mock_usage(rows[0], "tool_use")
        assert_mock_usage(rows[1], "thinking")


async def test_every_stream_exception_and_corrupt_frame_fail_the_sdk(pg_dsn, tmp_path):
    cases = {
        scenario: STREAM_EXCEPTION_ERROR_TYPES[aws_type[0].lower() + aws_type[1:]]
        for scenario, (_, aws_type, _) in mock_bedrock.STREAM_EXCEPTIONS.items()
    }
    cases["corrupt_crc"] = "api_error"
    async with bedrock_relay(pg_dsn, tmp_path) as (mock, relay):
        client = anthropic_client(relay)
        for scenario, error_type in cases.items():
            mock.scenario = scenario
            with pytest.raises(anthropic.APIStatusError) as raised:
                async with client.messages.stream(
                    model="sonnet", max_tokens=64, messages=USER
                ) as stream:
                    async for _ in stream:
                        pass
            assert raised.value.body["error"]["type"] == error_type, scenario
        rows = await relay.wait_for_rows(
            "SELECT status, error_type FROM interceptions", count=len(cases)
        )
        assert sorted(r["error_type"] for r in rows) == sorted(cases.values())
        assert {r["status"] for r in rows} == {"failed"}


async def test_errors_before_the_stream_are_anthropic_errors(pg_dsn, tmp_path):
    expected = {  # scenario -> (status the SDK sees, Anthropic error type)
        "http_throttling": (429, "rate_limit_error"),
        "http_validation": (400, "invalid_request_error"),
        "http_not_found": (404, "not_found_error"),
        "http_access_denied": (403, "permission_error"),
        "http_unavailable": (529, "overloaded_error"),
        "http_internal": (500, "api_error"),
    }
    async with bedrock_relay(pg_dsn, tmp_path) as (mock, relay):
        client = anthropic_client(relay)
        for scenario, (status, error_type) in expected.items():
            mock.scenario = scenario
            for stream in (True, False):
                with pytest.raises(anthropic.APIStatusError) as raised:
                    await client.messages.create(
                        model="sonnet", max_tokens=64, messages=USER, stream=stream
                    )
                assert raised.value.status_code == status, scenario
                error = raised.value.body["error"]
                assert error["type"] == error_type
                assert error["message"] == mock_bedrock.HTTP_ERRORS[scenario][2]
        rows = await relay.wait_for_rows(
            "SELECT status FROM interceptions", count=2 * len(expected)
        )
        assert {r["status"] for r in rows} == {"failed"}


async def test_signature_refused_is_a_permission_error(pg_dsn, tmp_path):
    wrong = {**STATIC_KEYS, "bedrock_access_key_secret": "not-the-secret-0000000000000000000000"}
    async with bedrock_relay(pg_dsn, tmp_path, fields=wrong) as (mock, relay):
        with pytest.raises(anthropic.PermissionDeniedError) as raised:
            await anthropic_client(relay).messages.create(
                model="sonnet", max_tokens=64, messages=USER
            )
        assert "signature" in raised.value.body["error"]["message"]
        assert mock.requests[-1].status == 403
        rows = await relay.wait_for_rows("SELECT status, error_type FROM interceptions")
        assert (rows[0]["status"], rows[0]["error_type"]) == ("failed", "upstream_403")


# --- credential modes -----------------------------------------------------------------


async def test_api_key_mode_defaults_to_us_east_1(pg_dsn, tmp_path):
    async with bedrock_relay(pg_dsn, tmp_path, fields={"key": API_KEY}, region="us-east-1") as (
        mock,
        relay,
    ):
        message = await anthropic_client(relay).messages.create(
            model="sonnet", max_tokens=64, messages=USER
        )
        assert message.content[0].text == TEXT
        assert mock.requests[-1].header("authorization") == f"Bearer {API_KEY}"


async def test_ambient_chain_from_environment(pg_dsn, tmp_path, monkeypatch):
    """Credentials from AWS_* variables (botocore reads the process environment);
    the region only in the relay's own environment mapping."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_SESSION_TOKEN", "session-token-from-the-environment")
    async with bedrock_relay(
        pg_dsn,
        tmp_path,
        fields={},
        extra_env={"AWS_REGION": "eu-central-1"},
        region="eu-central-1",
        session_tokens={ACCESS_KEY: "session-token-from-the-environment"},
    ) as (mock, relay):
        client = anthropic_client(relay)
        for _ in range(2):  # the second request reuses the resolved credentials
            async with client.messages.stream(
                model="sonnet", max_tokens=64, messages=USER
            ) as stream:
                assert (await stream.get_final_text()) == TEXT
        assert [r.status for r in mock.requests] == [200, 200]
        assert "/eu-central-1/bedrock/" in mock.requests[-1].header("authorization")


async def test_byok_sends_the_persons_own_bedrock_key(pg_dsn, tmp_path):
    env = {"CODER_AI_GATEWAY_ALLOW_BYOK": "true"}
    async with bedrock_relay(pg_dsn, tmp_path, extra_env=env) as (mock, relay):
        client = anthropic.AsyncAnthropic(
            auth_token=API_KEY,
            base_url=relay.gateway(PROVIDER),
            default_headers={"X-Coder-AI-Governance-Token": relay.token},
            max_retries=0,
        )
        await client.messages.create(model="sonnet", max_tokens=64, messages=USER)
        assert mock.requests[-1].header("authorization") == f"Bearer {API_KEY}"


async def test_missing_region_stops_the_start_naming_the_provider(pg_dsn, tmp_path):
    mock = MockBedrock()
    fields = {"bedrock_access_key": ACCESS_KEY, "bedrock_access_key_secret": SECRET}
    env = {
        "CODER_PG_CONNECTION_URL": pg_dsn,
        "CODER_AI_GATEWAY_DATA_DIR": str(tmp_path),
        **provider_env(mock, **fields),
    }
    app = RelayApp(load_options(env, warn=lambda line: None), env)
    # The ASGI lifespan protocol, as hypercorn drives it.
    to_app, from_server = trio.open_memory_channel[dict[str, Any]](2)
    to_server, from_app = trio.open_memory_channel[dict[str, Any]](2)
    await to_app.send({"type": "lifespan.startup"})
    with trio.fail_after(30):
        await app({"type": "lifespan"}, from_server.receive, to_server.send)
    reply = from_app.receive_nowait()
    assert reply["type"] == "lifespan.startup.failed"
    assert reply["message"].startswith(f"provider '{PROVIDER}': bedrock: no AWS region")


# --- native Bedrock routes (Claude Code in Bedrock mode) -------------------------------

CLAUDE_CODE_HEADERS = {  # what Claude Code adds in Bedrock mode with CLAUDE_CODE_SKIP_BEDROCK_AUTH
    "User-Agent": "claude-cli/2.0.14 (external, cli)",
    "X-Claude-Code-Session-Id": "3c1d6f1e-0000-4000-8000-00000000beef",
}


async def test_native_stream_passthrough_recorded(pg_dsn, tmp_path):
    async with bedrock_relay(pg_dsn, tmp_path, write_size=11) as (mock, relay):
        client = bedrock_client(relay, default_headers=CLAUDE_CODE_HEADERS)
        async with client.messages.stream(
            model=MODEL,
            max_tokens=64,
            messages=USER,
            extra_headers={"anthropic-beta": "interleaved-thinking-2025-05-14"},
            extra_body=BEDROCK_VERSION,
        ) as stream:
            assert (await stream.get_final_text()) == TEXT
        upstream = mock.requests[-1]
        assert upstream.path.endswith("-v1%3A0/invoke-with-response-stream")
        assert json.loads(upstream.body)["anthropic_beta"] == ["interleaved-thinking-2025-05-14"]
        assert relay.token not in repr(upstream.headers)

        # The body goes up and the event stream comes back byte for byte.
        body = json.dumps(
            {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 64, "messages": USER}
        ).encode()
        path = f"/model/{MODEL}/invoke-with-response-stream"
        status, headers, raw = await post_raw(relay, path, body)
        assert status == 200
        assert headers["content-type"] == "application/vnd.amazon.eventstream"
        assert mock.requests[-1].body == body
        assert raw == expected_event_stream(script_for("text", MODEL))

        rows = await relay.wait_for_rows(USAGE_SQL, count=2)
        assert {(r["status"], r["model"], r["route"]) for r in rows} == {("completed", MODEL, path)}
        for row in rows:
            assert_mock_usage(row)
        sessions = await relay.wait_for_rows(
            "SELECT client, client_session_id FROM interceptions ORDER BY started_at", count=2
        )
        assert (sessions[0]["client"], sessions[0]["client_session_id"]) == (
            "claude-code",
            CLAUDE_CODE_HEADERS["X-Claude-Code-Session-Id"],
        )


async def test_native_invoke_and_native_errors(pg_dsn, tmp_path):
    async with bedrock_relay(pg_dsn, tmp_path) as (mock, relay):
        client = bedrock_client(relay)
        message = await client.messages.create(
            model=SMALL_MODEL, max_tokens=64, messages=USER, extra_body=BEDROCK_VERSION
        )
        assert message.content[0].text == TEXT
        assert mock.requests[-1].path.endswith("haiku-4-5-20251001-v1%3A0/invoke")

        mock.scenario = "throttling"  # an exception frame mid-stream
        with pytest.raises(anthropic.APIStatusError) as raised:
            async with client.messages.stream(
                model=MODEL, max_tokens=64, messages=USER, extra_body=BEDROCK_VERSION
            ) as s:
                async for _ in s:
                    pass
        assert raised.value.body["error"]["type"] == "throttlingException"

        mock.scenario = "http_throttling"  # before the stream: AWS's own error, unchanged
        with pytest.raises(anthropic.RateLimitError) as limited:
            await client.messages.create(
                model=MODEL, max_tokens=64, messages=USER, extra_body=BEDROCK_VERSION
            )
        assert limited.value.response.headers["x-amzn-errortype"].startswith("Throttling")

        rows = await relay.wait_for_rows(
            "SELECT status, model, error_type FROM interceptions ORDER BY started_at", count=3
        )
        assert [(r["status"], r["error_type"]) for r in rows] == [
            ("completed", None),
            ("failed", "rate_limit_error"),
            ("failed", "upstream_429"),
        ]
        usage = await relay.wait_for_rows(USAGE_SQL)
        assert usage[0]["model"] == SMALL_MODEL
        assert_mock_usage(usage[0])


async def test_client_leaving_mid_stream_cancels_the_bedrock_call(pg_dsn, tmp_path):
    """A Bedrock that sends one frame and then nothing: the client leaves, the relay
    closes the upstream connection and records the interception as cancelled."""
    upstream_closed = trio.Event()

    async def silent_bedrock(stream: trio.SocketStream) -> None:
        received = b""
        while b"\r\n\r\n" not in received:
            received += await stream.receive_some(65536)
        frame = mock_bedrock._chunk_frame(script_for("text", MODEL)[0], 0)
        head = b"HTTP/1.1 200 OK\r\ncontent-type: application/vnd.amazon.eventstream\r\n"
        chunk = b"%x\r\n%s\r\n" % (len(frame), frame)
        await stream.send_all(head + b"transfer-encoding: chunked\r\n\r\n" + chunk)
        while await stream.receive_some(65536):  # until the relay hangs up
            pass
        upstream_closed.set()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            partial(trio.serve_tcp, silent_bedrock, 0, host="127.0.0.1")
        )
        port = listeners[0].socket.getsockname()[1]
        env = provider_env(MockBedrock(), **STATIC_KEYS)
        env["CODER_AI_GATEWAY_PROVIDER_0_BEDROCK_BASE_URL"] = f"http://127.0.0.1:{port}"
        async with running_relay(pg_dsn, tmp_path, env) as relay:
            body = {"model": "sonnet", "max_tokens": 64, "stream": True, "messages": USER}
            headers = {"x-api-key": relay.token}
            async with httpx.AsyncClient(trust_env=False, timeout=30) as client:
                url = relay.gateway(PROVIDER) + "/v1/messages"
                async with client.stream("POST", url, headers=headers, json=body) as response:
                    first = await response.aiter_raw().__anext__()
                    assert first.startswith(b"event: message_start\n")
            with trio.fail_after(10):
                await upstream_closed.wait()
            rows = await relay.wait_for_rows("SELECT status, model FROM interceptions")
            assert (rows[0]["status"], rows[0]["model"]) == ("cancelled", MODEL)
        nursery.cancel_scope.cancel()


async def test_bedrock_exchange_is_dumped_as_sent_with_secrets_masked(pg_dsn, tmp_path):
    dump_dir = tmp_path / "dumps"
    env = {"CODER_AI_GATEWAY_DUMP_DIR": str(dump_dir)}
    async with bedrock_relay(pg_dsn, tmp_path, extra_env=env) as (mock, relay):
        body = {"model": "claude-sonnet-4-6", "max_tokens": 64, "stream": True, "messages": USER}
        status, _headers, _raw = await post_raw(relay, "/v1/messages", json.dumps(body).encode())
        assert status == 200
        sent = mock.requests[-1]
        with trio.fail_after(10):
            while not list(dump_dir.rglob("*.resp.txt")):
                await trio.sleep(0.05)
            await trio.sleep(0.2)  # the writer appends the last chunk, then closes
    [req] = list(dump_dir.rglob("*.req.txt"))
    [resp] = list(dump_dir.rglob("*.resp.txt"))
    assert req.parent.parent.name == PROVIDER
    request_text = req.read_bytes()
    # The request as it went to Bedrock: its path and its body, signature masked.
    assert sent.path.encode() in request_text
    assert sent.body in request_text
    signature = sent.header("authorization")
    assert signature is not None
    assert signature.encode() not in request_text
    assert SECRET.encode() not in request_text
    assert relay.token.encode() not in request_text
    # The response as Bedrock sent it: the raw event stream.
    assert resp.read_bytes().endswith(expected_event_stream(script_for("text", MODEL)))


async def test_actor_headers_are_signed_and_sent_to_bedrock(pg_dsn, tmp_path):
    env = {"CODER_AI_GATEWAY_SEND_ACTOR_HEADERS": "true"}
    async with bedrock_relay(pg_dsn, tmp_path, extra_env=env) as (mock, relay):
        body = {"model": "claude-sonnet-4-6", "max_tokens": 64, "messages": USER}
        status, _headers, _raw = await post_raw(relay, "/v1/messages", json.dumps(body).encode())
        assert status == 200  # the mock verified the signature, actor headers included
        sent = mock.requests[-1]
        assert sent.header("x-ai-bridge-actor-metadata-username") == "alice"
        user_id = await relay.db.fetchval("SELECT id::text FROM users WHERE name = 'alice'")
        assert sent.header("x-ai-bridge-actor-id") == user_id
        signed = sent.header("authorization") or ""
        assert "x-ai-bridge-actor-id" in signed  # in SignedHeaders


async def test_native_invoke_with_an_inference_profile_arn(pg_dsn, tmp_path):
    """An ARN model id holds a '/', sent escaped: it stays one path segment."""
    arn = "arn:aws:bedrock:us-west-2:123456789012:application-inference-profile/abc123"
    async with bedrock_relay(pg_dsn, tmp_path) as (mock, relay):
        client = bedrock_client(relay)
        message = await client.messages.create(
            model=arn, max_tokens=64, messages=USER, extra_body=BEDROCK_VERSION
        )
        assert message.content[0].text == TEXT
        assert "%2F" in mock.requests[-1].path  # forwarded as sent, and signed so
        assert mock.requests[-1].status == 200
        rows = await relay.wait_for_rows("SELECT model FROM interceptions")
        assert rows[0]["model"] == arn


async def test_a_pool_of_bedrock_api_keys_fails_over_and_exhausts(pg_dsn, tmp_path):
    revoked = "bedrock-key-revoked-0000"
    fields = {"keys": f"{revoked},{API_KEY}", "bedrock_region": REGION}
    async with bedrock_relay(pg_dsn, tmp_path, fields=fields) as (mock, relay):
        client = anthropic_client(relay)
        message = await client.messages.create(model="sonnet", max_tokens=64, messages=USER)
        assert message.content[0].text == TEXT
        tried = [r.header("authorization") for r in mock.requests]
        assert tried == [f"Bearer {revoked}", f"Bearer {API_KEY}"]  # refused, then the next key
        # The refused key rests: the next request goes straight to the good one.
        await client.messages.create(model="sonnet", max_tokens=64, messages=USER)
        assert mock.requests[-1].header("authorization") == f"Bearer {API_KEY}"
        assert len(mock.requests) == 3
        # With the good key refused too, the pool is exhausted: an Anthropic-shaped error.
        mock.api_keys.discard(API_KEY)
        with pytest.raises(anthropic.APIStatusError) as raised:
            await client.messages.create(model="sonnet", max_tokens=64, messages=USER)
        assert raised.value.status_code == 502
        assert raised.value.body["error"]["type"] == "api_error"
        rows = await relay.wait_for_rows(
            "SELECT error_type FROM interceptions WHERE status = 'failed'"
        )
        assert rows[0]["error_type"] == "key_pool_exhausted"


async def test_bedrock_time_to_first_byte_reaches_metrics(pg_dsn, tmp_path):
    from tests.metrics.test_metrics import parse, value

    async with bedrock_relay(pg_dsn, tmp_path) as (_mock, relay):
        body = {"model": "claude-sonnet-4-6", "max_tokens": 64, "stream": True, "messages": USER}
        status, _headers, _raw = await post_raw(relay, "/v1/messages", json.dumps(body).encode())
        assert status == 200
        async with httpx.AsyncClient() as client:
            scraped = (await client.get(relay.url + "/metrics")).text
    samples, _ = parse(scraped)
    assert value(samples, "relay_upstream_ttfb_seconds_count", provider=PROVIDER) == 1
