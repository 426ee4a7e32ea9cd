"""Provider kinds: everything that differs by provider type, one module per type.

``kind_for(type)`` is the one place the relay asks "what does a provider of
this type do": its routes (``match``, ``route_label``), its credential header
(``key_auth_headers``), its upstream path (``upstream_path``), its error shape
(``error_style``), its API specs and its exchange (``prepare_exchange``).
See ``relay.providers.kinds.base.ProviderKind``.

To add a type: write ``relay/providers/kinds/<type>.py`` with a ``ProviderKind``
subclass and a ``KIND`` instance, and list it in ``_KINDS`` below (and in
``relay.providers.types.ProviderType``, which the configuration validates).
"""

from __future__ import annotations

from relay.providers.kinds import anthropic, bedrock, copilot, openai
from relay.providers.kinds.base import ExchangeContext, ProviderKind
from relay.wire.errors import ErrorStyle

__all__ = [
    "ExchangeContext",
    "ProviderKind",
    "all_kinds",
    "error_style_for",
    "find_kind",
    "kind_for",
]

_KINDS: dict[str, ProviderKind] = {
    k.type: k for k in (anthropic.KIND, openai.KIND, bedrock.KIND, copilot.KIND)
}


def kind_for(provider_type: str) -> ProviderKind:
    """The kind of a provider type (``KeyError`` for a type no module defines)."""
    return _KINDS[provider_type]


def find_kind(provider_type: str) -> ProviderKind | None:
    """The kind of a provider type, or None for a type no module defines."""
    return _KINDS.get(provider_type)


def all_kinds() -> tuple[ProviderKind, ...]:
    return tuple(_KINDS.values())


def error_style_for(provider_type: str | None, api_path: str) -> ErrorStyle:
    """The error body shape a client of this route expects.

    The provider's kind decides; before a provider is known (or for a type
    nothing defines), the path does: ``/v1/messages…`` is Anthropic's.
    """
    kind = _KINDS.get(provider_type) if provider_type is not None else None
    if kind is not None:
        return kind.error_style
    return "anthropic" if api_path.startswith("/v1/messages") else "openai"
