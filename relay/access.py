"""Who is asking, and with which provider credential the request goes upstream.

Token lookup order: the governance header (``X-Coder-AI-Governance-Token``,
short form ``X-AI-Gov-Token``), then ``Authorization: Bearer``, then
``X-Api-Key``. The governance header signals BYOK: the person's own
``Authorization`` / ``X-Api-Key`` then go upstream unchanged. Otherwise the
relay token is removed and the provider's key is set (centralized).
"""

from __future__ import annotations

from dataclasses import dataclass

from relay.asgi import HOP_BY_HOP, Headers

GOVERNANCE_HEADERS = (b"x-coder-ai-governance-token", b"x-ai-gov-token")
CREDENTIAL_HEADERS = frozenset({b"authorization", b"x-api-key", *GOVERNANCE_HEADERS})
# Headers the relay sets itself for upstream requests.
_ALWAYS_DROPPED = HOP_BY_HOP | {b"host", b"content-length", b"accept-encoding", b"expect"}

BYOK_DISABLED_BODY = (
    b'{"message":"Bring Your Own Key (BYOK) mode is not enabled.",'
    b'"detail":"Contact your administrator to enable it with --ai-gateway-allow-byok."}'
)


@dataclass(frozen=True, slots=True)
class ClientCredential:
    """What the client presented."""

    relay_token: str | None
    byok: bool
    # The person's own provider credential in BYOK mode (for the masked hint).
    byok_secret: str | None = None


def _bearer(value: bytes) -> str | None:
    text = value.decode("latin-1").strip()
    if text[:7].lower() == "bearer ":
        return text[7:].strip() or None
    return None


def read_client_credential(headers: Headers) -> ClientCredential:
    governance: str | None = None
    authorization: bytes | None = None
    api_key: bytes | None = None
    for k, v in headers:
        if k in GOVERNANCE_HEADERS and governance is None:
            governance = v.decode("latin-1").strip() or None
        elif k == b"authorization" and authorization is None:
            authorization = v
        elif k == b"x-api-key" and api_key is None:
            api_key = v
    if governance is not None:
        own = None
        if authorization is not None:
            own = _bearer(authorization) or authorization.decode("latin-1")
        elif api_key is not None:
            own = api_key.decode("latin-1").strip()
        return ClientCredential(relay_token=governance, byok=True, byok_secret=own)
    token = _bearer(authorization) if authorization is not None else None
    if token is None and api_key is not None:
        token = api_key.decode("latin-1").strip() or None
    return ClientCredential(relay_token=token, byok=False)


def upstream_request_headers(
    headers: Headers, *, byok: bool, provider_auth: list[tuple[bytes, bytes]]
) -> list[tuple[bytes, bytes]]:
    """Client headers to send upstream.

    Drops hop-by-hop headers, the relay's own credential headers and the ones
    the HTTP client sets. In BYOK mode the client's own Authorization /
    X-Api-Key pass unchanged; otherwise ``provider_auth`` is added.
    """
    out: list[tuple[bytes, bytes]] = []
    for k, v in headers:
        if k in _ALWAYS_DROPPED or k in GOVERNANCE_HEADERS:
            continue
        if k in CREDENTIAL_HEADERS and not byok:
            continue
        out.append((k, v))
    if not byok:
        out.extend(provider_auth)
    # The relay must read what it forwards: ask for an uncompressed body.
    out.append((b"accept-encoding", b"identity"))
    return out
