"""Issue 4's "done when", end to end: what the relay records, through the real relay.

The official SDKs talk to the real relay (hypercorn, trio worker) in front of
the mock upstream, whose scenarios report known token figures; the relay
records into its own PostgreSQL database. Then:

1. every recorded field, for each API, blocking and streaming;
2. a client leaving mid-stream: ``cancelled``, with the usage known so far;
   an upstream error: ``failed``, with its error (and the usage so far);
3. PostgreSQL stopped in the middle of a run of streams: the streams go on,
   and afterwards every interception and usage row is there exactly once;
4. a relay stopped with records in its spool (the database was down), and a
   new relay on the same data directory: the rows appear exactly once.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
import trio

from relay.db import Database
from relay.db.bridge import UNAVAILABLE_ERRORS
from relay.providers.types import mask_secret
from relay.record.spool import SEGMENT_SUFFIX
from relay.testing.mock_upstream import scenarios
from relay.testing.mock_upstream.server import MockUpstream
from tests.relay_harness import RunningRelay, mock_and_relay, mock_providers_env, running_relay

UPSTREAM_KEY = "sk-upstream-test-key-0001"  # the harness's provider key
OWN_KEY = "sk-own-provider-key-for-byok-7f3e"  # a person's own key (BYOK)
CLAUDE_CODE_UA = "claude-cli/2.0.14 (external, cli)"
CODEX_UA = "codex_cli_rs/0.46.0 (Ubuntu 24.4.0; x86_64) xterm-256color"

# Several turns: the recorded prompt is the last user message (its text parts
# joined with a newline), not the first one.
LAST_PROMPT_PARTS = ("What is the weather", "in Paris, in celsius?")
LAST_PROMPT = "\n".join(LAST_PROMPT_PARTS)
EARLIER_TURNS: list[Any] = [
    {"role": "user", "content": "An earlier question"},
    {"role": "assistant", "content": "An earlier answer"},
]
MESSAGES: list[Any] = [
    *EARLIER_TURNS,
    {"role": "user", "content": [{"type": "text", "text": t} for t in LAST_PROMPT_PARTS]},
]
RESPONSES_INPUT: list[Any] = [
    *EARLIER_TURNS,
    {"role": "user", "content": [{"type": "input_text", "text": t} for t in LAST_PROMPT_PARTS]},
]

ROUTES = {"messages": "/v1/messages", "chat": "/v1/chat/completions", "responses": "/v1/responses"}


def anthropic_client(relay: RunningRelay, api_key: str | None = None) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(
        api_key=api_key or relay.token, base_url=relay.gateway("anthropic"), max_retries=0
    )


def openai_client(relay: RunningRelay, api_key: str | None = None) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        api_key=api_key or relay.token, base_url=relay.gateway("openai") + "/v1", max_retries=0
    )


# --- asking through each API ------------------------------------------------------------------


@dataclass
class Seen:
    """What the client saw of one response, as its SDK parsed it."""

    response_id: str
    # (call id, name, input as parsed by the SDK, input text where the SDK keeps it)
    tool_calls: list[tuple[str, str, Any, str | None]] = field(default_factory=list)


async def ask_messages(relay: RunningRelay, model: str, streaming: bool, case: Case) -> Seen:
    async with anthropic_client(relay, OWN_KEY if case.byok else None) as client:
        kwargs: dict[str, Any] = {
            "model": model,
            "max_tokens": 100,
            "messages": MESSAGES,
            "extra_headers": case.headers,
        }
        if case.metadata_user_id is not None:
            kwargs["metadata"] = {"user_id": case.metadata_user_id}
        if streaming:
            async with client.messages.stream(**kwargs) as stream:
                message = await stream.get_final_message()
        else:
            message = await client.messages.create(**kwargs)
        tools = [b for b in message.content if b.type == "tool_use"]
        return Seen(message.id, [(b.id, b.name, b.input, None) for b in tools])


async def ask_chat(relay: RunningRelay, model: str, streaming: bool, case: Case) -> Seen:
    async with openai_client(relay, OWN_KEY if case.byok else None) as client:
        kwargs: dict[str, Any] = {
            "model": model,
            "messages": MESSAGES,
            "extra_headers": case.headers,
        }
        if streaming:
            async with client.chat.completions.stream(**kwargs) as stream:
                completion: Any = await stream.get_final_completion()
        else:
            completion = await client.chat.completions.create(**kwargs)
        calls = completion.choices[0].message.tool_calls or []
        return Seen(
            completion.id,
            [
                (c.id, c.function.name, json.loads(c.function.arguments), c.function.arguments)
                for c in calls
            ],
        )


async def ask_responses(relay: RunningRelay, model: str, streaming: bool, case: Case) -> Seen:
    async with openai_client(relay, OWN_KEY if case.byok else None) as client:
        kwargs: dict[str, Any] = {
            "model": model,
            "input": RESPONSES_INPUT,
            "extra_headers": case.headers,
        }
        if streaming:
            async with client.responses.stream(**kwargs) as stream:
                response: Any = await stream.get_final_response()
        else:
            response = await client.responses.create(**kwargs)
        calls = [o for o in response.output if o.type == "function_call"]
        return Seen(
            response.id, [(c.call_id, c.name, json.loads(c.arguments), c.arguments) for c in calls]
        )


Ask = Callable[[RunningRelay, str, bool, "Case"], Awaitable[Seen]]
ASK: dict[str, Ask] = {"messages": ask_messages, "chat": ask_chat, "responses": ask_responses}


# --- what each request should have recorded ---------------------------------------------------


@dataclass
class Case:
    """One request of the field test: who it claims to be and what it must record."""

    scenario: str
    headers: dict[str, str]
    client: str
    session: str | None
    user_agent: str | None  # None: the SDK's own User-Agent
    byok: bool = False
    metadata_user_id: str | None = None


def cases_for(api: str, relay_token: str) -> list[Case]:
    """Three requests per API: an SDK with the person's own key (BYOK: the
    relay token in the governance header), and the two ways each coding agent
    names its session."""
    session = str(uuid.uuid4())
    byok = {"X-AI-Gov-Token": relay_token}
    if api == "messages":
        metadata = f"user_{'ab' * 32}_account_{uuid.uuid4()}_session_{session}"
        return [
            Case("text", byok, "sdk-python-anthropic", None, None, byok=True),
            Case(
                "parallel-tools",
                {"User-Agent": CLAUDE_CODE_UA, "X-Claude-Code-Session-Id": "cc-" + session},
                "claude-code",
                "cc-" + session,
                CLAUDE_CODE_UA,
            ),
            # No session header: Claude Code's session inside metadata.user_id.
            Case(
                "thinking",
                {"User-Agent": CLAUDE_CODE_UA},
                "claude-code",
                session,
                CLAUDE_CODE_UA,
                metadata_user_id=metadata,
            ),
        ]
    return [
        Case("text", byok, "sdk-python-openai", None, None, byok=True),
        Case(
            "parallel-tools",
            {"User-Agent": CODEX_UA, "originator": "codex_cli_rs", "session-id": "cx-" + session},
            "codex",
            "cx-" + session,
            CODEX_UA,
        ),
        # Older Codex: session_id; recognised by its originator alone.
        Case(
            "thinking",
            {"originator": "codex_exec", "session_id": "old-" + session},
            "codex",
            "old-" + session,
            None,
        ),
    ]


def expected_usage(api: str, scenario: str) -> dict[str, object]:
    """The token_usages columns the mock's figures must give, normalised as documented."""
    usage = scenarios.usage_for(scenario)
    if api == "messages":
        extra = {
            "cache_creation_5m": usage.cache_write_5m_tokens,
            "cache_creation_1h": usage.cache_write_1h_tokens,
        }
        cache_write, raw = usage.cache_write_tokens, usage.anthropic()
    else:
        # OpenAI counts cached tokens inside the prompt and reports no cache writes.
        extra = {"cached": usage.cache_read_tokens, "reasoning": usage.reasoning_tokens}
        cache_write = 0
        raw = usage.openai_chat() if api == "chat" else usage.openai_responses()
    return {
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cache_read_tokens": usage.cache_read_tokens,
        "cache_write_tokens": cache_write,
        "extra": {k: v for k, v in extra.items() if v},  # only the counts present
        "raw": raw,
    }


