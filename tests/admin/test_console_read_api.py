"""The console's read API (relay/console/read.py) through the real relay:
hypercorn on loopback, the test's PostgreSQL, requests made through the relay
by a Claude Code-like client and then read back as an operator would."""

from __future__ import annotations

import csv
import hashlib
import io
import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from relay.auth import create_token, create_user
from relay.budgets.store import set_budget
from tests.relay_harness import RunningRelay, claude_code_turn, config_settled, mock_and_relay

ADMIN_TOKEN = "read-api-admin-token-0123456789abcdef"
API = "/api/v2/ai-gateway/admin/ui/api/"
SESSION = "5f0c7a8e-1111-4222-8333-444455556666"


@pytest.fixture
async def relay(pg_dsn: str, tmp_path: Path) -> AsyncIterator[RunningRelay]:
    env = {"CODER_AI_GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN}
    async with mock_and_relay(pg_dsn, tmp_path, extra_env=env) as (_mock, running):
        yield running


def admin() -> dict[str, str]:
    return {"authorization": f"Bearer {ADMIN_TOKEN}"}


async def claude_code_turns(relay: RunningRelay, n: int) -> None:
    """``n`` requests as Claude Code sends them: its user agent and session header."""
    async with httpx.AsyncClient(timeout=30) as client:
        for turn in range(n):
            response = await client.post(
                **claude_code_turn(
                    relay.gateway("anthropic"), relay.token, SESSION, f"weather in Paris? ({turn})"
                )
            )
            assert response.status_code == 200
    await relay.wait_for_rows(
        "SELECT 1 FROM interceptions WHERE client_session_id = $1", SESSION, count=n
    )
    await relay.wait_for_rows(
        "SELECT 1 FROM token_usages t JOIN interceptions i ON i.id = t.interception_id"
        " WHERE i.client_session_id = $1",
        SESSION,
        count=n,
    )


async def test_a_claude_code_session_read_back_through_the_api(relay: RunningRelay) -> None:
    await claude_code_turns(relay, 2)
    async with httpx.AsyncClient(base_url=relay.url, headers=admin(), timeout=30) as client:
        page = (await client.get(API + "sessions")).json()
        (session,) = [s for s in page["sessions"] if s["client_session_id"] == SESSION]
        assert session["kind"] == "client" and session["user"] == "alice"
        assert session["clients"] == ["claude-code"] and session["requests"] == 2
        assert session["output_tokens"] > 0 and session["tool_calls"] == 2

        detail = (await client.get(API + "sessions/" + session["key"])).json()
        assert detail["summary"] == session
        first, second = detail["interceptions"]
        assert first["started_at"] <= second["started_at"]
        assert first["prompt"] == "weather in Paris? (0)"
        (tool,) = first["tool_usages"]
        assert tool["name"] == "get_weather" and "Paris" in tool["input"]
        assert first["token_usages"][0]["output_tokens"] > 0

        one = (await client.get(API + "interceptions/" + first["id"])).json()
        assert one["interception"] == first and one["session_key"] == session["key"]

        filtered = (await client.get(API + "sessions", params={"client": "codex"})).json()
        assert filtered["sessions"] == []
        by_status = await client.get(API + "sessions", params={"status": "completed"})
        assert [s["key"] for s in by_status.json()["sessions"]] == [session["key"]]

        spend = (await client.get(API + "spend", params={"group_by": "day,model"})).json()
        assert spend["group_by"] == ["day", "model"]
        assert [(r["model"], r["requests"]) for r in spend["rows"]] == [("mock-tool", 2)]
        assert spend["totals"]["output_tokens"] == session["output_tokens"]
        none = (await client.get(API + "spend", params={"model": "other"})).json()
        assert none["rows"] == [] and none["totals"]["requests"] == 0

        exported = await client.get(API + "spend.csv", params={"group_by": "model"})
        assert exported.headers["content-type"].startswith("text/csv")
        assert "attachment" in exported.headers["content-disposition"]
        lines = list(csv.reader(io.StringIO(exported.text)))
        assert lines[0][0] == "model" and lines[1][:2] == ["mock-tool", "2"]
        assert lines[-1][0] == "total"


async def test_budgets_with_their_spend(relay: RunningRelay) -> None:
    db = relay.db
    await set_budget(db, "alice-daily", user="alice", period="day", limit_micros=1_000_000)
    await set_budget(db, "alice-monthly", user="alice", limit_micros=500_000, soft_percent=50)
    await set_budget(db, "alice-gpt", user="alice", limit_micros=10_000_000, model="gpt-5")
    # The recorder's running totals: $0.85 spent today on one model.
    await db.execute(
        "INSERT INTO spend_daily (day, user_id, api_key_id, model, cost_micros, usages, unpriced)"
        " SELECT (now() AT TIME ZONE 'UTC')::date, id, '', 'claude-sonnet-4-5', 850000, 3, 0"
        " FROM users WHERE name = 'alice'"
    )
    async with httpx.AsyncClient(base_url=relay.url, headers=admin(), timeout=30) as client:
        found = {b["name"]: b for b in (await client.get(API + "budgets")).json()["budgets"]}
    daily, monthly, gpt = found["alice-daily"], found["alice-monthly"], found["alice-gpt"]
    assert daily["scope"] == "user" and daily["subject_name"] == "alice"
    assert (daily["spent_micros"], daily["percent"], daily["state"]) == (850_000, 85.0, "soft")
    assert (monthly["spent_micros"], monthly["percent"], monthly["state"]) == (
        850_000,
        170.0,
        "over",
    )
    assert (gpt["spent_micros"], gpt["state"], gpt["model"]) == (0, "ok", "gpt-5")
    assert daily["period"] == "day" and monthly["period_start"][8:10] == "01"


async def test_bad_values_are_400_and_junk_keys_404(relay: RunningRelay) -> None:
    async with httpx.AsyncClient(base_url=relay.url, headers=admin(), timeout=30) as client:
        for params in (
            {"limit": "0"},
            {"limit": "abc"},
            {"status": "bogus"},
            {"since": "yesterday"},
            {"cursor": "!!!"},
            {"user": "x" * 300},
        ):
            response = await client.get(API + "sessions", params=params)
            assert response.status_code == 400, params
            assert response.json()["error"] == "bad_request"
        for params in (
            {"group_by": "planet"},
            {"since": "2025-02-30"},
            {"since": "2025-02-02", "until": "2025-02-01"},
        ):
            for path in ("spend", "spend.csv"):
                response = await client.get(API + path, params=params)
                assert response.status_code == 400, (path, params)
        for key in ("nope", "k.AAAA", "a.00000000-0000-0000-0000-000000000000", "g." + "A" * 200):
            response = await client.get(API + "sessions/" + key)
            assert response.status_code == 404, key
            assert response.json()["error"] == "not_found"
        response = await client.get(API + "sessions/k.AAAA", params={"limit": "9999"})
        assert response.status_code == 400
        for ident in ("nope", "00000000-0000-0000-0000-000000000000", "1" * 200):
            assert (await client.get(API + "interceptions/" + ident)).status_code == 404


async def test_no_admin_no_data(relay: RunningRelay) -> None:
    db = relay.db
    await create_user(db, "mallory")
    token, _ = await create_token(db, "mallory")
    await config_settled(relay.app)
    paths = ["sessions", "sessions/k.AAAA", "interceptions/x", "spend", "spend.csv", "budgets"]
    async with httpx.AsyncClient(base_url=relay.url, timeout=30) as client:
        for path in paths:
            assert (await client.get(API + path)).status_code == 401, path
            refused = await client.get(API + path, headers={"authorization": f"Bearer {token}"})
            assert refused.status_code == 403, path


def test_the_vendored_plot_library_is_the_one_recorded() -> None:
    vendor = Path(__file__).parents[2] / "relay" / "console" / "static" / "vendor"
    readme = (vendor / "README.md").read_text()
    rows = re.findall(r"^\| `([^`]+)` \|.*\| `([0-9a-f]{64})` \|$", readme, re.MULTILINE)
    assert {name for name, _ in rows} == {"uPlot.iife.min.js", "uPlot.min.css", "uPlot.LICENSE"}
    for name, digest in rows:
        assert hashlib.sha256((vendor / name).read_bytes()).hexdigest() == digest, name
