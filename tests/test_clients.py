"""Client detection from request headers: relay.clients."""

from __future__ import annotations

import pytest

from relay.clients import client_session_id, detect_client


@pytest.mark.parametrize(
    ("headers", "client"),
    [
        ({"user-agent": "claude-cli/2.0.14 (external, cli)"}, "claude-code"),
        ({"user-agent": "codex_cli_rs/0.46.0 (Ubuntu 24.4.0; x86_64) xterm"}, "codex"),
        ({"user-agent": "Mozilla/5.0", "originator": "codex_cli_rs"}, "codex"),
        ({"user-agent": "opencode/0.15.8"}, "opencode"),
        ({"user-agent": "mux/0.8.2"}, "mux"),
        ({"user-agent": "GitHubCopilotChat/0.32.0"}, "copilot"),
        ({"user-agent": "copilot/0.0.339 (linux)"}, "copilot"),
        ({"user-agent": "Kilo-Code/4.100.0"}, "kilo"),
        ({"originator": "kilo-code"}, "kilo"),
        ({"user-agent": "node", "x-cursor-client-version": "1.7.0"}, "cursor"),
        (
            {"user-agent": "Anthropic/Python 0.69.0", "x-stainless-lang": "python"},
            "sdk-python-anthropic",
        ),
        ({"user-agent": "AsyncOpenAI/Python 2.3.0"}, "sdk-python-openai"),
        ({"user-agent": "OpenAI/JS 5.23.0"}, "sdk-node-openai"),
        ({"user-agent": "Anthropic/JS 0.65.0"}, "sdk-node-anthropic"),
        ({"user-agent": "curl/8.5.0"}, "curl"),
        ({"user-agent": "python-httpx/0.28.1"}, "unknown"),
        ({}, "unknown"),
    ],
)
def test_detect_client(headers: dict[str, str], client: str) -> None:
    asgi = [(k.encode(), v.encode()) for k, v in headers.items()]
    assert detect_client(asgi) == client


CLAUDE = (b"user-agent", b"claude-cli/2.0.14 (external, cli)")


@pytest.mark.parametrize(
    ("headers", "user_id", "session"),
    [
        ([CLAUDE, (b"x-claude-code-session-id", b" abc ")], None, "abc"),
        ([CLAUDE], "user_0a1b_account_42_session_6f9e-11", "6f9e-11"),
        ([CLAUDE], '{"device_id":"d","session_id":"s-123"}', "s-123"),
        ([CLAUDE], "user_0a1b", None),
        ([(b"user-agent", b"codex_cli_rs/0.46.0"), (b"session-id", b"c-new")], None, "c-new"),
        ([(b"user-agent", b"codex_cli_rs/0.40.0"), (b"session_id", b"c-old")], None, "c-old"),
        ([(b"user-agent", b"mux/1.0.0"), (b"x-mux-workspace-id", b"ws-1")], None, "ws-1"),
        ([(b"user-agent", b"GitHubCopilotChat/0.32"), (b"x-interaction-id", b"i-1")], None, "i-1"),
        ([(b"user-agent", b"Kilo-Code/4.1"), (b"x-kilocode-taskid", b"t-1")], None, "t-1"),
        # Another client's header is not taken for a session.
        ([(b"user-agent", b"curl/8"), (b"session-id", b"x")], "user_a_session_b", None),
    ],
)
def test_client_session_id(
    headers: list[tuple[bytes, bytes]], user_id: str | None, session: str | None
) -> None:
    assert client_session_id(headers, user_id) == session
