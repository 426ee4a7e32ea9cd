"""What a provider instance is, and how its secrets are shown.

A ``Provider`` is one configured upstream (several instances of one type are
allowed, told apart by name). The rest of the relay only ever receives
providers from ``build_providers`` (the database), never from the environment
directly, so every process and every part sees the same set.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from typing import Literal

import msgspec

# Instance names appear in routes: /api/v2/ai-gateway/<name>/...
NAME_RE = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")
MAX_KEYS = 5
# Route segments under /api/v2/ai-gateway/ that are not providers.
RESERVED_NAMES = frozenset({"admin"})


class ProviderType(enum.StrEnum):
    OPENAI = "openai"
    ANTHROPIC = "anthropic"
    BEDROCK = "bedrock"


# Bedrock has no fixed default: empty means the regional endpoint
# https://bedrock-runtime.<region>.amazonaws.com (see Provider.endpoint).
DEFAULT_BASE_URLS: dict[ProviderType, str] = {
    ProviderType.OPENAI: "https://api.openai.com/v1/",
    ProviderType.ANTHROPIC: "https://api.anthropic.com/",
    ProviderType.BEDROCK: "",
}
DEFAULT_BEDROCK_MODEL = "global.anthropic.claude-sonnet-4-5-20250929-v1:0"
DEFAULT_BEDROCK_SMALL_FAST_MODEL = "global.anthropic.claude-haiku-4-5-20251001-v1:0"

Source = Literal["env", "api"]


def mask_secret(secret: str) -> str:
    """A hint that identifies a secret without revealing it: ``sk-…abcd``.

    Short secrets show only the ellipsis: three plus four characters of an
    eight-character secret would give most of it away.
    """
    if not secret:
        return ""
    if len(secret) < 16:
        return "…"
    return f"{secret[:3]}…{secret[-4:]}"


def keys_problem(keys: Sequence[str]) -> str | None:
    """Why a key pool is unusable (blank, duplicate, too many), or None."""
    if len(keys) > MAX_KEYS:
        return f"too many keys ({len(keys)}), at most {MAX_KEYS}"
    seen: set[str] = set()
    for i, key in enumerate(keys):
        if not key.strip():
            return f"key {i} is blank"
        if key in seen:
            return f"key {i} is a duplicate of an earlier key"
        seen.add(key)
    return None


def provider_problems(provider: Provider) -> list[str]:
    """What makes a provider unusable (the rules the environment follows, for the CLI)."""
    problems: list[str] = []
    if not NAME_RE.match(provider.name):
        problems.append(f"name {provider.name!r} must match ^[a-z0-9]+(-[a-z0-9]+)*$")
    elif provider.name in RESERVED_NAMES:
        problems.append(f"name {provider.name!r} is reserved (the admin API)")
    problem = keys_problem(provider.keys)
    if problem:
        problems.append(f"keys: {problem}")
    has_access_key = bool(provider.bedrock_access_key)
    if has_access_key != bool(provider.bedrock_access_key_secret):
        problems.append("the AWS access key id and its secret must be given together")
    if provider.type is ProviderType.BEDROCK and provider.keys and has_access_key:
        problems.append("a bedrock provider uses either API keys or an AWS access key pair")
    return problems


class Provider(msgspec.Struct, frozen=True, kw_only=True):
    """One provider instance, as the relay uses it.

    ``base_url`` is the upstream for openai and anthropic. For bedrock the
    upstream is ``bedrock_base_url`` or, when empty, the regional endpoint.
    ``keys`` is the key pool tried in order (for bedrock: Bedrock API keys,
    used instead of the AWS access key pair).
    """

    name: str
    type: ProviderType
    base_url: str = ""
    keys: tuple[str, ...] = ()
    bedrock_region: str = ""
    bedrock_access_key: str = ""
    bedrock_access_key_secret: str = ""
    bedrock_model: str = ""
    bedrock_small_fast_model: str = ""
    bedrock_base_url: str = ""
    # openai: bridge the Responses API over WebSocket (off: upgrades answered 426).
    responses_websocket: bool = True
    enabled: bool = True
    source: Source = "env"

    @property
    def endpoint(self) -> str:
        """The upstream base URL requests go to ('' when it is left to the AWS chain)."""
        if self.type is not ProviderType.BEDROCK:
            return self.base_url
        if self.bedrock_base_url:
            return self.bedrock_base_url
        if self.bedrock_region:
            return f"https://bedrock-runtime.{self.bedrock_region}.amazonaws.com"
        return ""

    def masked_keys(self) -> tuple[str, ...]:
        return tuple(mask_secret(k) for k in self.keys)

    def credential_hint(self) -> str:
        """Masked credentials for output: keys, or the AWS access key id."""
        if self.keys:
            return ", ".join(self.masked_keys())
        if self.bedrock_access_key:
            return f"aws {mask_secret(self.bedrock_access_key)}"
        return "(none: BYOK only)" if self.type is not ProviderType.BEDROCK else "(AWS chain)"

    def describe(self) -> str:
        """One line for logs and CLI output; never shows a secret."""
        return f"{self.name} ({self.type}) {self.endpoint or '(regional)'} key {self.credential_hint()}"

    # Structs print every field by default; a provider's repr ends up in
    # logs and tracebacks, so it must not carry the keys.
    def __repr__(self) -> str:
        return (
            f"Provider(name={self.name!r}, type={self.type.value!r}, "
            f"endpoint={self.endpoint!r}, keys={self.masked_keys()!r}, "
            f"enabled={self.enabled!r}, source={self.source!r})"
        )

    __str__ = __repr__
