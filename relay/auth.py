"""Users and API tokens: creation, verification, and the per-process cache.

A token is ``relay_<id>_<secret>``: ``id`` is 12 random hex digits, used to
find the row (and shown in ``relay tokens list``); ``secret`` is 32 random
bytes in URL-safe base64. Only the SHA-256 of the secret is stored: with 256
bits of entropy a fast hash is enough (nothing to brute-force), and it keeps
a cache miss cheap. Hashes are compared in constant time.

``TokenCache`` answers most requests from memory. The configuration
notifications (``relay.providers.registry.ConfigListener``) evict a token as
soon as it is revoked or changed, so a revocation reaches every running relay
within a second; expiry is checked against the cached expiry time, with no
database round trip.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import logging
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

import msgspec
import trio

from relay.db.bridge import UNAVAILABLE_ERRORS, Database
from relay.errors import CommandError

# Defined in relay.identity (a leaf the request steps depend on); importable from here too.
from relay.identity import Principal as Principal
from relay.identity import Refusal as Refusal
from relay.providers.registry import ConfigChange

TOKEN_PREFIX = "relay_"
_ID_HEX_DIGITS = 12
_SECRET_BYTES = 32
_TOKEN_RE = re.compile(r"^relay_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
_USER_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}$")

log = logging.getLogger("relay.auth")


class AuthError(CommandError, ValueError):
    """An admin operation that cannot be done (unknown user, duplicate name, ...)."""


class UserRow(msgspec.Struct, frozen=True):
    id: str
    name: str
    created_at: datetime
    is_admin: bool = False  # may use the console and the admin API with its tokens


class ApiKeyRow(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    user_id: str
    user_name: str
    created_at: datetime
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    last_used_at: datetime | None = None

    def status(self, now: datetime) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"


def hash_secret(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def new_token() -> tuple[str, str, bytes]:
    """A fresh ``(token, id, hash of the secret)``."""
    key_id = secrets.token_hex(_ID_HEX_DIGITS // 2)
    secret = base64.urlsafe_b64encode(secrets.token_bytes(_SECRET_BYTES)).rstrip(b"=").decode()
    return f"{TOKEN_PREFIX}{key_id}_{secret}", key_id, hash_secret(secret)


def parse_token(token: str) -> tuple[str, str] | None:
    """``(id, secret)`` of a well-formed token, else None (no database needed)."""
    m = _TOKEN_RE.match(token)
    return (m.group(1), m.group(2)) if m else None


def mask_token(token: str) -> str:
    """Hint for logs: the public id only, e.g. ``relay_0123456789ab_…``."""
    parsed = parse_token(token)
    return f"{TOKEN_PREFIX}{parsed[0]}_…" if parsed else "…"


# -- users --------------------------------------------------------------------


_USER_COLUMNS = "id::text, name, created_at, is_admin"


def _user_row(row: Any) -> UserRow:
    return UserRow(row["id"], row["name"], row["created_at"], row["is_admin"])


async def create_user(db: Database, name: str, *, admin: bool = False) -> UserRow:
    if not _USER_NAME_RE.match(name):
        raise AuthError(
            f"user name {name!r}: use letters, digits and . _ @ + - (at most 128, no spaces)"
        )
    row = await db.fetchrow(
        "INSERT INTO users (name, is_admin) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING "
        f"RETURNING {_USER_COLUMNS}",
        name,
        admin,
    )
    if row is None:
        raise AuthError(f"a user named {name!r} already exists")
    return _user_row(row)


async def list_users(db: Database) -> list[UserRow]:
    rows = await db.fetch(f"SELECT {_USER_COLUMNS} FROM users ORDER BY name")
    return [_user_row(r) for r in rows]


async def set_admin(db: Database, name: str, admin: bool) -> tuple[UserRow, bool]:
    """Give the user named ``name`` the admin role, or take it away: ``(user, changed)``.

    Taking it away ends the user's console sessions (a trigger of migration 0013).
    """
    row = await db.fetchrow(
        "WITH old AS (SELECT id, is_admin FROM users WHERE name = $1), "
        "new AS (UPDATE users u SET is_admin = $2 FROM old WHERE u.id = old.id "
        f"  RETURNING u.{_USER_COLUMNS.replace(', ', ', u.')}) "
        "SELECT new.*, old.is_admin <> $2 AS changed FROM new, old",
        name,
        admin,
    )
    if row is None:
        raise AuthError(f"no user named {name!r} (create it with: relay users create {name})")
    return _user_row(row), row["changed"]


# -- tokens -------------------------------------------------------------------

_KEY_COLUMNS = (
    "k.id, k.user_id::text AS user_id, u.name AS user_name, k.created_at, k.expires_at, "
    "k.revoked_at, k.last_used_at"
)


def _key_row(row: Any) -> ApiKeyRow:
    return ApiKeyRow(**{f: row[f] for f in ApiKeyRow.__struct_fields__})


async def create_token(
    db: Database, user: str, expires_in: float | None = None
) -> tuple[str, ApiKeyRow]:
    """A new token for the user named ``user``; the token string exists only in the result."""
    if expires_in is not None and expires_in <= 0:
        raise AuthError("a token's lifetime must be positive")
    token, key_id, secret_hash = new_token()
    row = await db.fetchrow(
        "WITH k AS (INSERT INTO api_keys (id, user_id, hash, expires_at) "
        "  SELECT $1, u.id, $2, now() + $3::interval FROM users u WHERE u.name = $4 "
        "  RETURNING *) "
        f"SELECT {_KEY_COLUMNS} FROM k JOIN users u ON u.id = k.user_id",
        key_id,
        secret_hash,
        timedelta(seconds=expires_in) if expires_in is not None else None,
        user,
    )
    if row is None:
        raise AuthError(f"no user named {user!r} (create it with: relay users create {user})")
    return token, _key_row(row)


async def list_tokens(db: Database, user: str | None = None) -> list[ApiKeyRow]:
    rows = await db.fetch(
        f"SELECT {_KEY_COLUMNS} FROM api_keys k JOIN users u ON u.id = k.user_id "
        "WHERE $1::text IS NULL OR u.name = $1 ORDER BY k.created_at, k.id",
        user,
    )
    return [_key_row(r) for r in rows]


async def revoke_token(db: Database, key_id: str) -> ApiKeyRow:
    """Revoke by id (idempotent: an already revoked token keeps its first revocation time)."""
    row = await db.fetchrow(
        "WITH k AS (UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) "
        "  WHERE id = $1 RETURNING *) "
        f"SELECT {_KEY_COLUMNS} FROM k JOIN users u ON u.id = k.user_id",
        key_id,
    )
    if row is None:
        raise AuthError(f"no token with id {key_id!r}")
    return _key_row(row)


async def check_token(db: Database, token: str) -> tuple[Principal, float | None] | Refusal:
    """The token's principal and expiry (unix time), or why it is not valid now."""
    parsed = parse_token(token)
    if parsed is None:
        return "unknown"
    key_id, secret = parsed
    row = await db.fetchrow(
        "SELECT k.hash, k.user_id::text AS user_id, u.name AS user_name, k.expires_at, "
        "  k.revoked_at IS NOT NULL AS revoked, "
        "  k.expires_at IS NOT NULL AND k.expires_at <= now() AS expired "
        "FROM api_keys k JOIN users u ON u.id = k.user_id WHERE k.id = $1",
        key_id,
    )
    if row is None or not hmac.compare_digest(bytes(row["hash"]), hash_secret(secret)):
        return "unknown"
    if row["revoked"]:
        return "revoked"
    if row["expired"]:
        return "expired"
    # At most one write per token per minute, and not announced (see the trigger).
    await db.execute(
        "UPDATE api_keys SET last_used_at = now() WHERE id = $1 "
        "AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')",
        key_id,
    )
    expires_at: datetime | None = row["expires_at"]
    principal = Principal(row["user_id"], row["user_name"], key_id)
    return principal, expires_at.timestamp() if expires_at is not None else None


