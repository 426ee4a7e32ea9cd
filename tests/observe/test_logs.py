"""Structured logs and request ids through the real relay (hypercorn, trio worker).

One interception of each API (Anthropic messages, Chat Completions,
Responses, Bedrock) with STRUCTURED_LOGGING on: every line the relay logs is
parsed as JSON, the ``interception log`` lines of the interception are
checked against the response's request and interception ids, and no line
carries the provider's key, the AWS secret or the relay token.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import uuid
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest

from relay.observe.context import RequestIds, bind_ids
from relay.observe.logs import JsonFormatter, record_fields
from relay.record.events import (
    InterceptionMeta,
    UserPromptRecord,
    interception_started,
    new_id,
    utc_now,
)
from tests.e2e.test_bedrock_e2e import SECRET, bedrock_relay
from tests.e2e.test_bedrock_e2e import anthropic_client as bedrock_anthropic_client
from tests.relay_harness import RunningRelay, mock_and_relay

pytestmark = pytest.mark.usefixtures("pg_dsn")

PROVIDER_KEY = "sk-upstream-test-key-0001"  # tests.relay_harness.mock_providers_env
PROMPT = "What is the weather in Paris? (a prompt the log must not show)"
STRUCTURED = {"CODER_AI_GATEWAY_STRUCTURED_LOGGING": "true"}
BASE_KEYS = ("time", "level", "logger", "message", "request_id", "interception_id", "user_id")


@contextlib.contextmanager
def json_log() -> Iterator[list[dict[str, Any]]]:
    """Every line logged meanwhile, formatted by the relay's JSON formatter and parsed back."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    lines: list[dict[str, Any]] = []
    try:
        yield lines
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        lines.extend(json.loads(text) for text in stream.getvalue().splitlines())


def check_interception_lines(
    lines: list[dict[str, Any]],
    headers: httpx.Headers,
    relay: RunningRelay,
    provider: str,
    *secrets: str,
) -> dict[str, list[dict[str, Any]]]:
    """The interception's record lines by record_type, after the checks every API shares."""
    request_id = headers["x-relay-request-id"]
    interception_id = headers["x-relay-interception-id"]
    uuid.UUID(request_id), uuid.UUID(interception_id)
    assert request_id != interception_id
    for line in lines:
        assert all(key in line for key in BASE_KEYS), line
        text = json.dumps(line)
        for secret in (relay.token, *secrets):
            assert secret not in text, line
        assert PROMPT not in text  # STRUCTURED_LOGGING_CONTENT is off
    mine = [
        line
        for line in lines
        if line["message"] == "interception log" and line["interception_id"] == interception_id
    ]
    by_type: dict[str, list[dict[str, Any]]] = {}
    for line in mine:
        assert line["logger"] == "relay.interceptions"
        assert line["level"] == "INFO"
        assert line["request_id"] == request_id
        assert line["provider"] == provider
        by_type.setdefault(line["record_type"], []).append(line)
    start, end = by_type["interception_start"][0], by_type["interception_end"][0]
    assert start["status"] == "in_progress" and end["status"] == "completed"
    assert start["request_id"] == end["request_id"] == request_id
    assert end["provider_name"] == provider
    assert end["user_id"] == end["initiator_id"]
    assert end["credential_hint"] is None or "…" in end["credential_hint"]
    (prompt,) = by_type["prompt_usage"]
    assert "prompt" not in prompt
    assert prompt["original_bytes"] == len(PROMPT.encode())
    (usage,) = by_type["token_usage"]
    assert usage["input_tokens"] > 0 and usage["output_tokens"] > 0
    assert usage["interception_id"] == interception_id
    return by_type


async def request_id_recorded(relay: RunningRelay, headers: httpx.Headers) -> None:
    rows = await relay.wait_for_rows(
        "SELECT request_id FROM interceptions WHERE id = $1",
        uuid.UUID(headers["x-relay-interception-id"]),
    )
    assert rows[0]["request_id"] == headers["x-relay-request-id"]


async def test_anthropic_messages_log_lines(pg_dsn, tmp_path):
    with json_log() as lines:
        async with mock_and_relay(pg_dsn, tmp_path, extra_env=STRUCTURED) as (_mock, relay):
            client = anthropic.AsyncAnthropic(
                api_key=relay.token, base_url=relay.gateway("anthropic"), max_retries=0
            )
            raw = await client.messages.with_raw_response.create(
                model="mock-tool",
                max_tokens=100,
                messages=[{"role": "user", "content": PROMPT}],
                stream=True,
            )
            async for _event in await raw.parse():
                pass
            await request_id_recorded(relay, raw.headers)
    by_type = check_interception_lines(lines, raw.headers, relay, "anthropic", PROVIDER_KEY)
    (tool,) = by_type["tool_usage"]
    assert tool["name"] and "input" not in tool and tool["input_bytes"] > 0
    assert tool["injected"] is False


