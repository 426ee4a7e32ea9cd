"""The console's changes (providers, users, groups, tokens, budgets) and the audit log,
through the real relay (hypercorn on loopback, the real PostgreSQL) with httpx."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

import anthropic
import httpx
import pytest

from tests.relay_harness import RunningRelay, config_settled, mock_and_relay

ADMIN = "admin-console-test-token-0123456789"
P = "/api/v2/ai-gateway/admin/ui/"
KEY1 = "sk-ant-console-test-key-one-0001"
KEY2 = "sk-ant-console-test-key-two-0002"
USER = [{"role": "user", "content": "hello"}]

pytestmark = pytest.mark.usefixtures("pg_dsn")


@pytest.fixture
async def admin_api(
    pg_dsn: str, tmp_path: Path
) -> AsyncIterator[tuple[RunningRelay, httpx.AsyncClient]]:
    env = {"CODER_AI_GATEWAY_ADMIN_TOKEN": ADMIN}
    async with mock_and_relay(pg_dsn, tmp_path, extra_env=env) as (_mock, relay):
        async with httpx.AsyncClient(
            base_url=relay.url + P, headers={"authorization": f"Bearer {ADMIN}"}
        ) as http:
            yield relay, http


class Seen:
    """Every response body a test received, to check no secret was ever sent."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http
        self.bodies: list[str] = []

    async def get(self, path: str) -> httpx.Response:
        response = await self.http.get(path)
        self.bodies.append(response.text)
        return response

    async def post(self, path: str, body: object = None) -> httpx.Response:
        response = await self.http.post(path, json=body if body is not None else {})
        self.bodies.append(response.text)
        return response

    def never(self, *secrets: str) -> None:
        for text in self.bodies:
            for secret in secrets:
                assert secret not in text


async def audit(http: httpx.AsyncClient) -> list[dict]:
    response = await http.get("api/audit")
    assert response.status_code == 200
    return response.json()["entries"]


def anthropic_client(relay: RunningRelay, token: str | None = None) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(
        api_key=token or relay.token, base_url=relay.gateway("anthropic"), max_retries=0
    )


