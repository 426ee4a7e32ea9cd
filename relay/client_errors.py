"""What a refused request is told: messages that say what to fix.

Pure functions (no I/O); ``relay.app`` sends them in the provider's error
shape. A message may name the configured providers and the route prefix, never
a secret: a key sent in the wrong place is named by its kind and first
characters only.
"""

from __future__ import annotations

from collections.abc import Sequence

from relay.access import ClientCredential
from relay.auth import Refusal
from relay.providers.kinds import find_kind
from relay.providers.types import Provider
from relay.routes import GATEWAY_PREFIXES, RouteKind
from relay.wire.errors import ErrorStyle, renderer_for

PREFIX = GATEWAY_PREFIXES[0]
GOVERNANCE_HEADER = "X-Coder-AI-Governance-Token"

# Provider credentials by their first characters (longest first), for the hint.
_PROVIDER_KEY_PREFIXES: tuple[tuple[str, str], ...] = (
    ("sk-ant-", "an Anthropic API key"),
    ("sk-", "an OpenAI API key"),
    ("ABSK", "a Bedrock API key"),
    ("AKIA", "an AWS access key id"),
    ("ASIA", "an AWS access key id"),
)


def _names(providers: Sequence[Provider]) -> str:
    return ", ".join(p.name for p in providers)


def _configured(providers: Sequence[Provider]) -> str:
    if not providers:
        return "no provider is enabled on this relay"
    return f"the configured providers are {_names(providers)}"


def unknown_provider(name: str, providers: Sequence[Provider]) -> str:
    return f"unknown provider {name!r}: {_configured(providers)}"


def disabled_provider_body(style: ErrorStyle, name: str) -> bytes:
    """503 for a provider that exists but is disabled (code ``provider_disabled``).

    Anthropic's type is ``api_error``: the provider is not overloaded, it is off.
    """
    message = f"provider {name!r} is disabled on this relay; ask its administrator to enable it"
    type_ = "api_error" if style == "anthropic" else None
    return renderer_for(style).body(503, message, type_=type_, code="provider_disabled")


def _base_url_hint(provider: Provider) -> str:
    kind = find_kind(provider.type)
    suffix = kind.client_base_path if kind is not None else ""
    return f"{PREFIX}{provider.name}{suffix}"


def _serves(provider: Provider, method: str, api_path: str) -> RouteKind | None:
    kind = find_kind(provider.type)
    return kind.match(method, api_path) if kind is not None else None


def outside_the_gateway(method: str, path: str, providers: Sequence[Provider]) -> str:
    """A path that does not start with ``/api/v2/ai-gateway/<provider name>/``."""
    if path.startswith(GATEWAY_PREFIXES):
        return (
            f"route not supported: {method} {path}: the path has no provider name "
            f"(use {PREFIX}<provider name>/…; {_configured(providers)})"
        )
    message = (
        f"route not supported: {method} {path}: provider routes start with {PREFIX}<provider name>/"
    )
    fits = [p for p in providers if _serves(p, method, path) is not None]
    if fits:
        p = fits[0]
        return (
            f"{message}, e.g. {PREFIX}{p.name}{path} "
            f"(set the client's base URL to http(s)://<relay>{_base_url_hint(p)})"
        )
    return f"{message} ({_configured(providers)})"


def route_not_supported(provider: Provider, method: str, api_path: str) -> str:
    """A path under a provider that its type does not serve, with the likely fix."""
    message = f"route not supported: {method} {api_path}"
    if not api_path.startswith("/v1/") and _serves(provider, method, "/v1" + api_path):
        return (
            f"{message}: did you mean {PREFIX}{provider.name}/v1{api_path}? "
            f"(set the client's base URL to http(s)://<relay>{_base_url_hint(provider)})"
        )
    return message


def _provider_key_kind(secret: str) -> str | None:
    for prefix, kind in _PROVIDER_KEY_PREFIXES:
        if secret.startswith(prefix):
            return f"{kind} ({prefix}…)"
    return None


def token_refused(credential: ClientCredential, refusal: Refusal | None) -> str:
    """Why the relay token was refused (``None``: there was none)."""
    if refusal is None:
        return (
            "missing relay API token: send your relay token as 'Authorization: Bearer <token>' "
            f"or 'X-Api-Key: <token>' (with your own provider key: in the {GOVERNANCE_HEADER} "
            "header)"
        )
    if refusal == "expired":
        return "the relay API token has expired: ask for a new one"
    if refusal == "revoked":
        return "the relay API token has been revoked: ask for a new one"
    kind = _provider_key_kind(credential.relay_token or "")
    if kind is not None and credential.byok:
        return (
            f"the {GOVERNANCE_HEADER} header holds {kind}, not a relay API token: put your "
            "relay token there and your provider key in Authorization or X-Api-Key"
        )
    if kind is not None:
        return (
            f"this is {kind}, not a relay API token: send your relay token instead, or, to "
            f"use your own key (BYOK), keep it and add your relay token in the "
            f"{GOVERNANCE_HEADER} header"
        )
    return "invalid relay API token: it is not a token this relay issued"