def expected_thoughts(api: str, scenario: str) -> list[str]:
    if scenario != "thinking":
        return []
    # The mock's chat completions carry no reasoning text (only a reasoning count).
    return {"messages": [scenarios.THINKING], "responses": [scenarios.REASONING_SUMMARY]}.get(
        api, []
    )


def as_json(value: object) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def by_interception(rows: list[Any]) -> dict[uuid.UUID, list[Any]]:
    grouped: dict[uuid.UUID, list[Any]] = {}
    for row in rows:
        grouped.setdefault(row["interception_id"], []).append(row)
    return grouped


async def all_rows(relay: RunningRelay, table: str) -> list[Any]:
    return await relay.db.fetch(f"SELECT * FROM {table} ORDER BY id")


def assert_no_secret(tables: Mapping[str, list[Any]], secrets: list[str]) -> None:
    """No column of any row holds a whole key or token (checked without printing them)."""
    for table, rows in tables.items():
        for row in rows:
            for column, value in dict(row).items():
                text = value if isinstance(value, str) else json.dumps(value, default=str)
                leaked = [i for i, s in enumerate(secrets) if s in text]
                assert not leaked, f"{table}.{column} holds secret #{leaked[0]} in full"


# --- 1. every field, each API, blocking and streaming -----------------------------------------


