"""The recorder's pure parts: records_for, JSON Schemas."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import msgspec

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