async def test_provider_changes_are_made_audited_and_keys_never_sent_back(admin_api) -> None:
    relay, http = admin_api
    api = Seen(http)
    added = await api.post(
        "api/providers",
        {"name": "extra", "type": "anthropic", "base_url": "https://example.test/", "keys": [KEY1]},
    )
    assert added.status_code == 201, added.text
    assert added.json()["provider"]["keys"] == ["sk-…0001"]
    listing = (await api.get("api/providers")).json()["providers"]
    extra = next(p for p in listing if p["name"] == "extra")
    assert extra["enabled"] and extra["source"] == "api" and extra["keys"] == ["sk-…0001"]

    # An update that leaves the keys out keeps them.
    moved = await api.post("api/providers/extra", {"base_url": "https://other.example.test/v1"})
    assert moved.status_code == 200, moved.text
    row = await relay.db.fetchrow("SELECT base_url, keys FROM providers WHERE name = 'extra'")
    assert row["base_url"] == "https://other.example.test/v1" and list(row["keys"]) == [KEY1]
    assert (await api.post("api/providers/extra", {"keys": [KEY2]})).status_code == 200
    assert list(await relay.db.fetchval("SELECT keys FROM providers WHERE name = 'extra'")) == [
        KEY2
    ]

    # Bad input: 400 with what is wrong, and never the key itself.
    for body, expected in [
        ({"keys": ["sk-…0002"]}, "mask"),
        ({"base_url": "ftp://example.test"}, "http"),
        ({"base_url": f"https://user:{KEY1}@example.test/"}, "credentials"),
        ({"keys": [KEY1, KEY1]}, "duplicate"),
        ({"keys": ["k1", "k2", "k3", "k4", "k5", "k6"]}, "length"),
        ({"name": "renamed"}, "unknown field"),
        ({"responses_websocket": "yes"}, "bool"),
        ({}, "nothing to update"),
    ]:
        refused = await api.post("api/providers/extra", body)
        assert refused.status_code == 400, (body, refused.text)
        assert expected in refused.json()["message"].lower(), refused.text
    for body, expected in [
        ({"name": "Bad Name", "type": "openai"}, "must match"),
        ({"name": "admin", "type": "openai"}, "reserved"),
        ({"name": "x", "type": "gopher"}, "type"),
        ({"name": "x" * 64, "type": "openai"}, "length"),
    ]:
        refused = await api.post("api/providers", body)
        assert refused.status_code == 400, (body, refused.text)
        assert expected in refused.json()["message"].lower(), refused.text
    taken = await api.post("api/providers", {"name": "extra", "type": "openai"})
    assert taken.status_code == 409 and "already exists" in taken.json()["message"]
    not_json = await http.post(
        "api/providers", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert not_json.status_code == 400
    assert (await api.post("api/providers/nobody/disable")).status_code == 404
    assert (
        await api.post("api/providers/nobody", {"base_url": "https://x.test"})
    ).status_code == 404

    removed = await api.post("api/providers/extra/remove")
    assert removed.status_code == 200
    assert await relay.db.fetchval("SELECT count(*) FROM providers WHERE name = 'extra'") == 0
    assert (await api.post("api/providers/extra/remove")).status_code == 404

    entries = await audit(http)
    mine = [e for e in entries if e["target"] == "extra"]
    assert [e["action"] for e in reversed(mine)] == [
        "provider.add",
        "provider.update",
        "provider.update",
        "provider.remove",
    ]
    assert all(e["actor_name"] == "admin-token" and e["via"] == "api" for e in mine)
    assert mine[-1]["detail"]["keys"] == ["sk-…0001"]
    assert mine[-2]["detail"] == {"base_url": "https://other.example.test/v1"}
    assert mine[-3]["detail"]["keys"] == ["sk-…0002"]
    api.bodies.append(json.dumps(entries))
    api.never(KEY1, KEY2)


async def test_disabling_a_provider_refuses_its_requests_and_enabling_serves_them(
    admin_api,
) -> None:
    relay, http = admin_api
    client = anthropic_client(relay)
    await client.messages.create(model="mock-text", max_tokens=10, messages=USER)
    disabled = await http.post("api/providers/anthropic/disable", json={})
    assert disabled.status_code == 200 and disabled.json()["provider"]["enabled"] is False
    await config_settled(relay.app)
    with pytest.raises(anthropic.APIStatusError) as refused:
        await client.messages.create(model="mock-text", max_tokens=10, messages=USER)
    assert refused.value.status_code == 503
    assert "disabled" in refused.value.message
    # Disabling again changes nothing and is not audited twice.
    assert (await http.post("api/providers/anthropic/disable", json={})).status_code == 200
    assert (await http.post("api/providers/anthropic/enable", json={})).status_code == 200
    await config_settled(relay.app)
    await client.messages.create(model="mock-text", max_tokens=10, messages=USER)
    actions = [e["action"] for e in await audit(http) if e["target"] == "anthropic"]
    assert actions == ["provider.enable", "provider.disable"]


async def test_a_token_is_shown_once_and_a_revoked_one_is_refused(admin_api) -> None:
    relay, http = admin_api
    api = Seen(http)
    assert (await api.post("api/users", {"name": "bob"})).status_code == 201
    made = await api.post("api/tokens", {"user": "bob", "expires": "30d"})
    assert made.status_code == 201, made.text
    token, token_id = made.json()["token"], made.json()["id"]
    assert token.startswith(f"relay_{token_id}_") and made.json()["expires_at"]
    await anthropic_client(relay, token).messages.create(
        model="mock-text", max_tokens=10, messages=USER
    )
    listed = (await api.get("api/tokens")).json()["tokens"]
    mine = next(t for t in listed if t["id"] == token_id)
    assert mine["user"] == "bob" and mine["status"] == "active"
    users = (await api.get("api/users")).json()["users"]
    assert next(u for u in users if u["name"] == "bob")["active_tokens"] == 1

    for body in (
        {"user": "nobody"},
        {"user": "bob", "expires": "soon"},
        {"user": "bob", "expires": "-1s"},
    ):
        refused = await api.post("api/tokens", body)
        assert refused.status_code in (400, 404), (body, refused.text)
    assert (await api.post("api/tokens/not-an-id/revoke")).status_code == 400
    assert (await api.post("api/tokens/0123456789ab/revoke")).status_code == 404

    revoked = await api.post(f"api/tokens/{token_id}/revoke")
    assert revoked.status_code == 200 and revoked.json()["token"]["status"] == "revoked"
    await config_settled(relay.app)
    with pytest.raises(anthropic.AuthenticationError):
        await anthropic_client(relay, token).messages.create(
            model="mock-text", max_tokens=10, messages=USER
        )
    entries = [e for e in await audit(http) if e["target"] in (token_id, "bob")]
    assert [e["action"] for e in reversed(entries)] == [
        "user.create",
        "token.create",
        "token.revoke",
    ]
    # Only the create answer carries the token; nothing else ever does, the audit log neither.
    api.bodies.remove(made.text)
    api.bodies.append(json.dumps(entries))
    api.never(token.rsplit("_", 1)[1])


async def test_users_groups_and_budgets(admin_api) -> None:
    relay, http = admin_api
    for name in ("carol", "dave"):
        assert (await http.post("api/users", json={"name": name})).status_code == 201
    assert (await http.post("api/users", json={"name": "carol"})).status_code == 409
    bad_user = await http.post("api/users", json={"name": "no spaces please"})
    assert bad_user.status_code == 400 and "user name" in bad_user.json()["message"]
    assert (await http.post("api/users", json={"name": 7})).status_code == 400

    assert (await http.post("api/groups", json={"name": "team-a"})).status_code == 201
    assert (await http.post("api/groups", json={"name": "team-a"})).status_code == 409
    assert (await http.post("api/groups", json={"name": "bad group"})).status_code == 400
    added = await http.post("api/groups/team-a/members", json={"user": "carol"})
    assert added.status_code == 200 and added.json()["changed"] is True
    again = await http.post("api/groups/team-a/members", json={"user": "carol"})
    assert again.json()["changed"] is False
    assert (
        await http.post("api/groups/team-a/members", json={"user": "nobody"})
    ).status_code == 404
    assert (
        await http.post("api/groups/nogroup/members", json={"user": "carol"})
    ).status_code == 404
    await http.post("api/groups/team-a/members", json={"user": "dave"})
    removed = await http.post("api/groups/team-a/members/remove", json={"user": "dave"})
    assert removed.json()["changed"] is True
    groups = (await http.get("api/groups")).json()["groups"]
    assert {"name": "team-a", "members": ["carol"]} in groups

    budget = {"name": "team-a-monthly", "group": "team-a", "limit": "12.50", "period": "month"}
    made = await http.post("api/budgets", json=budget)
    assert made.status_code == 200, made.text
    row = await relay.db.fetchrow(
        "SELECT limit_micros, period FROM budgets WHERE name = 'team-a-monthly'"
    )
    assert (row["limit_micros"], row["period"]) == (12_500_000, "month")
    for body, status in [
        ({**budget, "limit": "lots"}, 400),
        ({**budget, "limit": "0"}, 400),
        ({**budget, "period": "year"}, 400),
        ({**budget, "user": "carol"}, 400),  # a user and a group
        ({**budget, "soft_percent": 101}, 400),
        ({**budget, "group": "nogroup"}, 404),
        ({**budget, "group": None, "token": "xyz"}, 400),
        ({**budget, "name": "bad name"}, 400),
    ]:
        refused = await http.post("api/budgets", json=body)
        assert refused.status_code == status, (body, refused.text)
    assert (await http.post("api/budgets/team-a-monthly/remove", json={})).status_code == 200
    assert (await http.post("api/budgets/team-a-monthly/remove", json={})).status_code == 404
    assert (await http.post("api/groups/team-a/remove", json={})).status_code == 200
    assert (await http.post("api/groups/team-a/remove", json={})).status_code == 404

    actions = [(e["action"], e["target"]) for e in reversed(await audit(http))]
    assert actions == [
        ("user.create", "carol"),
        ("user.create", "dave"),
        ("group.create", "team-a"),
        ("group.add", "team-a"),
        ("group.add", "team-a"),
        ("group.remove", "team-a"),
        ("budget.set", "team-a-monthly"),
        ("budget.remove", "team-a-monthly"),
        ("group.delete", "team-a"),
    ]


async def test_the_admin_role_opens_the_console_to_a_users_tokens(admin_api) -> None:
    relay, http = admin_api
    made = await http.post("api/users", json={"name": "gina", "admin": True})
    assert made.status_code == 201 and made.json()["user"]["is_admin"] is True
    token = (await http.post("api/tokens", json={"user": "gina"})).json()["token"]
    async with httpx.AsyncClient(
        base_url=relay.url + P, headers={"authorization": f"Bearer {token}"}
    ) as gina:
        assert (await gina.get("api/providers")).status_code == 200
        # One's own role is not taken away from the console (it would end the session at once).
        own = await gina.post("api/users/gina/admin", json={"admin": False})
        assert own.status_code == 400
        assert (await http.post("api/users/gina/admin", json={"admin": False})).status_code == 200
        assert (await gina.get("api/providers")).status_code == 403
    assert (await http.post("api/users/nobody/admin", json={"admin": True})).status_code == 404
    assert (await http.post("api/users/gina/admin", json={"admin": "yes"})).status_code == 400
    again = await http.post("api/users/gina/admin", json={"admin": False})
    assert again.json()["changed"] is False
    actions = [e["action"] for e in await audit(http) if e["target"] == "gina"]
    assert actions == ["user.admin", "user.create"]


async def test_audit_pages_and_bounds(admin_api) -> None:
    _relay, http = admin_api
    for n in range(5):
        await http.post("api/groups", json={"name": f"g{n}"})
    first = (await http.get("api/audit?limit=2")).json()
    assert [e["target"] for e in first["entries"]] == ["g4", "g3"]
    second = (await http.get(f"api/audit?limit=2&before={first['next_before']}")).json()
    assert [e["target"] for e in second["entries"]] == ["g2", "g1"]
    for query in ("limit=0", "limit=100000", "limit=x", "before=-1"):
        assert (await http.get(f"api/audit?{query}")).status_code == 400, query


async def sign_in(http: httpx.AsyncClient) -> str:
    """Sign a browser-like client in (a cookie session); its CSRF token."""
    answer = await http.post("signin", data={"token": ADMIN})
    assert answer.status_code == 303, answer.text
    page = await http.get("providers")
    match = re.search(r'<meta name="csrf-token" content="([^"]+)">', page.text)
    assert match is not None
    return match.group(1)


async def test_every_change_family_needs_the_csrf_token_from_a_cookie_session(admin_api) -> None:
    relay, admin = admin_api
    await admin.post("api/users", json={"name": "erin"})
    async with httpx.AsyncClient(base_url=relay.url + P, headers={"origin": relay.url}) as http:
        csrf = await sign_in(http)
        changes = [
            ("api/providers/anthropic/disable", {}),
            ("api/users", {"name": "frank"}),
            ("api/groups", {"name": "g-csrf"}),
            ("api/tokens", {"user": "erin"}),
            ("api/budgets", {"name": "b-csrf", "user": "erin", "limit": "1"}),
        ]
        for path, body in changes:
            refused = await http.post(path, json=body)
            assert refused.status_code == 403 and refused.json()["error"] == "csrf", path
            wrong = await http.post(path, json=body, headers={"x-csrf-token": "x" + csrf})
            assert wrong.status_code == 403, path
        assert await relay.db.fetchval("SELECT enabled FROM providers WHERE name = 'anthropic'")
        assert await relay.db.fetchval("SELECT count(*) FROM users WHERE name = 'frank'") == 0
        for path, body in changes:
            ok = await http.post(path, json=body, headers={"x-csrf-token": csrf})
            assert ok.status_code in (200, 201), (path, ok.text)
        entries = await audit(admin)
        assert {e["via"] for e in entries[:5]} == {"console"}


async def test_a_non_admin_token_changes_nothing(admin_api) -> None:
    relay, _admin = admin_api
    async with httpx.AsyncClient(
        base_url=relay.url + P, headers={"authorization": f"Bearer {relay.token}"}
    ) as http:
        refused = await http.post("api/providers/anthropic/disable", json={})
        assert refused.status_code == 403
        assert (await http.get("api/tail")).status_code == 403
    assert await relay.db.fetchval("SELECT enabled FROM providers WHERE name = 'anthropic'")


async def test_prices_are_set_listed_and_removed(admin_api) -> None:
    relay, http = admin_api
    price = {"provider_type": "openai", "model": "Console-Model-*", "input": "1.25", "output": "10"}
    made = await http.post("api/prices", json={**price, "effective_from": "2026-01-01"})
    assert made.status_code == 200, made.text
    row = await relay.db.fetchrow(
        "SELECT input_micros, output_micros, source FROM model_prices WHERE model = 'console-model-*'"
    )
    assert tuple(row) == (1_250_000, 10_000_000, "admin")
    listed = (await http.get("api/prices")).json()["prices"]
    mine = [p for p in listed if p["model"] == "console-model-*"]
    assert [p["input_micros"] for p in mine] == [1_250_000]
    for body in (
        {**price, "provider_type": "gopher"},
        {**price, "input": "cheap"},
        {**price, "output": "-1"},
        {**price, "model": "two words"},
        {**price, "model": "a*b"},
        {**price, "effective_from": "tomorrow"},
        {**price, "extra": 1},
    ):
        refused = await http.post("api/prices", json=body)
        assert refused.status_code == 400, (body, refused.text)
    key = {"provider_type": "openai", "model": "console-model-*"}
    assert (await http.post("api/prices/remove", json=key)).json() == {"removed": 1}
    assert (await http.post("api/prices/remove", json=key)).status_code == 404
    entries = [e for e in await audit(http) if e["target"] == "openai/console-model-*"]
    assert [e["action"] for e in entries] == ["price.remove", "price.set"]
    assert entries[1]["detail"] == {
        "from": "2026-01-01",
        "input": "1.250000",
        "output": "10.000000",
    }