@pytest.mark.parametrize("streaming", [False, True], ids=["blocking", "streaming"])
@pytest.mark.parametrize("api", ["messages", "chat", "responses"])
async def test_every_recorded_field(pg_dsn: str, tmp_path: Path, api: str, streaming: bool):
    chunking = "random" if streaming else "event"
    async with mock_and_relay(pg_dsn, tmp_path, chunking=chunking) as (_mock, relay):
        user_id = await relay.db.fetchval("SELECT id FROM users WHERE name = 'alice'")
        api_key_id = await relay.db.fetchval("SELECT id FROM api_keys WHERE user_id = $1", user_id)
        async with (anthropic_client if api == "messages" else openai_client)(relay) as sdk:
            sdk_user_agent = sdk.user_agent
        cases = cases_for(api, relay.token)
        before = datetime.now(UTC)
        seen = []
        for case in cases:
            model = f"mock-{case.scenario}"
            seen.append(await ASK[api](relay, model, streaming, case))
        interceptions = await relay.wait_for_rows(
            "SELECT * FROM interceptions ORDER BY started_at", count=len(cases)
        )
        after = datetime.now(UTC)  # the relay ends an interception after its last byte
        tables = {
            t: await all_rows(relay, t)
            for t in ("token_usages", "user_prompts", "tool_usages", "model_thoughts")
        }

    assert len(interceptions) == len(cases)
    usages = by_interception(tables["token_usages"])
    prompts = by_interception(tables["user_prompts"])
    tools = by_interception(tables["tool_usages"])
    thoughts = by_interception(tables["model_thoughts"])
    # No child row without its interception.
    ids = {row["id"] for row in interceptions}
    for grouped in (usages, prompts, tools, thoughts):
        assert set(grouped) <= ids

    for case, answer, row in zip(cases, seen, interceptions, strict=True):
        model = f"mock-{case.scenario}"
        iid = row["id"]
        assert row["initiator_id"] == user_id
        assert row["api_key_id"] == api_key_id
        assert (row["provider_name"], row["provider_type"]) == (
            ("anthropic", "anthropic") if api == "messages" else ("openai", "openai")
        )
        assert row["model"] == model
        assert row["route"] == ROUTES[api]
        assert before <= row["started_at"] <= row["ended_at"] <= after
        assert (row["status"], row["error_type"], row["error_message"]) == ("completed", None, None)
        assert row["client"] == case.client
        assert row["client_session_id"] == case.session
        assert row["user_agent"] == (case.user_agent or sdk_user_agent)
        assert row["credential_kind"] == ("byok" if case.byok else "centralized")
        assert row["credential_hint"] == mask_secret(OWN_KEY if case.byok else UPSTREAM_KEY)

        [usage] = usages[iid]
        want = expected_usage(api, case.scenario)
        got = {k: as_json(usage[k]) if k in ("extra", "raw") else usage[k] for k in want}
        assert got == want, model
        assert usage["provider_response_id"] == answer.response_id

        [prompt] = prompts[iid]
        assert prompt["prompt"] == LAST_PROMPT
        assert prompt["provider_response_id"] == answer.response_id

        recorded_tools = sorted(tools.get(iid, []), key=lambda r: r["tool_call_id"])
        sdk_tools = sorted(answer.tool_calls)
        want_count = len(scenarios.PARALLEL_TOOL_CALLS) if case.scenario == "parallel-tools" else 0
        assert len(sdk_tools) == len(recorded_tools) == want_count
        for tool, (call_id, name, parsed, text) in zip(recorded_tools, sdk_tools, strict=True):
            assert (tool["tool_call_id"], tool["name"]) == (call_id, name)
            assert json.loads(tool["input"]) == parsed
            if text is not None:  # the OpenAI SDKs keep the JSON text: stored as produced
                assert tool["input"] == text
            assert tool["injected"] is False
            assert tool["invocation_error"] is None
            assert tool["provider_response_id"] == answer.response_id

        assert [t["content"] for t in thoughts.get(iid, [])] == expected_thoughts(
            api, case.scenario
        )
        for child in (usage, prompt, *recorded_tools, *thoughts.get(iid, [])):
            assert child["created_at"] == row["ended_at"]

    assert_no_secret(
        {"interceptions": interceptions, **tables}, [UPSTREAM_KEY, OWN_KEY, relay.token]
    )


