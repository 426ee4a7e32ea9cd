"""Step 2, authenticate: who is asking, and with which provider credential.

The relay token (governance header, Bearer, X-Api-Key: ``relay.access``) is
checked by the gateway's ``TokenVerifier`` (``relay.auth.TokenCache``). A
BYOK request (the governance header) is refused unless BYOK is allowed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from relay import client_errors
from relay.access import BYOK_DISABLED_BODY, ClientCredential, read_client_credential
from relay.db.bridge import UNAVAILABLE_ERRORS
from relay.identity import Principal, TokenVerifier
from relay.request.context import Refused, Request, refuse

log = logging.getLogger("relay.app")


@dataclass(frozen=True, slots=True)
class Caller:
    """The person behind a request and the credential they presented."""

    principal: Principal
    credential: ClientCredential

    @property
    def byok(self) -> bool:
        return self.credential.byok


async def authenticate(req: Request) -> Caller:
    services = req.services
    return await check_caller(req, services.tokens, allow_byok=services.options.allow_byok)


async def check_caller(req: Request, tokens: TokenVerifier, *, allow_byok: bool) -> Caller:
    """The caller of ``req``, or ``Refused``: 401 (no or bad token), 503, 403 (BYOK)."""
    credential = read_client_credential(req.headers)
    try:
        checked = await tokens.check(credential.relay_token) if credential.relay_token else None
    except UNAVAILABLE_ERRORS:
        # A token not in the cache cannot be checked while PostgreSQL is away.
        log.warning("cannot verify a token: the database is unavailable")
        refuse(503, "the relay cannot verify tokens right now")
    if not isinstance(checked, Principal):
        refuse(401, client_errors.token_refused(credential, checked))
    if credential.byok and not allow_byok:
        raise Refused(403, body=BYOK_DISABLED_BODY)
    return Caller(checked, credential)
