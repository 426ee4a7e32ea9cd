"""The live tail's SSE stream through the real relay: a request arrives, filters apply,
viewers are capped, a viewer that leaves gives its slot back, heartbeats flow."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from functools import partial
from pathlib import Path

import anthropic
import httpx
import openai
import pytest
import trio

from relay.auth import create_token, create_user, revoke_token, set_admin
from relay.console import tail as console_tail
from relay.options import load_options
from relay.server import run_server
from tests.relay_harness import RunningRelay, mock_and_relay

ADMIN = "admin-console-test-token-0123456789"
P = "/api/v2/ai-gateway/admin/ui/"
USER = [{"role": "user", "content": "a prompt the tail must not carry"}]

pytestmark = pytest.mark.usefixtures("pg_dsn")


@pytest.fixture
async def admin_api(
    pg_dsn: str, tmp_path: Path
) -> AsyncIterator[tuple[RunningRelay, httpx.AsyncClient]]:
    env = {"CODER_AI_GATEWAY_ADMIN_TOKEN": ADMIN}
    async with mock_and_relay(pg_dsn, tmp_path, extra_env=env) as (_mock, relay):
        async with httpx.AsyncClient(
            base_url=relay.url + P,
            headers={"authorization": f"Bearer {ADMIN}"},
            timeout=httpx.Timeout(10, read=None),
        ) as http:
            yield relay, http


def hub(relay: RunningRelay):  # type: ignore[no-untyped-def]
    assert relay.app.services is not None and relay.app.services.tail is not None
    return relay.app.services.tail


async def wait_until(check: Callable[[], bool]) -> None:
    with trio.fail_after(10):
        while not check():
            await trio.sleep(0.01)


async def sse_events(response: httpx.Response) -> AsyncIterator[tuple[str, str]]:
    """(event, data) of each event, and ("comment", text) of each comment line."""
    event, data = "message", []
    async for line in response.aiter_lines():
        if line.startswith(":"):
            yield "comment", line[1:].strip()
        elif line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            data.append(line[6:])
        elif line == "" and data:
            yield event, "\n".join(data)
            event, data = "message", []


async def test_a_request_through_the_relay_arrives_on_the_stream_filtered(admin_api) -> None:
    relay, http = admin_api
    async with http.stream("GET", "api/tail?provider=anthropic&status=completed") as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        assert stream.headers["cache-control"] == "no-store"
        await wait_until(lambda: len(hub(relay)) == 1)
        # Filtered out: another provider.
        chat = openai.AsyncOpenAI(
            api_key=relay.token, base_url=relay.gateway("openai") + "/v1", max_retries=0
        )
        await chat.chat.completions.create(model="mock-text", messages=USER)
        client = anthropic.AsyncAnthropic(
            api_key=relay.token, base_url=relay.gateway("anthropic"), max_retries=0
        )
        raw = await client.messages.with_raw_response.create(
            model="mock-tool", max_tokens=50, messages=USER
        )
        with trio.fail_after(10):
            async for kind, data in sse_events(stream):
                if kind == "interception":
                    event = json.loads(data)
                    break
        assert event["id"] == raw.headers["x-relay-interception-id"]
        assert event["provider"] == "anthropic" and event["status"] == "completed"
        assert event["user"] == "alice" and event["model"] == "mock-tool"
        assert event["input_tokens"] > 0 and event["duration_ms"] >= 0
        assert "prompt" not in data and "must not carry" not in data
    await wait_until(lambda: len(hub(relay)) == 0)  # the viewer that left is gone


async def test_bad_filters_are_refused(admin_api) -> None:
    _relay, http = admin_api
    for query in ("status=bogus", "user=nobody", "model=" + "m" * 300):
        refused = await http.get(f"api/tail?{query}")
        assert refused.status_code == 400, query


async def test_viewers_are_capped_and_one_leaving_frees_its_slot(admin_api) -> None:
    relay, http = admin_api
    tail = hub(relay)
    tail.max_viewers = 2
    async with http.stream("GET", "api/tail") as first, http.stream("GET", "api/tail") as second:
        assert first.status_code == second.status_code == 200
        await wait_until(lambda: len(tail) == 2)
        refused = await http.get("api/tail")
        assert refused.status_code == 503 and refused.json()["error"] == "too_many_viewers"
        await first.aclose()
        await wait_until(lambda: len(tail) == 1)
        async with http.stream("GET", "api/tail") as third:
            assert third.status_code == 200
            await wait_until(lambda: len(tail) == 2)
    await wait_until(lambda: len(tail) == 0)


async def test_an_idle_stream_gets_heartbeats(admin_api) -> None:
    relay, http = admin_api
    hub(relay).heartbeat = 0.05
    async with http.stream("GET", "api/tail?user=alice") as stream:
        comments = []
        with trio.fail_after(10):
            async for kind, text in sse_events(stream):
                if kind == "comment":
                    comments.append(text)
                if "heartbeat" in comments:
                    break
        assert comments[0] == "tail open"


async def test_shutdown_ends_an_open_tail_instead_of_waiting_out_the_grace(
    pg_dsn, tmp_path
) -> None:
    """relay serve's shutdown closes the hub: the stream ends whole (not cut after the grace)."""
    env = {
        "CODER_PG_CONNECTION_URL": pg_dsn,
        "CODER_AI_GATEWAY_DATA_DIR": str(tmp_path),
        "CODER_AI_GATEWAY_HTTP_ADDRESS": "127.0.0.1:0",
        "CODER_AI_GATEWAY_ADMIN_TOKEN": ADMIN,
        # Far longer than the fail_after below: a tail left to the grace would fail the test.
        "CODER_AI_GATEWAY_SHUTDOWN_GRACE": "120s",
    }
    options = load_options(env, warn=lambda line: None)
    lines: list[str] = []
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        app = await nursery.start(
            partial(run_server, options, env=env, shutdown_trigger=stop.wait, out=lines.append)
        )
        url = next(line for line in lines if "listening on" in line).split("listening on ")[1]
        url = url.split()[0].rstrip(",")
        async with httpx.AsyncClient(
            base_url=url + P,
            headers={"authorization": f"Bearer {ADMIN}"},
            timeout=httpx.Timeout(10, read=None),
        ) as http:
            async with http.stream("GET", "api/tail") as stream:
                assert stream.status_code == 200
                await wait_until(lambda: len(app.services.tail) == 1)
                stop.set()
                with trio.fail_after(30):
                    comments = [
                        text async for kind, text in sse_events(stream) if kind == "comment"
                    ]
                assert comments == ["tail open"]  # and the body ended whole: no protocol error


