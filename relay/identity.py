"""Who is asking: the verified person behind a relay token, and the verifier's port.

A leaf module: the request steps and the interception depend on these small
types, not on ``relay.auth`` (tokens in PostgreSQL, the cache) that
implements them.
"""

from __future__ import annotations

from typing import Literal, Protocol

import msgspec


class Principal(msgspec.Struct, frozen=True):
    """Who a verified token belongs to."""

    user_id: str
    user_name: str
    api_key_id: str


#: Why a token was refused. ``expired`` and ``revoked`` are only ever told to
#: whoever holds the whole token (its secret matched): anything else is ``unknown``,
#: so a guessed id reveals nothing about other people's tokens.
Refusal = Literal["unknown", "expired", "revoked"]


class TokenVerifier(Protocol):
    """Checks a relay token (``relay.auth.TokenCache``).

    ``check`` may raise one of ``relay.db.bridge.UNAVAILABLE_ERRORS`` when it
    cannot tell (the token is not cached and the database is away).
    """

    async def check(self, token: str) -> Principal | Refusal: ...