# --- 2. cancelled and failed -------------------------------------------------------------------


async def test_cancelled_stream_records_the_usage_known_so_far(pg_dsn: str, tmp_path: Path):
    # A long, paced stream: the client is certainly gone before its end.
    slow = {"x-mock-events": "200", "x-mock-gap-ms": "10"}
    async with mock_and_relay(pg_dsn, tmp_path) as (mock, relay):
        async with (
            anthropic_client(relay) as client,
            client.messages.stream(
                model="mock-long", max_tokens=100, messages=MESSAGES, extra_headers=slow
            ) as stream,
        ):
            texts = 0
            async for event in stream:
                texts += event.type == "text"
                if texts == 3:
                    break
            message_id = stream.current_message_snapshot.id
        # Leaving the block closed the connection; the relay closes the upstream's.
        await mock.wait_for_close(request_index=0)

        # Chat Completions reports usage only in its last chunk: nothing is known.
        async with openai_client(relay) as chat:
            stream_chat = await chat.chat.completions.create(
                model="mock-long", messages=MESSAGES, stream=True, extra_headers=slow
            )
            chunks = 0
            async for _chunk in stream_chat:
                chunks += 1
                if chunks == 3:
                    break
            await stream_chat.close()
        await mock.wait_for_close(request_index=1)

        rows = await relay.wait_for_rows(
            "SELECT i.id, i.provider_type, i.status, i.started_at, i.ended_at, "
            "u.provider_response_id, u.input_tokens, u.output_tokens, u.cache_read_tokens, "
            "u.cache_write_tokens, u.raw, p.prompt "
            "FROM interceptions i LEFT JOIN token_usages u ON u.interception_id = i.id "
            "LEFT JOIN user_prompts p ON p.interception_id = i.id ORDER BY i.started_at",
            count=2,
        )
    messages, chat_row = rows
    assert messages["status"] == chat_row["status"] == "cancelled"
    assert messages["started_at"] <= messages["ended_at"]
    # Anthropic's message_start: the input and cache figures, and output_tokens 1.
    assert messages["provider_response_id"] == message_id
    assert (
        messages["input_tokens"],
        messages["output_tokens"],
        messages["cache_read_tokens"],
        messages["cache_write_tokens"],
    ) == (scenarios.LONG_INPUT_TOKENS, 1, scenarios.LONG_CACHE_READ_TOKENS, 0)
    assert as_json(messages["raw"])["input_tokens"] == scenarios.LONG_INPUT_TOKENS
    assert messages["prompt"] == LAST_PROMPT
    assert chat_row["provider_type"] == "openai"
    assert chat_row["input_tokens"] is None  # no usage row: none was known
    assert chat_row["prompt"] == LAST_PROMPT


