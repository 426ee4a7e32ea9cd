"""Routes: the gateway prefixes, API path normalisation, and what a route is.

Canonical prefix ``/api/v2/ai-gateway/<provider name>/``; the legacy prefix
``/api/v2/aibridge/<provider name>/`` behaves the same. Which routes a
provider type serves is its kind's (``relay.providers.kinds``). See docs/routes.md.
"""

from __future__ import annotations

import re
from enum import Enum
from typing import NamedTuple

from relay.wire.errors import ErrorStyle

__all__ = ["ErrorStyle"]  # re-exported: where routes decide which style a client gets

GATEWAY_PREFIXES = ("/api/v2/ai-gateway/", "/api/v2/aibridge/")


class RouteKind(Enum):
    MESSAGES = "messages"  # Anthropic Messages, intercepted
    CHAT = "chat"  # OpenAI Chat Completions, intercepted
    RESPONSES = "responses"  # OpenAI Responses, intercepted
    BEDROCK_INVOKE = "bedrock-invoke"  # native Bedrock InvokeModel, intercepted
    BEDROCK_INVOKE_STREAM = "bedrock-invoke-stream"
    PASSTHROUGH = "passthrough"  # forwarded unparsed, not recorded


def split_gateway_path(path: str) -> tuple[str, str] | None:
    """``/api/v2/ai-gateway/<name>/<rest>`` → (name, "/<rest>")."""
    for prefix in GATEWAY_PREFIXES:
        if path.startswith(prefix):
            remainder = path[len(prefix) :]
            name, sep, rest = remainder.partition("/")
            if not name:
                return None
            return name, "/" + rest if sep else "/"
    return None


# RFC 3986 §2.3 unreserved characters: escaping them changes nothing, so
# "%6Dodels" is "models" to every server behind the relay.
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_ESCAPE_RE = re.compile(r"%([0-9A-Fa-f]{2})")
# An escaped "/" or "\\": a front end or the provider may turn it into a separator.
_ESCAPED_SEPARATOR_RE = re.compile(r"%(2[Ff]|5[Cc])")


class PathRefused(ValueError):
    """An API path the relay will not route (the message says why)."""


def normalise_api_path(api_path: str) -> str:
    """The API path routes are matched on and that is sent upstream.

    Escaped unreserved characters are decoded (RFC 3986 §6.2.2.2) so that
    the route the relay matches is the route every server behind it sees.
    Paths a front end or the provider could resolve to another route are
    refused (``PathRefused``): "." and ".." segments, raw or escaped in any
    case, empty segments and a raw backslash. An escaped "/" stays as sent
    (a Bedrock ARN's %2F); passthrough routes refuse it (``check_passthrough_path``).
    """
    path = _ESCAPE_RE.sub(_decode_unreserved, api_path)
    if "\\" in path:
        raise PathRefused("path not allowed: it holds a backslash")
    segments = path.split("/")[1:]
    if any(s in (".", "..") for s in segments):
        raise PathRefused("path not allowed: it holds a '.' or '..' segment")
    if "" in segments and path != "/":
        raise PathRefused("path not allowed: it holds an empty segment")
    return path


def _decode_unreserved(m: re.Match[str]) -> str:
    char = chr(int(m.group(1), 16))
    return char if char in _UNRESERVED else m.group(0)


def check_passthrough_path(api_path: str) -> None:
    """Passthrough routes forward the path unparsed: no escaped separators either."""
    if _ESCAPED_SEPARATOR_RE.search(api_path):
        raise PathRefused("path not allowed: it holds an escaped '/' or '\\'")


class Route(NamedTuple):
    """One route of a provider type: a method ("*": any) and an API path pattern."""

    method: str
    pattern: re.Pattern[str]
    kind: RouteKind

    def matches(self, method: str, api_path: str) -> bool:
        return (self.method == "*" or self.method == method) and bool(self.pattern.match(api_path))

    @property
    def label(self) -> str:
        """The pattern as a metric label: ``/v1/models/*``, ``/model/{id}/invoke``.

        A metric label must not be a path a client chooses (one series per
        path, never freed).
        """
        text = self.pattern.pattern.removeprefix("^").removesuffix("$")
        for regex, shown in _PATTERN_PARTS:
            text = text.replace(regex, shown)
        return text


_PATTERN_PARTS = ((r"(/.*)?", "/*"), (r"[^/]+", "{id}"))


def intercepted(method: str, path_regex: str, kind: RouteKind) -> Route:
    """An intercepted route: parsed, accounted for and recorded (``path_regex`` is anchored)."""
    return Route(method, re.compile(f"^{path_regex}$"), kind)


def passthrough(method: str, path_regex: str) -> Route:
    """A route forwarded unparsed and not recorded."""
    return Route(method, re.compile(f"^{path_regex}$"), RouteKind.PASSTHROUGH)


def join_url(base_url: str, path: str, query_string: bytes = b"") -> str:
    url = base_url.rstrip("/") + "/" + path
    if query_string:
        url += "?" + query_string.decode("latin-1")
    return url


def with_query(path: str, query_string: bytes) -> str:
    return f"{path}?{query_string.decode('latin-1')}" if query_string else path
