"""Which routes each provider type serves, and how each is handled.

Canonical prefix ``/api/v2/ai-gateway/<provider name>/``; the legacy prefix
``/api/v2/aibridge/<provider name>/`` behaves the same. See docs/routes.md.
"""

from __future__ import annotations

import re
from enum import Enum

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


_ANTHROPIC: list[tuple[str, re.Pattern[str], RouteKind]] = [
    ("POST", re.compile(r"^/v1/messages$"), RouteKind.MESSAGES),
    ("POST", re.compile(r"^/v1/messages/count_tokens$"), RouteKind.PASSTHROUGH),
    ("GET", re.compile(r"^/v1/models$"), RouteKind.PASSTHROUGH),
    ("GET", re.compile(r"^/v1/models/[^/]+$"), RouteKind.PASSTHROUGH),
]

_OPENAI: list[tuple[str, re.Pattern[str], RouteKind]] = [
    ("POST", re.compile(r"^/v1/chat/completions$"), RouteKind.CHAT),
    ("POST", re.compile(r"^/v1/responses$"), RouteKind.RESPONSES),
    ("GET", re.compile(r"^/v1/models(/.*)?$"), RouteKind.PASSTHROUGH),
    ("GET", re.compile(r"^/v1/responses/[^/]+$"), RouteKind.PASSTHROUGH),
    ("DELETE", re.compile(r"^/v1/responses/[^/]+$"), RouteKind.PASSTHROUGH),
    ("POST", re.compile(r"^/v1/responses/[^/]+/cancel$"), RouteKind.PASSTHROUGH),
    ("GET", re.compile(r"^/v1/responses/[^/]+/input_items$"), RouteKind.PASSTHROUGH),
    ("*", re.compile(r"^/v1/conversations(/.*)?$"), RouteKind.PASSTHROUGH),
]

_BEDROCK: list[tuple[str, re.Pattern[str], RouteKind]] = [
    ("POST", re.compile(r"^/v1/messages$"), RouteKind.MESSAGES),
    ("POST", re.compile(r"^/model/[^/]+/invoke$"), RouteKind.BEDROCK_INVOKE),
    (
        "POST",
        re.compile(r"^/model/[^/]+/invoke-with-response-stream$"),
        RouteKind.BEDROCK_INVOKE_STREAM,
    ),
]

_TABLES = {"anthropic": _ANTHROPIC, "openai": _OPENAI, "bedrock": _BEDROCK}


def match_route(provider_type: str, method: str, api_path: str) -> RouteKind | None:
    for m, pattern, kind in _TABLES.get(provider_type, ()):
        if (m == "*" or m == method) and pattern.match(api_path):
            return kind
    return None


def error_style_for(provider_type: str | None, api_path: str) -> ErrorStyle:
    """'anthropic' or 'openai': the error body shape a client of this route expects."""
    if provider_type in ("anthropic", "bedrock"):
        return "anthropic"
    if provider_type == "openai":
        return "openai"
    return "anthropic" if api_path.startswith("/v1/messages") else "openai"


def upstream_path(provider_type: str, api_path: str) -> str:
    """Path to append to the provider's base URL.

    OpenAI base URLs include ``/v1`` (https://api.openai.com/v1/), so the
    client's ``/v1/chat/completions`` becomes ``chat/completions``; Anthropic
    base URLs do not (https://api.anthropic.com/), so ``v1/messages`` is kept.
    """
    path = api_path.lstrip("/")
    if provider_type == "openai" and path.startswith("v1/"):
        return path[3:]
    return path


def join_url(base_url: str, path: str, query_string: bytes = b"") -> str:
    url = base_url.rstrip("/") + "/" + path
    if query_string:
        url += "?" + query_string.decode("latin-1")
    return url


_PATTERN_PARTS = ((r"(/.*)?", "/*"), (r"[^/]+", "{id}"))


def _label_of(pattern: re.Pattern[str]) -> str:
    text = pattern.pattern.removeprefix("^").removesuffix("$")
    for regex, shown in _PATTERN_PARTS:
        text = text.replace(regex, shown)
    return text


def route_label(provider_type: str, method: str, api_path: str) -> str:
    """The route pattern an API path matched, for metrics and circuit keys.

    ``/v1/models/gpt-4.1`` → ``/v1/models/*``, ``/model/<id>/invoke`` →
    ``/model/{id}/invoke``: a metric label must not be a path a client
    chooses (one series per path, never freed). ``other`` when nothing matches.
    """
    for m, pattern, _kind in _TABLES.get(provider_type, ()):
        if (m == "*" or m == method) and pattern.match(api_path):
            return _label_of(pattern)
    return "other"
