"""Which client sent a request, and the client's own session id.

Best-effort, from the request headers (and, for Claude Code, the Messages
body's ``metadata.user_id``). This is about clients, not records: the
interception asks it when it starts, the recorder just stores the answer.
Nothing here does I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TypeAlias

import msgspec

Headers: TypeAlias = Iterable[tuple[bytes, bytes]]

# User-Agent prefixes (lower case) of the coding agents, checked in order. The
# same best-effort table as Coder's AI Gateway; agents built on an official SDK
# (Claude Code on the Anthropic JS SDK) are matched before the SDK itself.
_AGENT_PREFIXES: tuple[tuple[str, str], ...] = (
    ("mux/", "mux"),
    ("xum/", "mux"),
    ("claude", "claude-code"),  # claude-cli/2.0.14 (external, cli)
    ("codex", "codex"),  # codex_cli_rs/0.46.0 (...)
    ("opencode/", "opencode"),
    ("githubcopilotchat/", "copilot"),
    ("copilot/", "copilot"),
    ("kilo-code/", "kilo"),
    ("roo-code/", "roo"),
    ("zed/", "zed"),
    ("cursor/", "cursor"),
    ("curl/", "curl"),
)
# The official SDKs send "<ClientClass>/<Language> <version>", e.g.
# "AsyncAnthropic/Python 0.40.0", "OpenAI/JS 4.77.0".
_SDK_RE = re.compile(r"^[a-z]*?(anthropic|openai)[a-z]*/([a-z]+)\b")
_SDK_LANGUAGES = {"js": "node"}


def _header_map(headers: Headers) -> dict[bytes, bytes]:
    # ASGI gives lower-case names; the first occurrence of a name wins.
    found: dict[bytes, bytes] = {}
    for name, value in headers:
        found.setdefault(name.lower(), value)
    return found


def _header_text(found: dict[bytes, bytes], name: bytes) -> str | None:
    value = found.get(name)
    if value is None:
        return None
    text = value.decode("latin-1").strip()
    return text or None


def detect_client(headers: Headers) -> str:
    """Which client sent the request: claude-code, codex, opencode, cursor, mux,
    copilot, kilo, roo, zed, sdk-<language>-<anthropic|openai>, curl or unknown."""
    found = _header_map(headers)
    user_agent = (_header_text(found, b"user-agent") or "").lower()
    originator = (_header_text(found, b"originator") or "").lower()
    for prefix, client in _AGENT_PREFIXES:
        if user_agent.startswith(prefix):
            return client
    if originator.startswith("codex"):  # codex_cli_rs, codex_vscode, codex_exec
        return "codex"
    if originator in ("kilo-code", "roo-code"):
        return originator.removesuffix("-code")
    if b"x-cursor-client-version" in found:
        return "cursor"
    match = _SDK_RE.match(user_agent)
    if match:
        vendor, language = match.groups()
        return f"sdk-{_SDK_LANGUAGES.get(language, language)}-{vendor}"
    return "unknown"


# Session headers per client, in order of preference.
_SESSION_HEADERS: dict[str, tuple[bytes, ...]] = {
    "claude-code": (b"x-claude-code-session-id",),
    "codex": (b"session-id", b"session_id"),  # older Codex versions send session_id
    "mux": (b"x-mux-workspace-id",),
    "copilot": (b"x-interaction-id", b"x-client-session-id"),
    "kilo": (b"x-kilocode-taskid",),
    "opencode": (b"x-opencode-session", b"x-session-affinity"),
}
# Claude Code's metadata.user_id: "user_<sha256>_account_<uuid>_session_<uuid>";
# newer versions send a JSON object with a session_id field instead.
_CLAUDE_SESSION_RE = re.compile(r"_session_([^_\s]+)$")


def client_session_id(headers: Headers, metadata_user_id: str | None = None) -> str | None:
    """The client's own session (conversation) id, where the client sends one.

    ``metadata_user_id`` is the request body's ``metadata.user_id`` (Anthropic
    Messages), which is where Claude Code puts its session when it sends no
    ``X-Claude-Code-Session-Id`` header.
    """
    found = _header_map(headers)
    client = detect_client(found.items())
    for name in _SESSION_HEADERS.get(client, ()):
        value = _header_text(found, name)
        if value:
            return value
    if client == "claude-code" and metadata_user_id:
        return _claude_session_from_user_id(metadata_user_id)
    return None


def _claude_session_from_user_id(user_id: str) -> str | None:
    text = user_id.strip()
    if text.startswith("{"):
        try:
            decoded = msgspec.json.decode(text)
        except msgspec.DecodeError:
            return None
        session = decoded.get("session_id") if isinstance(decoded, dict) else None
        if not isinstance(session, str):
            return None
        return session.strip() or None
    match = _CLAUDE_SESSION_RE.search(text)
    return match.group(1) if match else None
