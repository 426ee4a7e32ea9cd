"""Who may use the console and the admin API: admin credentials and console sessions.

An admin credential is a relay token (``relay_<id>_<secret>``, checked by
``relay.auth.check_token``) of a user with ``users.is_admin``, or the legacy
``ADMIN_TOKEN`` (compared in constant time; the actor ``admin-token``).

Signing in with one opens a console session: a row of ``console_sessions``
keyed by the SHA-256 of a random secret that only the browser's cookie holds.
Every request looks the row up joined with the user and the token it was
opened with, so revoking the token, its expiry, or taking the admin role
away ends the session on the next request, on every relay of the fleet. A
session opened with ``ADMIN_TOKEN`` keeps that token's SHA-256 and ends when
this relay's ``ADMIN_TOKEN`` is no longer the same.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from datetime import datetime, timedelta
from typing import Literal

import msgspec

from relay.auth import check_token, parse_token
from relay.console.http import Actor
from relay.db.bridge import Database

#: The cookie that carries a console session's secret.
COOKIE_NAME = "relay_console"
#: Both gateway prefixes (``/api/v2/ai-gateway``, ``/api/v2/aibridge``) lie under it.
COOKIE_PATH = "/api/v2/"
#: How long a console session lasts from sign-in (it is not extended by use).
SESSION_LIFETIME = timedelta(hours=8)
#: The actor name of a sign-in with ADMIN_TOKEN.
ADMIN_TOKEN_ACTOR = "admin-token"

#: ``forbidden``: a valid relay token of a user who is not an admin;
#: ``unknown``: no such credential (or revoked, expired, malformed).
Refused = Literal["forbidden", "unknown"]


class AdminIdentity(msgspec.Struct, frozen=True):
    """Whose admin credential was checked."""

    user_id: uuid.UUID | None  # None: ADMIN_TOKEN
    name: str
    api_key_id: str | None  # the relay token's id; None for ADMIN_TOKEN

    def actor(self, via: str) -> Actor:
        return Actor(self.user_id, self.name, via)


class ConsoleSession(msgspec.Struct, frozen=True):
    """A live console session, as its lookup found it."""

    actor: Actor
    csrf: str
    expires_at: datetime


def _sha256(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


async def check_admin_credential(
    db: Database, admin_token: str, credential: str
) -> AdminIdentity | Refused:
    """Whether ``credential`` is an admin's: a relay token of an admin, or ADMIN_TOKEN."""
    if admin_token and hmac.compare_digest(credential.encode(), admin_token.encode()):
        return AdminIdentity(None, ADMIN_TOKEN_ACTOR, None)
    if parse_token(credential) is None:
        return "unknown"
    found = await check_token(db, credential)
    if isinstance(found, str):
        return "unknown"  # revoked or expired: no longer a credential at all
    principal = found[0]
    is_admin = await db.fetchval(
        "SELECT is_admin FROM users WHERE id = $1::uuid", principal.user_id
    )
    if not is_admin:
        return "forbidden"
    return AdminIdentity(uuid.UUID(principal.user_id), principal.user_name, principal.api_key_id)


async def create_session(
    db: Database, who: AdminIdentity, admin_token: str
) -> tuple[str, ConsoleSession]:
    """A new console session for ``who``: ``(cookie secret, session)``.

    The secret exists only in the result (and then in the browser's cookie).
    Expired sessions are deleted on the way, so the table holds live ones.
    """
    secret = secrets.token_urlsafe(32)
    csrf = secrets.token_urlsafe(32)
    token_hash = _sha256(admin_token) if who.user_id is None else None
    await db.execute("DELETE FROM console_sessions WHERE expires_at <= now()")
    expires_at: datetime = await db.fetchval(
        "INSERT INTO console_sessions "
        "(id, user_id, api_key_id, admin_token_hash, actor_name, csrf, expires_at) "
        "VALUES ($1, $2, $3, $4, $5, $6, now() + $7::interval) RETURNING expires_at",
        _sha256(secret),
        who.user_id,
        who.api_key_id,
        token_hash,
        who.name,
        csrf,
        SESSION_LIFETIME,
    )
    return secret, ConsoleSession(who.actor("console"), csrf, expires_at)


_LOOKUP_SQL = """
SELECT s.user_id, coalesce(u.name, s.actor_name) AS name, s.csrf, s.expires_at,
       s.last_seen_at < now() - interval '1 minute' AS stale
FROM console_sessions s
LEFT JOIN users u ON u.id = s.user_id
LEFT JOIN api_keys k ON k.id = s.api_key_id
WHERE s.id = $1 AND s.expires_at > now()
  AND CASE WHEN s.user_id IS NULL THEN s.admin_token_hash = $2
           ELSE u.is_admin AND k.user_id = s.user_id AND k.revoked_at IS NULL
                AND (k.expires_at IS NULL OR k.expires_at > now())
      END
"""


async def lookup_session(db: Database, secret: str, admin_token: str) -> ConsoleSession | None:
    """The live session of a cookie's secret, or None (unknown, expired, or its
    credential no longer an admin's). Checked against the database every time."""
    if not secret or len(secret) > 128:
        return None
    session_id = _sha256(secret)
    token_hash = _sha256(admin_token) if admin_token else None
    row = await db.fetchrow(_LOOKUP_SQL, session_id, token_hash)
    if row is None:
        return None
    if row["stale"]:
        # At most one write per session per minute.
        await db.execute(
            "UPDATE console_sessions SET last_seen_at = now() WHERE id = $1", session_id
        )
    actor = Actor(row["user_id"], row["name"], "console")
    return ConsoleSession(actor, row["csrf"], row["expires_at"])


async def delete_session(db: Database, secret: str) -> None:
    """Sign out: the session of this secret is gone (nothing when there is none)."""
    if secret and len(secret) <= 128:
        await db.execute("DELETE FROM console_sessions WHERE id = $1", _sha256(secret))


def session_cookie(secret: str, *, secure: bool) -> bytes:
    """The ``set-cookie`` value that signs a browser in."""
    max_age = int(SESSION_LIFETIME.total_seconds())
    value = (
        f"{COOKIE_NAME}={secret}; Path={COOKIE_PATH}; Max-Age={max_age}; HttpOnly; SameSite=Strict"
    )
    return (value + ("; Secure" if secure else "")).encode()


def cleared_cookie(*, secure: bool) -> bytes:
    """The ``set-cookie`` value that signs a browser out."""
    value = f"{COOKIE_NAME}=; Path={COOKIE_PATH}; Max-Age=0; HttpOnly; SameSite=Strict"
    return (value + ("; Secure" if secure else "")).encode()


def cookie_secret(cookie_header: str | None) -> str | None:
    """The console session's secret from a ``Cookie`` header, or None."""
    if not cookie_header:
        return None
    for part in cookie_header.split(";"):
        name, sep, value = part.strip().partition("=")
        if sep and name == COOKIE_NAME and value:
            return value
    return None


async def admin_api_check(db: Database, credential: str) -> bool | None:
    """For ``relay.admin.api``: whether a relay token is an admin's (True), a
    valid non-admin's (False), or no valid token (None). ADMIN_TOKEN is the
    admin API's own check."""
    found = await check_admin_credential(db, "", credential)
    if found == "forbidden":
        return False
    return True if isinstance(found, AdminIdentity) else None
