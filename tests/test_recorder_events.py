"""The recorder's pure parts: records_for, client detection, JSON Schemas."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest

from relay.facts import Facts, ToolCall, Usage
from relay.record import events
from relay.record.events import (
    InterceptionMeta,
    InterceptionRecord,
    ModelThoughtRecord,
    Record,
    TokenUsageRecord,
    ToolUsageRecord,
    UserPromptRecord,
    client_session_id,
    detect_client,
    records_for,
)

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
T1 = datetime(2025, 3, 1, 12, 0, 5, tzinfo=UTC)


def meta(**changes: object) -> InterceptionMeta:
    fields: dict[str, object] = dict(
        provider_name="anthropic-corp",
        provider_type="anthropic",
        model="claude-sonnet-4-5",
        route="/v1/messages",
        initiator_id=uuid.UUID("00000000-0000-4000-8000-000000000001"),
        api_key_id="0123456789ab",
        client="claude-code",
        client_session_id="sess-1",
        user_agent="claude-cli/2.0.14 (external, cli)",
        credential_kind="byok",
        credential_hint="sk-…abcd",
        started_at=T0,
    )
    fields.update(changes)
    return InterceptionMeta(**fields)  # type: ignore[arg-type]


def full_facts() -> Facts:
    return Facts(
        response_id="msg_01",
        model="claude-sonnet-4-5-20250929",
        usage=Usage(
            input_tokens=10,
            output_tokens=20,
            cache_read_tokens=30,
            cache_write_tokens=40,
            extra={"cache_creation_1h": 40, "web_search_requests": 1},
            raw={"input_tokens": 10, "output_tokens": 20, "nested": {"a": [1, 2]}},
        ),
        tool_calls=[
            ToolCall(id="toolu_1", name="read_file", arguments='{"path": "a.py"}'),
            ToolCall(id="toolu_2", name="bash", arguments='{"cmd": "ls"}', index=1),
        ],
        thoughts=["thinking about it", "more thinking"],
        stop_reason="tool_use",
    )


def test_records_for_every_field() -> None:
    m = meta()
    records = records_for(m, full_facts(), "fix the bug", "completed", ended_at=T1)
    kinds = [type(r) for r in records]
    assert kinds == [
        InterceptionRecord,
        TokenUsageRecord,
        UserPromptRecord,
        ToolUsageRecord,
        ToolUsageRecord,
        ModelThoughtRecord,
        ModelThoughtRecord,
    ]
    interception = records[0]
    assert isinstance(interception, InterceptionRecord)
    assert interception.id == m.id
    assert (interception.started_at, interception.ended_at) == (T0, T1)
    assert interception.status == "completed"
    assert (interception.error_type, interception.error_message) == (None, None)
    for name in (
        "initiator_id",
        "api_key_id",
        "provider_name",
        "provider_type",
        "model",
        "route",
        "client",
        "client_session_id",
        "user_agent",
        "credential_kind",
        "credential_hint",
    ):
        assert getattr(interception, name) == getattr(m, name), name
    usage = records[1]
    assert isinstance(usage, TokenUsageRecord)
    assert (usage.input_tokens, usage.output_tokens) == (10, 20)
    assert (usage.cache_read_tokens, usage.cache_write_tokens) == (30, 40)
    assert usage.extra == {"cache_creation_1h": 40, "web_search_requests": 1}
    assert usage.raw["nested"] == {"a": [1, 2]}
    tool = records[3]
    assert isinstance(tool, ToolUsageRecord)
    assert (tool.tool_call_id, tool.name, tool.input) == (
        "toolu_1",
        "read_file",
        '{"path": "a.py"}',
    )
    assert tool.injected is False and tool.invocation_error is None
    children: list[Any] = records[1:]
    assert all(r.interception_id == m.id for r in children)
    assert all(r.provider_response_id == "msg_01" for r in children)
    assert all(r.created_at == T1 for r in children)
    assert len({r.id for r in records}) == len(records)


def test_records_for_errors_and_missing_parts() -> None:
    bare = Facts(error_type="overloaded_error", error_message="Overloaded")
    (only,) = records_for(meta(), bare, None, "failed")
    assert isinstance(only, InterceptionRecord)
    assert (only.error_type, only.error_message) == ("overloaded_error", "Overloaded")

    (cancelled,) = records_for(meta(), Facts(), None, "cancelled", ("cancelled", "client left"))
    assert isinstance(cancelled, InterceptionRecord)
    assert (cancelled.error_type, cancelled.error_message) == ("cancelled", "client left")

    (raised,) = records_for(meta(), bare, None, "failed", TimeoutError("upstream read timed out"))
    assert isinstance(raised, InterceptionRecord)
    assert (raised.error_type, raised.error_message) == ("TimeoutError", "upstream read timed out")


def test_records_survive_msgpack_and_json() -> None:
    records = records_for(meta(), full_facts(), "hi", "completed")
    for module in (msgspec.msgpack, msgspec.json):
        decoded = module.decode(module.encode(records), type=list[Record])
        assert decoded == records


@pytest.mark.parametrize(
    ("headers", "client"),
    [
        ({"user-agent": "claude-cli/2.0.14 (external, cli)"}, "claude-code"),
        ({"user-agent": "codex_cli_rs/0.46.0 (Ubuntu 24.4.0; x86_64) xterm"}, "codex"),
        ({"user-agent": "Mozilla/5.0", "originator": "codex_cli_rs"}, "codex"),
        ({"user-agent": "opencode/0.15.8"}, "opencode"),
        ({"user-agent": "mux/0.8.2"}, "mux"),
        ({"user-agent": "GitHubCopilotChat/0.32.0"}, "copilot"),
        ({"user-agent": "copilot/0.0.339 (linux)"}, "copilot"),
        ({"user-agent": "Kilo-Code/4.100.0"}, "kilo"),
        ({"originator": "kilo-code"}, "kilo"),
        ({"user-agent": "node", "x-cursor-client-version": "1.7.0"}, "cursor"),
        (
            {"user-agent": "Anthropic/Python 0.69.0", "x-stainless-lang": "python"},
            "sdk-python-anthropic",
        ),
        ({"user-agent": "AsyncOpenAI/Python 2.3.0"}, "sdk-python-openai"),
        ({"user-agent": "OpenAI/JS 5.23.0"}, "sdk-node-openai"),
        ({"user-agent": "Anthropic/JS 0.65.0"}, "sdk-node-anthropic"),
        ({"user-agent": "curl/8.5.0"}, "curl"),
        ({"user-agent": "python-httpx/0.28.1"}, "unknown"),
        ({}, "unknown"),
    ],
)
def test_detect_client(headers: dict[str, str], client: str) -> None:
    asgi = [(k.encode(), v.encode()) for k, v in headers.items()]
    assert detect_client(asgi) == client


CLAUDE = (b"user-agent", b"claude-cli/2.0.14 (external, cli)")


@pytest.mark.parametrize(
    ("headers", "user_id", "session"),
    [
        ([CLAUDE, (b"x-claude-code-session-id", b" abc ")], None, "abc"),
        ([CLAUDE], "user_0a1b_account_42_session_6f9e-11", "6f9e-11"),
        ([CLAUDE], '{"device_id":"d","session_id":"s-123"}', "s-123"),
        ([CLAUDE], "user_0a1b", None),
        ([(b"user-agent", b"codex_cli_rs/0.46.0"), (b"session-id", b"c-new")], None, "c-new"),
        ([(b"user-agent", b"codex_cli_rs/0.40.0"), (b"session_id", b"c-old")], None, "c-old"),
        ([(b"user-agent", b"mux/1.0.0"), (b"x-mux-workspace-id", b"ws-1")], None, "ws-1"),
        ([(b"user-agent", b"GitHubCopilotChat/0.32"), (b"x-interaction-id", b"i-1")], None, "i-1"),
        ([(b"user-agent", b"Kilo-Code/4.1"), (b"x-kilocode-taskid", b"t-1")], None, "t-1"),
        # Another client's header is not taken for a session.
        ([(b"user-agent", b"curl/8"), (b"session-id", b"x")], "user_a_session_b", None),
    ],
)
def test_client_session_id(
    headers: list[tuple[bytes, bytes]], user_id: str | None, session: str | None
) -> None:
    assert client_session_id(headers, user_id) == session


def test_json_schemas_do_not_drift() -> None:
    """relay/schemas/json is generated from the types: `python -m relay.record.events --write-schemas`."""
    expected = events.json_schemas()
    on_disk = {p.name: p.read_bytes() for p in events.SCHEMA_DIR.glob("record*.json")}
    assert sorted(on_disk) == sorted(expected), "run python -m relay.record.events --write-schemas"
    for name, text in expected.items():
        assert on_disk[name] == text, (
            f"{name} drifted: run python -m relay.record.events --write-schemas"
        )
    union = msgspec.json.decode(expected["record.json"])
    assert {d for d in union["$defs"]} == {t.__name__ for t in events.RECORD_TYPES}