async def test_chat_completions_and_responses_log_lines(pg_dsn, tmp_path):
    with json_log() as lines:
        async with mock_and_relay(pg_dsn, tmp_path, extra_env=STRUCTURED) as (_mock, relay):
            client = openai.AsyncOpenAI(
                api_key=relay.token, base_url=relay.gateway("openai") + "/v1", max_retries=0
            )
            chat = await client.chat.completions.with_raw_response.create(
                model="mock-text", messages=[{"role": "user", "content": PROMPT}], stream=True
            )
            async for _chunk in chat.parse():
                pass
            responses = await client.responses.with_raw_response.create(
                model="mock-thinking", input=PROMPT, stream=True
            )
            async for _event in responses.parse():
                pass
            await request_id_recorded(relay, chat.headers)
            await request_id_recorded(relay, responses.headers)
    check_interception_lines(lines, chat.headers, relay, "openai", PROVIDER_KEY)
    by_type = check_interception_lines(lines, responses.headers, relay, "openai", PROVIDER_KEY)
    (thought, *_) = by_type["model_thought"]
    assert "content" not in thought and thought["content_bytes"] > 0
    assert chat.headers["x-relay-request-id"] != responses.headers["x-relay-request-id"]


async def test_bedrock_log_lines(pg_dsn, tmp_path, monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws-credentials"))
    with json_log() as lines:
        async with bedrock_relay(pg_dsn, tmp_path, extra_env=STRUCTURED) as (_mock, relay):
            client = bedrock_anthropic_client(relay)
            raw = await client.messages.with_raw_response.create(
                model="claude-sonnet-4-6",
                max_tokens=64,
                messages=[{"role": "user", "content": PROMPT}],
                stream=True,
            )
            async for _event in await raw.parse():
                pass
            await request_id_recorded(relay, raw.headers)
    check_interception_lines(lines, raw.headers, relay, "claude-aws", SECRET)


async def test_a_refused_request_carries_a_request_id_and_no_interception_id(pg_dsn, tmp_path):
    with json_log() as lines:
        async with (
            mock_and_relay(pg_dsn, tmp_path) as (_mock, relay),
            httpx.AsyncClient() as http,
        ):
            answer = await http.post(
                relay.gateway("anthropic") + "/v1/messages",
                headers={"x-api-key": "not-a-relay-token"},
                json={"model": "mock-text", "max_tokens": 1, "messages": []},
            )
    assert answer.status_code == 401
    uuid.UUID(answer.headers["x-relay-request-id"])
    assert "x-relay-interception-id" not in answer.headers
    assert not [line for line in lines if line["message"] == "interception log"]  # off


def test_a_plain_line_has_the_request_ids_of_its_context():
    formatter = JsonFormatter()
    record = logging.LogRecord("relay.app", logging.WARNING, __file__, 1, "a %s", ("b",), None)
    assert json.loads(formatter.format(record))["request_id"] is None
    ids = RequestIds("r-1")
    ids.interception_id, ids.user_id, ids.provider = "i-1", "u-1", "openai"
    unbind = bind_ids(ids)
    try:
        record.fields = {"request_id": "forged", "extra": 1}
        line = json.loads(formatter.format(record))
    finally:
        unbind()
    assert line["message"] == "a b" and line["level"] == "WARNING" and line["logger"] == "relay.app"
    assert (line["request_id"], line["interception_id"], line["user_id"], line["provider"]) == (
        "r-1",
        "i-1",
        "u-1",
        "openai",
    )
    assert line["extra"] == 1
    assert line["time"].endswith("Z") and "T" in line["time"]


def test_content_only_when_asked():
    meta = InterceptionMeta(provider_name="p", provider_type="openai", model="m", route="/r")
    prompt = UserPromptRecord(
        id=new_id(), interception_id=meta.id, provider_response_id=None, prompt=PROMPT,
        created_at=utc_now(), original_bytes=len(PROMPT),
    )  # fmt: skip
    assert "prompt" not in record_fields(prompt)
    assert record_fields(prompt, content=True)["prompt"] == PROMPT
    assert record_fields(interception_started(meta))["interception_id"] == meta.id