async def lookup_token(db: Database, token: str) -> tuple[Principal, float | None] | None:
    """The token's principal and expiry (unix time), or None if it is not valid now."""
    found = await check_token(db, token)
    return found if isinstance(found, tuple) else None


async def verify_token(db: Database, token: str) -> Principal | None:
    """Who ``token`` belongs to, or None when it is unknown, wrong, expired or revoked."""
    found = await lookup_token(db, token)
    return found[0] if found is not None else None


# -- cache ----------------------------------------------------------------------


class _Entry(msgspec.Struct):
    principal: Principal
    expires_at: float | None  # the token's own expiry
    cached_until: float  # a safety net should a notification ever be missed


class TokenCache:
    """Verified tokens in memory, kept honest by the configuration notifications.

    Positive results are kept up to ``positive_ttl`` seconds (a safety net:
    changes arrive as notifications) but never past the token's expiry.
    Negative results are kept ``negative_ttl`` seconds so a flood of one bad
    token does not reach the database; concurrent lookups of one token share
    one query. Both caches are bounded (least recently used goes first).
    Entries are keyed by the token's SHA-256, so the cache holds no token.

    While PostgreSQL is unreachable, a token whose positive entry was dropped
    only for freshness (its TTL ran out, or a resync after a lost LISTEN
    connection) is still accepted from a stale copy, until its own expiry: an
    outage must not lock out everyone who was working. A revocation or a
    change of the token or its user deletes the stale copy too.
    """

    def __init__(
        self,
        db: Database,
        *,
        max_entries: int = 100_000,
        positive_ttl: float = 300.0,
        negative_ttl: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._db = db
        self._max_entries = max_entries
        self._positive_ttl = positive_ttl
        self._negative_ttl = negative_ttl
        self._clock = clock
        self._positive: OrderedDict[bytes, _Entry] = OrderedDict()
        self._negative: OrderedDict[bytes, tuple[float, Refusal]] = OrderedDict()
        # Positive entries dropped only for freshness, for use while the database is away.
        self._stale: OrderedDict[bytes, _Entry] = OrderedDict()
        self._inflight: dict[bytes, trio.Event] = {}
        # Bumped by every change: a lookup that started before a change must
        # not store its (possibly stale) answer.
        self._generation = 0

    def __len__(self) -> int:
        return len(self._positive)

    def can_verify_offline(self) -> bool:
        """Whether some token could be accepted without the database (``/readyz``)."""
        now = self._clock()
        entries = itertools.chain(self._positive.values(), self._stale.values())
        return any(e.expires_at is None or now < e.expires_at for e in entries)

    async def verify(self, token: str) -> Principal | None:
        """Who the token belongs to, or None when it is refused (see ``check``)."""
        found = await self.check(token)
        return found if isinstance(found, Principal) else None

    async def check(self, token: str) -> Principal | Refusal:
        """Who the token belongs to, or why it is refused."""
        if parse_token(token) is None:
            return "unknown"  # malformed: never worth a query
        key = hashlib.sha256(token.encode()).digest()
        while True:
            cached = self._cached(key)
            if cached is not None:
                return cached
            pending = self._inflight.get(key)
            if pending is None:
                break
            await pending.wait()

        done = self._inflight[key] = trio.Event()
        generation = self._generation
        try:
            found = await check_token(self._db, token)
        except UNAVAILABLE_ERRORS:
            stale = self._stale.get(key)
            if stale is None or (
                stale.expires_at is not None and self._clock() >= stale.expires_at
            ):
                raise
            log.warning("database unavailable: accepting a token verified earlier")
            return stale.principal
        finally:
            del self._inflight[key]
            done.set()
        self._stale.pop(key, None)
        if generation == self._generation:
            now = self._clock()
            if isinstance(found, str):
                self._remember_negative(key, now, found)
            else:
                entry = _Entry(found[0], found[1], now + self._positive_ttl)
                self._positive[key] = entry
                self._trim(self._positive)
        return found if isinstance(found, str) else found[0]

    def _cached(self, key: bytes) -> Principal | Refusal | None:
        """The cached answer, or None when the database must be asked."""
        now = self._clock()
        entry = self._positive.get(key)
        if entry is not None:
            if entry.expires_at is not None and now >= entry.expires_at:
                del self._positive[key]
                self._remember_negative(key, now, "expired")
                return "expired"
            if now < entry.cached_until:
                self._positive.move_to_end(key)
                return entry.principal
            self._keep_stale(key, self._positive.pop(key))
        negative = self._negative.get(key)
        if negative is not None:
            until, refusal = negative
            if now < until:
                return refusal
            del self._negative[key]
        return None

    def _remember_negative(self, key: bytes, now: float, refusal: Refusal) -> None:
        self._negative[key] = (now + self._negative_ttl, refusal)
        self._negative.move_to_end(key)
        self._trim(self._negative)

    def _trim(self, cache: OrderedDict[bytes, Any]) -> None:
        while len(cache) > self._max_entries:
            cache.popitem(last=False)

    def _keep_stale(self, key: bytes, entry: _Entry) -> None:
        self._stale[key] = entry
        self._stale.move_to_end(key)
        self._trim(self._stale)

    def clear(self) -> None:
        """Forget everything (fresh answers come from the database again)."""
        for key, entry in self._positive.items():
            self._keep_stale(key, entry)
        self._positive.clear()
        self._negative.clear()
        self._generation += 1

    async def on_config_change(self, changes: Sequence[ConfigChange], db: Database) -> None:
        """As a ``ConfigListener`` subscriber: evict what the changes touch."""
        for change in changes:
            if change.kind == "resync":
                self.clear()
                continue
            for cache in (self._positive, self._stale):
                if change.kind == "api_keys":
                    doomed = [k for k, e in cache.items() if e.principal.api_key_id == change.id]
                elif change.kind == "users":
                    doomed = [k for k, e in cache.items() if e.principal.user_id == change.id]
                else:
                    doomed = []
                for key in doomed:
                    del cache[key]
            if change.kind not in ("api_keys", "users"):
                continue
            # A new or re-enabled token may be among the remembered failures.
            self._negative.clear()
            self._generation += 1
