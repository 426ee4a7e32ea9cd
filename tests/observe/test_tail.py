"""The live tail's hub and sink, fed records; and once through the real relay."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import anthropic
import msgspec
import pytest
import trio

from relay.facts import Facts, ToolCall, Usage
from relay.observe.tail import (
    TailClosed,
    TailEvent,
    TailFilter,
    TailHub,
    TailSink,
    TooManyViewers,
    UserNames,
    finished_events,
)
from relay.record.events import InterceptionMeta, Record, interception_started, records_for
from tests.relay_harness import mock_and_relay

T0 = datetime(2026, 12, 4, 3, 0, tzinfo=UTC)
ALICE = uuid.UUID("01936a3e-0000-7000-8000-000000000001")
PROMPT = "a secret plan the tail must not carry"


def finished(
    *,
    provider: str = "anthropic",
    model: str = "claude-sonnet-4-5",
    user: uuid.UUID | None = ALICE,
    client: str = "claude-code",
    status: str = "completed",
    tokens: int = 10,
) -> list[Record]:
    meta = InterceptionMeta(
        provider_name=provider,
        provider_type="anthropic",
        model=model,
        route="/v1/messages",
        initiator_id=user,
        client=client,
        started_at=T0,
    )
    facts = Facts(
        response_id="msg_1",
        usage=Usage(input_tokens=tokens, output_tokens=2 * tokens),
        tool_calls=[ToolCall(id="t1", name="read_file", arguments='{"path": "/etc/passwd"}')],
    )
    error = ("upstream_error", "it broke") if status == "failed" else None
    return records_for(
        meta, facts, PROMPT, status, error, ended_at=T0 + timedelta(milliseconds=1500)
    )


class Collect:
    def __init__(self) -> None:
        self.rows: list[Record] = []

    def record(self, records: Sequence[Record]) -> None:
        self.rows.extend(records)


def test_a_finished_interception_is_one_event_without_its_content() -> None:
    rows = finished(tokens=7)
    [event] = finished_events(rows)
    assert event.id == str(rows[0].id)
    assert (event.provider, event.model, event.client, event.status) == (
        "anthropic",
        "claude-sonnet-4-5",
        "claude-code",
        "completed",
    )
    assert event.user_id == str(ALICE)
    assert (event.input_tokens, event.output_tokens) == (7, 14)
    assert event.duration_ms == 1500
    assert event.cost_micros is None  # no price book: unpriced, not $0
    encoded = msgspec.json.encode(event).decode()
    assert PROMPT not in encoded and "passwd" not in encoded and "read_file" not in encoded


def test_a_start_is_not_an_event_and_a_batch_of_several_gives_each() -> None:
    meta = InterceptionMeta(provider_name="p", provider_type="openai", model="m", route="/r")
    assert finished_events([interception_started(meta)]) == []
    rows = [*finished(tokens=1), interception_started(meta), *finished(status="failed", tokens=3)]
    events = finished_events(rows)
    assert [(e.status, e.input_tokens) for e in events] == [("completed", 1), ("failed", 3)]
    assert events[1].error_type == "upstream_error"


def test_the_sink_passes_every_row_on_and_builds_events_only_while_watched() -> None:
    inner, hub = Collect(), TailHub()
    sink = TailSink(inner, hub)
    rows = finished()
    sink.record(rows)
    assert inner.rows == rows
    viewer = hub.subscribe(TailFilter())
    sink.record(rows)
    assert inner.rows == rows + rows
    events, missed = viewer.take()
    assert [e.id for e in events] == [str(rows[0].id)] and missed == 0
    assert not viewer.ready.is_set()


@pytest.mark.parametrize(
    ("tail_filter", "expected"),
    [
        (TailFilter(), ["a", "b", "c"]),
        (TailFilter(provider="openai"), ["b"]),
        (TailFilter(model="gpt-5"), ["b"]),
        (TailFilter(status="failed"), ["c"]),
        (TailFilter(client="codex"), ["b"]),
        (TailFilter(user_id=str(ALICE)), ["a", "b"]),
        (TailFilter(provider="anthropic", status="completed"), ["a"]),
        (TailFilter(provider="nope"), []),
    ],
)
def test_filters_are_applied_before_an_event_is_queued(
    tail_filter: TailFilter, expected: list[str]
) -> None:
    hub = TailHub()
    viewer = hub.subscribe(tail_filter)
    sink = TailSink(Collect(), hub)
    batches = {
        "a": finished(),
        "b": finished(provider="openai", model="gpt-5", client="codex"),
        "c": finished(user=None, status="failed"),
    }
    for rows in batches.values():
        sink.record(rows)
    names = {str(rows[0].id): name for name, rows in batches.items()}
    events, _ = viewer.take()
    assert [names[e.id] for e in events] == expected
    assert len(viewer) == 0


def _event(n: int) -> TailEvent:
    return TailEvent(
        id=str(n),
        started_at=T0,
        ended_at=T0,
        user_id=None,
        provider="p",
        model="m",
        client="c",
        status="completed",
    )


def test_a_slow_viewer_keeps_at_most_its_queue_and_is_told_what_it_missed() -> None:
    hub = TailHub(queue_size=8)
    slow, fast = hub.subscribe(TailFilter()), hub.subscribe(TailFilter())
    taken: list[str] = []
    for n in range(10_000):
        hub.publish(_event(n))
        assert len(slow) <= 8
        if n % 4 == 3:
            events, missed = fast.take()
            assert missed == 0
            taken += [e.id for e in events]
    assert taken == [str(n) for n in range(10_000)]
    events, missed = slow.take()
    # The newest eight are kept, the rest counted; then the count starts again.
    assert [e.id for e in events] == [str(n) for n in range(9_992, 10_000)]
    assert missed == 9_992
    hub.publish(_event(10_000))
    assert slow.take() == ([_event(10_000)], 0)


def test_viewers_are_capped_and_a_slot_comes_back_when_one_leaves() -> None:
    hub = TailHub(max_viewers=2)
    first = hub.subscribe(TailFilter())
    hub.subscribe(TailFilter())
    with pytest.raises(TooManyViewers):
        hub.subscribe(TailFilter())
    hub.unsubscribe(first)
    hub.unsubscribe(first)  # twice is harmless
    assert len(hub) == 1
    hub.subscribe(TailFilter())
    assert len(hub) == 2


def test_user_names_are_bounded() -> None:
    names = UserNames(max_entries=3)
    for n in range(5):
        names.put(str(n), f"user{n}")
    assert len(names) == 3
    assert names.get("0") is None and names.get("4") == "user4"
    names.get("2")  # recently used: kept
    names.put("5", "user5")
    assert names.get("2") == "user2" and names.get("3") is None


async def test_a_request_through_the_relay_reaches_a_viewer_of_the_hub(pg_dsn, tmp_path) -> None:
    async with mock_and_relay(pg_dsn, tmp_path) as (_mock, relay):
        services = relay.app.services
        assert services is not None and services.tail is not None
        viewer = services.tail.subscribe(TailFilter(provider="anthropic"))
        client = anthropic.AsyncAnthropic(
            api_key=relay.token, base_url=relay.gateway("anthropic"), max_retries=0
        )
        raw = await client.messages.with_raw_response.create(
            model="mock-tool",
            max_tokens=100,
            messages=[{"role": "user", "content": PROMPT}],
        )
        with trio.fail_after(10):
            await viewer.ready.wait()
        [event], missed = viewer.take()
        assert missed == 0
        assert event.id == raw.headers["x-relay-interception-id"]
        assert event.status == "completed" and event.provider == "anthropic"
        assert event.input_tokens > 0 and event.output_tokens > 0
        user_id = await relay.db.fetchval("SELECT id::text FROM users WHERE name = 'alice'")
        assert event.user_id == user_id
        services.tail.unsubscribe(viewer)


def test_closing_the_hub_wakes_every_viewer_and_refuses_new_ones() -> None:
    hub = TailHub()
    viewers = [hub.subscribe(TailFilter()), hub.subscribe(TailFilter(provider="x"))]
    hub.close()
    assert all(v.ready.is_set() for v in viewers)
    with pytest.raises(TailClosed):
        hub.subscribe(TailFilter())
