"""The admin API, served by hypercorn on loopback and queried with httpx."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import httpx
import pytest
import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from relay.admin.api import handle_admin
from relay.db import Database
from relay.facts import Facts, ToolCall, Usage
from relay.record.events import InterceptionMeta, Record, records_for
from relay.record.writer import write_batch

ADMIN_TOKEN = "admin-test-token-0123456789"
BASE = "/api/v2/ai-gateway/admin/interceptions"
T0 = datetime(2025, 4, 1, 8, 0, tzinfo=UTC)


@pytest.fixture
async def serve_admin(
    db: Database,
) -> AsyncIterator[Callable[[str], Awaitable[httpx.AsyncClient]]]:
    """Start the handler under hypercorn with a given admin token; yields a client factory."""
    async with trio.open_nursery() as nursery:
        clients: list[httpx.AsyncClient] = []

        async def start(token: str) -> httpx.AsyncClient:
            async def app(scope: Any, receive: Any, send: Any) -> None:
                if scope["type"] == "lifespan":
                    while True:
                        message = await receive()
                        if message["type"] == "lifespan.startup":
                            await send({"type": "lifespan.startup.complete"})
                        elif message["type"] == "lifespan.shutdown":
                            await send({"type": "lifespan.shutdown.complete"})
                            return
                await handle_admin(scope, receive, send, db, token)

            config = Config()
            config.bind = ["127.0.0.1:0"]
            config.accesslog = None
            binds = await nursery.start(partial(serve, app, config))
            client = httpx.AsyncClient(base_url=binds[0])
            clients.append(client)
            return client

        yield start
        for client in clients:
            await client.aclose()
        nursery.cancel_scope.cancel()


def interception(
    user: uuid.UUID, started: datetime, n: int, model: str = "gpt-4.1"
) -> list[Record]:
    meta = InterceptionMeta(
        provider_name="openai" if model.startswith("gpt") else "anthropic",
        provider_type="openai" if model.startswith("gpt") else "anthropic",
        model=model,
        route="/v1/chat/completions",
        initiator_id=user,
        started_at=started,
    )
    facts = Facts(
        response_id=f"resp-{n}",
        usage=Usage(
            input_tokens=n,
            output_tokens=2 * n,
            cache_read_tokens=3,
            cache_write_tokens=4,
            extra={"reasoning": n},
            raw={"prompt_tokens": n + 3},
        ),
        tool_calls=[ToolCall(id=f"call-{n}", name="grep", arguments='{"q":"x"}')],
        thoughts=[f"thinking {n}"],
    )
    return records_for(meta, facts, f"prompt {n}", "completed", ended_at=started)


async def seed(db: Database) -> tuple[uuid.UUID, uuid.UUID, list[Record]]:
    alice = await db.fetchval("INSERT INTO users (name) VALUES ('alice') RETURNING id")
    bob = await db.fetchval("INSERT INTO users (name) VALUES ('bob') RETURNING id")
    records: list[Record] = []
    for n in range(7):
        # Two interceptions share a start time: the id breaks the tie.
        started = T0 + timedelta(minutes=min(n, 5))
        model = "claude-sonnet-4-5" if n == 6 else "gpt-4.1"
        records += interception(alice if n % 2 == 0 else bob, started, n, model)
    await write_batch(db, records)
    return alice, bob, records


def auth(token: str = ADMIN_TOKEN) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


async def test_requires_the_admin_token(serve_admin: Any, db: Database) -> None:
    client = await serve_admin(ADMIN_TOKEN)
    for headers in ({}, auth("wrong"), {"authorization": ADMIN_TOKEN}):
        response = await client.get(BASE, headers=headers)
        assert response.status_code == 401
        assert response.json()["error"] == "unauthorized"
    assert (await client.get(BASE, headers=auth())).status_code == 200
    # No token configured: closed to everyone, whatever they send.
    closed = await serve_admin("")
    for headers in ({}, auth(), {"authorization": "Bearer"}):
        assert (await closed.get(BASE, headers=headers)).status_code == 401


async def test_pages_filters_and_contents(serve_admin: Any, db: Database) -> None:
    alice, _bob, records = await seed(db)
    client = await serve_admin(ADMIN_TOKEN)

    seen: list[dict[str, Any]] = []
    cursor = None
    pages = 0
    while True:
        params = {"limit": "3", **({"cursor": cursor} if cursor else {})}
        response = await client.get(BASE, params=params, headers=auth())
        assert response.status_code == 200
        body = response.json()
        seen += body["interceptions"]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    keys = [(i["started_at"], i["id"]) for i in seen]
    assert keys == sorted(keys, reverse=True)  # newest first, id breaking ties
    assert len(seen) == 7
    assert {i["id"] for i in seen} == {
        str(r.id) for r in records if r.__struct_config__.tag == "interception"
    }

    first = next(
        i for i in seen if i["client_session_id"] is None and i["model"] == "claude-sonnet-4-5"
    )
    assert first["initiator_name"] == "alice"
    assert first["prompt"] == "prompt 6"
    (usage,) = first["token_usages"]
    assert (usage["input_tokens"], usage["output_tokens"]) == (6, 12)
    assert (usage["cache_read_tokens"], usage["cache_write_tokens"]) == (3, 4)
    assert usage["extra"] == {"reasoning": 6} and usage["raw"] == {"prompt_tokens": 9}
    assert [(t["tool_call_id"], t["name"], t["input"]) for t in first["tool_usages"]] == [
        ("call-6", "grep", '{"q":"x"}')
    ]
    assert first["thoughts"] == ["thinking 6"]

    async def ids(**params: str) -> list[str]:
        response = await client.get(BASE, params=params, headers=auth())
        assert response.status_code == 200, response.text
        return [i["id"] for i in response.json()["interceptions"]]

    assert len(await ids(user="alice")) == 4
    assert len(await ids(user=str(alice))) == 4
    assert len(await ids(user="bob")) == 3
    assert len(await ids(provider="anthropic")) == 1
    assert len(await ids(model="gpt-4.1")) == 6
    window = await ids(since=(T0 + timedelta(minutes=1)).isoformat(), until="2025-04-01T08:03:00Z")
    assert len(window) == 2  # minutes 1 and 2; until is excluded
    legacy = await client.get(
        "/api/v2/aibridge/admin/interceptions", params={"limit": "1"}, headers=auth()
    )
    assert legacy.status_code == 200 and len(legacy.json()["interceptions"]) == 1


async def test_bad_requests(serve_admin: Any, db: Database) -> None:
    client = await serve_admin(ADMIN_TOKEN)
    for params in (
        {"limit": "0"},
        {"limit": "x"},
        {"cursor": "bm90IGEgY3Vyc29y"},
        {"since": "yesterday"},
    ):
        response = await client.get(BASE, params=params, headers=auth())
        assert response.status_code == 400, params
        assert response.json()["error"] == "bad_request"
    response = await client.get("/api/v2/ai-gateway/admin/nothing", headers=auth())
    assert response.status_code == 404
    response = await client.post(BASE, headers=auth())
    assert response.status_code == 405


async def test_values_the_database_cannot_take_are_bad_requests(
    serve_admin: Any, db: Database
) -> None:
    """Each of these used to reach PostgreSQL and come back as a 500 with no body."""
    from relay.admin.api import encode_cursor

    client = await serve_admin(ADMIN_TOKEN)
    # Valid for Python, but before year 1 (or after 9999) once moved to UTC.
    early = datetime.fromisoformat("0001-01-01T00:00:00+14:00")
    late = datetime.fromisoformat("9999-12-31T23:59:59-14:00")
    for params in (
        {"until": "0001-01-01T00:00:00+14:00"},
        {"since": "9999-12-31T23:59:59-14:00"},
        {"cursor": encode_cursor(early, uuid.uuid4())},
        {"cursor": encode_cursor(late, uuid.uuid4())},
        {"user": "ali\x00ce"},
        {"provider": "\x00"},
        {"model": "gpt\x00"},
    ):
        response = await client.get(BASE, params=params, headers=auth())
        assert response.status_code == 400, params
        assert response.json()["error"] == "bad_request", params
    # The extremes that do fit still work.
    response = await client.get(
        BASE,
        params={"since": "0001-01-01T00:00:00Z", "until": "9999-12-31T23:59:59Z"},
        headers=auth(),
    )
    assert response.status_code == 200


async def test_usage_report_with_cost(serve_admin: Any, db: Database) -> None:
    from relay.pricing.book import PriceBook
    from relay.pricing.store import default_prices

    alice = await db.fetchval("INSERT INTO users (name) VALUES ('alice') RETURNING id")
    book = PriceBook(default_prices())
    records: list[Record] = []
    for n, model in ((1000, "gpt-4.1-2025-04-14"), (2000, "gpt-4.1"), (10, "mystery")):
        meta = InterceptionMeta(
            provider_name="openai",
            provider_type="openai",
            model=model,
            route="/v1/responses",
            initiator_id=alice,
            started_at=T0,
        )
        facts = Facts(usage=Usage(input_tokens=n, output_tokens=n))
        records += records_for(meta, facts, None, "completed", ended_at=T0, prices=book)
    await write_batch(db, records)
    client = await serve_admin(ADMIN_TOKEN)
    usage = "/api/v2/ai-gateway/admin/usage"
    report = (await client.get(usage + "?group_by=user,model", headers=auth())).json()
    assert report["group_by"] == ["user", "model"]
    # gpt-4.1: $2 in, $8 out per million: 10 µ$ per token pair.
    assert [(r["user"], r["model"], r["cost_micros"], r["unpriced"]) for r in report["rows"]] == [
        ("alice", "gpt-4.1", 20_000, 0),
        ("alice", "gpt-4.1-2025-04-14", 10_000, 0),
        ("alice", "mystery", 0, 1),
    ]
    assert (report["totals"]["requests"], report["totals"]["cost_micros"]) == (3, 30_000)
    assert report["totals"]["unpriced"] == 1
    later = T0 + timedelta(hours=1)
    empty = (await client.get(usage, params={"since": later.isoformat()}, headers=auth())).json()
    assert empty["rows"] == [] and empty["totals"]["requests"] == 0
    bad = await client.get(usage + "?group_by=colour", headers=auth())
    assert bad.status_code == 400 and "colour" in bad.json()["message"]
    page = (await client.get(BASE, headers=auth())).json()
    costs = sorted(
        (u["price_model"] or "", -1 if u["cost_micros"] is None else u["cost_micros"])
        for i in page["interceptions"]
        for u in i["token_usages"]
    )
    assert costs == [("", -1), ("gpt-4.1", 10_000), ("gpt-4.1", 20_000)]
