"""Hostile requests: bad tokens of every kind, header injection, oversize headers.

Every refused token must be refused on every route and in every credential
header, and nothing may reach the provider. Header injection is tried with
raw sockets (httpx refuses to send CR/LF in a header value); the property is
that a client can never make the provider see a header the relay did not
parse as one, nor replace the provider key.
"""

from __future__ import annotations

import httpx
import pytest
import trio

from relay.auth import AuthError, create_token, create_user, revoke_token
from tests.e2e.test_access_e2e import BOTH, CENTRAL_KEY, USER, relay_with
from tests.relay_harness import RunningRelay

pytestmark = pytest.mark.usefixtures("pg_dsn")

MESSAGES_BODY = {"model": "mock-text", "max_tokens": 5, "messages": USER}
ATTACKER_KEY = "sk-attacker-key-000000001"


def placements(token: str) -> list[dict[str, str]]:
    """Every header a relay token may arrive in."""
    return [
        {"authorization": f"Bearer {token}"},
        {"x-api-key": token},
        {"x-coder-ai-governance-token": token, "x-api-key": "sk-ant-own-key-0001"},
        {"x-ai-gov-token": token, "authorization": "Bearer sk-own-key-0001"},
    ]


async def statuses_for(http: httpx.AsyncClient, relay: RunningRelay, token: str) -> list[int]:
    """The status of the token in every header, on intercepted and passthrough routes."""
    out = []
    for headers in placements(token):
        r = await http.post(
            relay.gateway("anthropic") + "/v1/messages", headers=headers, json=MESSAGES_BODY
        )
        out.append(r.status_code)
        r = await http.get(relay.gateway("openai") + "/v1/models", headers=headers)
        out.append(r.status_code)
    return out


async def refused_within(
    http: httpx.AsyncClient, relay: RunningRelay, token: str, timeout: float = 5
) -> None:
    """Wait until ``token`` is refused: revocation and expiry reach the cache by notification."""
    with trio.fail_after(timeout):
        while True:
            r = await http.get(
                relay.gateway("openai") + "/v1/models", headers={"authorization": f"Bearer {token}"}
            )
            if r.status_code == 401:
                return
            await trio.sleep(0.02)


async def test_bad_tokens_are_never_accepted(pg_dsn, tmp_path):
    async with relay_with(pg_dsn, tmp_path, BOTH) as (mock, relay):
        db = relay.db
        await create_user(db, "bob")
        bob, _ = await create_token(db, "bob")
        alice = relay.token
        alice_id, alice_secret = alice[len("relay_") :].split("_", 1)
        bob_id, bob_secret = bob[len("relay_") :].split("_", 1)
        expired, expired_row = await create_token(db, "alice")
        await db.execute(
            "UPDATE api_keys SET expires_at = now() - interval '1 second' WHERE id = $1",
            expired_row.id,
        )
        revoked, revoked_row = await create_token(db, "alice")
        await revoke_token(db, revoked_row.id)
        await create_user(db, "carol")
        carol, _ = await create_token(db, "carol")
        await db.execute("DELETE FROM users WHERE name = 'carol'")
        flipped = alice_secret[:-1] + ("A" if alice_secret[-1] != "A" else "B")
        bad = {
            "forged id and secret": "relay_0123456789ab_" + "A" * 43,
            "forged secret for a real id": f"relay_{alice_id}_" + "B" * 43,
            "one character changed": f"relay_{alice_id}_{flipped}",
            "truncated by one": alice[:-1],
            "truncated to the id": f"relay_{alice_id}_",
            "prefix only": "relay_",
            "extended": alice + "x",
            "another user's id with this secret": f"relay_{bob_id}_{alice_secret}",
            "this id with another user's secret": f"relay_{alice_id}_{bob_secret}",
            "upper-cased": alice.upper(),
            "expired": expired,
            "revoked": revoked,
            "deleted user": carol,
            "a provider key": CENTRAL_KEY,
            "oversize": "relay_" + "a" * 8000,
        }
        async with httpx.AsyncClient() as http:
            for name, token in bad.items():
                assert set(await statuses_for(http, relay, token)) == {401}, name
            # Nothing reached the provider, and the real tokens still work.
            assert mock.requests == []
            assert set(await statuses_for(http, relay, alice)) == {200}
            # A bad token in the first header is not rescued by a good one in the next.
            r = await http.post(
                relay.gateway("anthropic") + "/v1/messages",
                headers={
                    "authorization": f"Bearer {bad['forged id and secret']}",
                    "x-api-key": alice,
                },
                json=MESSAGES_BODY,
            )
            assert r.status_code == 401
            # Bob's token is Bob's: recorded as his, not as the relay's first user.
            r = await http.post(
                relay.gateway("anthropic") + "/v1/messages",
                headers={"x-api-key": bob},
                json=MESSAGES_BODY,
            )
            assert r.status_code == 200
            rows = await relay.wait_for_rows(
                "SELECT u.name FROM interceptions i JOIN users u ON u.id = i.initiator_id "
                "ORDER BY i.started_at",
                count=5,
            )
            assert [r["name"] for r in rows] == ["alice"] * 4 + ["bob"]