async def test_failed_interceptions_record_their_error(pg_dsn: str, tmp_path: Path):
    async with mock_and_relay(pg_dsn, tmp_path) as (_mock, relay):
        async with anthropic_client(relay) as client:
            with pytest.raises(anthropic.InternalServerError):
                await client.messages.create(
                    model="mock-error-status", max_tokens=100, messages=MESSAGES
                )
            # An error event after some content: the SDK raises, the usage so far is kept.
            with pytest.raises(anthropic.APIStatusError, match="overloaded_error"):
                async with client.messages.stream(
                    model="mock-error-midstream", max_tokens=100, messages=MESSAGES
                ) as stream:
                    await stream.get_final_message()
        rows = await relay.wait_for_rows(
            "SELECT i.model, i.status, i.error_type, i.error_message, u.input_tokens, "
            "u.output_tokens, u.cache_read_tokens FROM interceptions i "
            "LEFT JOIN token_usages u ON u.interception_id = i.id ORDER BY i.started_at",
            count=2,
        )
    status_row, midstream = rows
    assert (status_row["status"], status_row["error_type"]) == ("failed", "upstream_500")
    # The provider's own error body, as it answered.
    error = json.loads(status_row["error_message"])["error"]
    assert error["type"] == "api_error"
    assert status_row["input_tokens"] is None  # an error answer reports no usage
    assert (midstream["status"], midstream["error_type"], midstream["error_message"]) == (
        "failed",
        "overloaded_error",
        "Overloaded",
    )
    cut = scenarios.usage_for("error-midstream")
    assert (midstream["input_tokens"], midstream["output_tokens"]) == (
        cut.input_tokens,
        cut.output_tokens,
    )
    assert midstream["cache_read_tokens"] == cut.cache_read_tokens


# --- 3 and 4. PostgreSQL away -----------------------------------------------------------------


async def claude_code_stream(relay: RunningRelay, session: str) -> str:
    """One Anthropic stream, tagged with its own session id; the message id the client saw."""
    async with anthropic_client(relay) as client:
        headers = {"User-Agent": CLAUDE_CODE_UA, "X-Claude-Code-Session-Id": session}
        async with client.messages.stream(
            model="mock-text", max_tokens=100, messages=MESSAGES, extra_headers=headers
        ) as stream:
            text = "".join([t async for t in stream.text_stream])
            message = await stream.get_final_message()
        assert text == scenarios.TEXT
        assert message.usage.output_tokens == scenarios.usage_for("text").output_tokens
        return message.id


async def recorded_by_session(dsn: str, expected: int, timeout: float = 20) -> dict[str, Any]:
    """Once ``expected`` interceptions are there, none still ``in_progress``: per
    session, the interceptions' and usage rows' counts and the response ids. Reads
    on its own connection, retrying while PostgreSQL is still coming back.

    Settled, not only present: an interception's start row and its end (with its
    usage and prompt) are separate batches, so a replay can be between them.
    """
    query = (
        "SELECT i.client_session_id AS session, count(DISTINCT i.id) AS interceptions, "
        "bool_or(i.status = 'in_progress') AS open, "
        "count(u.id) AS usages, array_agg(u.provider_response_id) AS response_ids, "
        "(SELECT count(*) FROM token_usages) AS all_usages, "
        "(SELECT count(*) FROM user_prompts) AS all_prompts "
        "FROM interceptions i LEFT JOIN token_usages u ON u.interception_id = i.id GROUP BY 1"
    )
    with trio.fail_after(timeout):
        while True:
            try:
                async with Database.open(dsn, max_size=1) as db:
                    while True:
                        rows = await db.fetch(query)
                        present = sum(r["interceptions"] for r in rows)
                        if present >= expected and not any(r["open"] for r in rows):
                            return {r["session"]: r for r in rows}
                        await trio.sleep(0.05)
            except UNAVAILABLE_ERRORS:
                await trio.sleep(0.1)