async def test_a_tail_ends_when_its_viewer_is_no_longer_an_admin(
    admin_api, monkeypatch: pytest.MonkeyPatch
) -> None:
    relay, _http = admin_api
    monkeypatch.setattr(console_tail, "RECHECK", 0.0)
    hub(relay).heartbeat = 0.05
    db = relay.db
    await create_user(db, "ops", admin=True)
    token, row = await create_token(db, "ops")
    for end in ("revoke", "role", "signout"):
        async with httpx.AsyncClient(
            base_url=relay.url + P, timeout=httpx.Timeout(10, read=None)
        ) as c:
            if end == "signout":
                signed = await c.post("signin", data={"token": token})
                assert signed.status_code == 303
                headers = {}
            else:
                headers = {"authorization": f"Bearer {token}"}
            async with c.stream("GET", "api/tail", headers=headers) as stream:
                assert stream.status_code == 200
                lines = stream.aiter_lines()
                with trio.fail_after(10):
                    async for line in lines:
                        if "heartbeat" in line:
                            break  # still an admin: heartbeats flow
                if end == "revoke":
                    await revoke_token(db, row.id)
                elif end == "role":
                    await set_admin(db, "ops", False)
                else:
                    await db.execute("DELETE FROM console_sessions")
                with trio.fail_after(10):
                    async for _line in lines:
                        pass  # the stream ends by itself
            await wait_until(lambda: len(hub(relay)) == 0)
            if end == "revoke":
                token, row = await create_token(db, "ops")
            elif end == "role":
                await set_admin(db, "ops", True)