async def test_tokens_revoked_or_expired_while_cached_stop_working(pg_dsn, tmp_path):
    async with relay_with(pg_dsn, tmp_path, BOTH) as (mock, relay):
        db = relay.db
        to_revoke, revoke_row = await create_token(db, "alice")
        to_expire, expire_row = await create_token(db, "alice")
        async with httpx.AsyncClient() as http:
            for token in (to_revoke, to_expire):
                assert set(await statuses_for(http, relay, token)) == {200}  # now cached
            await revoke_token(db, revoke_row.id)
            await db.execute("UPDATE api_keys SET expires_at = now() WHERE id = $1", expire_row.id)
            for token in (to_revoke, to_expire):
                await refused_within(http, relay, token)
            served = len(mock.requests)
            for token in (to_revoke, to_expire):
                for _ in range(5):
                    assert set(await statuses_for(http, relay, token)) == {401}
            assert len(mock.requests) == served


async def test_a_token_that_expires_is_refused_from_the_cache(pg_dsn, tmp_path):
    async with relay_with(pg_dsn, tmp_path, BOTH) as (_mock, relay):
        token, _ = await create_token(relay.db, "alice", expires_in=1.0)
        async with httpx.AsyncClient() as http:
            first = await http.get(
                relay.gateway("openai") + "/v1/models", headers={"authorization": f"Bearer {token}"}
            )
            await refused_within(http, relay, token, timeout=5)
        assert first.status_code == 200


def test_user_names_cannot_carry_line_breaks():
    """User names go upstream in the actor header: the name rules keep CR/LF out."""

    async def attempt(db):  # type: ignore[no-untyped-def]
        for name in ("eve\r\nx-api-key: sk-evil", "eve\nx", "eve\rx", "eve x", "eve\x00"):
            with pytest.raises(AuthError):
                await create_user(db, name)

    class NoDatabase:
        async def fetchrow(self, *args: object) -> None:
            raise AssertionError("an invalid name must be refused before any query")

    trio.run(attempt, NoDatabase())


# -- raw requests --------------------------------------------------------------------------------


async def send_raw(relay: RunningRelay, request: bytes) -> int:
    """Send bytes on a fresh connection; the response's status code."""
    host, port = relay.url.removeprefix("http://").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    try:
        await stream.send_all(request)
        response = b""
        with trio.fail_after(5):
            while b"\r\n" not in response:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    break
                response += chunk
    finally:
        await stream.aclose()
    status_line = response.split(b"\r\n", 1)[0]
    return int(status_line.split()[1])


def raw_messages_request(token: str, *extra: bytes, target: bytes | None = None) -> bytes:
    body = b'{"model":"mock-text","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}'
    lines = [
        (target or b"POST /api/v2/ai-gateway/anthropic/v1/messages") + b" HTTP/1.1",
        b"host: relay.test",
        b"x-api-key: " + token.encode(),
        b"anthropic-version: 2023-06-01",
        b"content-type: application/json",
        b"connection: close",
        b"content-length: " + str(len(body)).encode(),
        *extra,
    ]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def credential_values(request) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    return [
        (n.lower(), v)
        for n, v in request.headers
        if n.lower() in ("x-api-key", "authorization", "x-coder-ai-governance-token")
    ]


@pytest.mark.parametrize(
    "line",
    [
        b"anthropic-beta: a\rx-api-key: " + ATTACKER_KEY.encode(),  # bare CR
        b"anthropic-beta: a\x00b",  # NUL
        b"bad header name: v",  # space in a name
        b"x-api-key : " + ATTACKER_KEY.encode(),  # whitespace before the colon
        b": no-name",
    ],
)
async def test_malformed_header_lines_are_refused(pg_dsn, tmp_path, line):
    async with relay_with(pg_dsn, tmp_path, BOTH) as (mock, relay):
        assert await send_raw(relay, raw_messages_request(relay.token, line)) == 400
        assert mock.requests == []
        # The relay keeps serving.
        assert await send_raw(relay, raw_messages_request(relay.token)) == 200