def assert_exactly_once(recorded: dict[str, Any], seen: dict[str, str]) -> None:
    assert set(recorded) == set(seen), "interceptions missing or unexpected"
    for session, response_id in seen.items():
        row = recorded[session]
        assert (row["interceptions"], row["usages"]) == (1, 1), session
        assert row["response_ids"] == [response_id], session
    any_row = next(iter(recorded.values()))
    assert any_row["all_usages"] == any_row["all_prompts"] == len(seen)  # no orphans


async def test_database_stopped_mid_run_loses_and_duplicates_nothing(
    pg_cluster: Any, pg_dsn: str, tmp_path: Path
):
    streams, stop_after, down_until, start_at = 30, 10, 20, 26
    seen: dict[str, str] = {}
    async with mock_and_relay(pg_dsn, tmp_path) as (_mock, relay):
        recorder = relay.app.services.recorder  # type: ignore[union-attr]
        # One token for the whole run: verified (and cached) while the database is up
        # (running_relay returns once the token's own announcement was handled).
        stopping, stopped = False, trio.Event()

        async def stop() -> None:
            try:
                await trio.to_thread.run_sync(pg_cluster.stop)
            finally:
                stopped.set()

        async with trio.open_nursery() as nursery:
            try:
                for i in range(streams):
                    if i == stop_after:
                        stopping = True
                        nursery.start_soon(stop)  # streams go on while it stops
                    if i == down_until:
                        await stopped.wait()  # these streams run while it is down for sure
                    if i == start_at:
                        nursery.start_soon(trio.to_thread.run_sync, pg_cluster.start)
                    session = f"run-{i:02d}"
                    seen[session] = await claude_code_stream(relay, session)
                    await trio.sleep(0.02)
            finally:
                # Also after a failure: the cluster is the whole test run's.
                with trio.CancelScope(shield=True):
                    if stopping:
                        await stopped.wait()
                    await trio.to_thread.run_sync(pg_cluster.start)
        recorded = await recorded_by_session(pg_dsn, streams)
        stats = recorder.stats
        assert stats.spooled > 0, "the outage never reached the recorder"
        assert stats.replayed > 0
        assert stats.lost == stats.rejected == 0
    assert_exactly_once(recorded, seen)


async def test_restart_with_a_non_empty_spool(pg_cluster: Any, pg_dsn: str, tmp_path: Path):
    mock = MockUpstream()
    spool_dir = tmp_path / "spool"
    seen: dict[str, str] = {}
    async with trio.open_nursery() as nursery:
        await nursery.start(mock.serve, 0)
        env = mock_providers_env(mock)
        try:
            async with running_relay(pg_dsn, tmp_path, env, user="alice") as first:
                recorder = first.app.services.recorder  # type: ignore[union-attr]
                seen["before"] = await claude_code_stream(first, "before")
                await first.wait_for_rows("SELECT id FROM interceptions")
                await trio.to_thread.run_sync(pg_cluster.stop)
                for i in range(5):
                    session = f"spooled-{i}"
                    seen[session] = await claude_code_stream(first, session)
            # A graceful stop with the database away: everything went to the spool.
            assert recorder.stats.lost == 0
            # interception (at its start and at its end), usage, prompt each
            assert recorder.stats.spooled == 5 * 4
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(pg_cluster.start)
        assert list(spool_dir.glob(f"*{SEGMENT_SUFFIX}")), "nothing was left in the spool"
        async with Database.open(pg_dsn, max_size=1) as db:
            assert await db.fetchval("SELECT count(*) FROM interceptions") == 1

        async with running_relay(pg_dsn, tmp_path, env, user="bob") as second:
            recorded = await recorded_by_session(pg_dsn, len(seen))
            replayed = second.app.services.recorder.stats.replayed  # type: ignore[union-attr]
        nursery.cancel_scope.cancel()
    assert_exactly_once(recorded, seen)
    assert replayed > 0
    assert not list(spool_dir.glob(f"*{SEGMENT_SUFFIX}")), "the replayed spool was kept"