async def test_crlf_in_the_request_target_is_refused(pg_dsn, tmp_path):
    async with relay_with(pg_dsn, tmp_path, BOTH) as (mock, relay):
        target = b"POST /api/v2/ai-gateway/anthropic/v1/messages?beta=true\r\nx-injected: 1"
        assert await send_raw(relay, raw_messages_request(relay.token, target=target)) == 400
        assert mock.requests == []


async def test_header_smuggling_cannot_replace_the_provider_key(pg_dsn, tmp_path):
    """Lines a lenient parser splits (bare LF) or joins (obs-fold) never put a client
    credential upstream: the provider sees exactly one credential, the relay's."""
    smuggled = ATTACKER_KEY.encode()
    attempts = [
        # Bare LF ends a line for HTTP/1.1 parsers: these are two headers, the second
        # one a client credential, which the relay removes.
        [b"anthropic-beta: a\nx-api-key: " + smuggled],
        [b"anthropic-beta: a\nauthorization: Bearer " + smuggled],
        # obs-fold: a continuation line is joined into the previous value.
        [b"anthropic-beta: a\r\n x-api-key: " + smuggled],
        # Repeated credentials: the first one names the person, none goes upstream.
        [b"x-api-key: " + smuggled, b"authorization: Bearer " + smuggled],
    ]
    async with relay_with(pg_dsn, tmp_path, BOTH) as (mock, relay):
        for lines in attempts:
            before = len(mock.requests)
            status = await send_raw(relay, raw_messages_request(relay.token, *lines))
            assert status in (200, 401), lines
            for request in mock.requests[before:]:
                assert credential_values(request) == [("x-api-key", CENTRAL_KEY)], lines
                for name, value in request.headers:
                    assert not set(name + value) & {"\r", "\n", "\x00"}
                    assert smuggled.decode() not in name
                    assert value != smuggled.decode()
        # The obs-fold attempt arrives as one folded value, nothing more.
        folded = [v for r in mock.requests for n, v in r.headers if n.lower() == "anthropic-beta"]
        assert f"a x-api-key: {ATTACKER_KEY}" in folded
        assert len(mock.requests) >= 2  # the attempts did reach the relay's forwarding


async def test_oversize_headers_are_refused(pg_dsn, tmp_path):
    async with relay_with(pg_dsn, tmp_path, BOTH) as (mock, relay):
        huge = b"anthropic-beta: " + b"a" * 100_000
        assert await send_raw(relay, raw_messages_request(relay.token, huge)) == 431
        many = [b"x-filler-%04d: %s" % (i, b"v" * 40) for i in range(1000)]
        assert await send_raw(relay, raw_messages_request(relay.token, *many)) == 431
        assert mock.requests == []
        # A large header within the limit goes through intact.
        beta = "b" * 8000
        async with httpx.AsyncClient() as http:
            r = await http.post(
                relay.gateway("anthropic") + "/v1/messages",
                headers={"x-api-key": relay.token, "anthropic-beta": beta},
                json=MESSAGES_BODY,
            )
        assert r.status_code == 200
        assert mock.requests[0].header("anthropic-beta") == beta


async def test_oversize_body_on_a_buffered_passthrough(pg_dsn, tmp_path):
    """With a key pool, passthrough bodies are buffered for replay: the size cap holds."""
    providers = {"anthropic": ("anthropic", (CENTRAL_KEY, "sk-second-key-0000000001"))}
    env = {"CODER_AI_GATEWAY_MAX_REQUEST_BODY": "1KiB"}
    async with relay_with(pg_dsn, tmp_path, providers, env) as (mock, relay):
        async with httpx.AsyncClient() as http:
            big = {"model": "mock-text", "messages": [{"role": "user", "content": "x" * 4096}]}
            r = await http.post(
                relay.gateway("anthropic") + "/v1/messages/count_tokens",
                headers={"x-api-key": relay.token},
                json=big,
            )
            assert r.status_code == 413
            assert r.json()["error"]["type"] == "request_too_large"
            small = {"model": "mock-text", "messages": USER}
            r = await http.post(
                relay.gateway("anthropic") + "/v1/messages/count_tokens",
                headers={"x-api-key": relay.token},
                json=small,
            )
            assert r.status_code == 200
        assert len(mock.requests) == 1
