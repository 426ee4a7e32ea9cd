"""The indexed MCP servers: CODER_AI_GATEWAY_MCP_SERVER_<N>_<KEY>, with their aliases."""

from __future__ import annotations

import pytest

from relay.options import OptionError, load_options, parse_mcp_headers

P = "CODER_AI_GATEWAY_MCP_SERVER_"
OLD = "CODER_AIBRIDGE_MCP_SERVER_"


def _load(env: dict[str, str]) -> tuple[object, list[str]]:
    lines: list[str] = []
    return load_options(env, warn=lines.append), lines


def test_servers_load_in_index_order_with_aliases_and_filters() -> None:
    options, lines = _load(
        {
            f"{P}1_NAME": "jira",
            f"{P}1_URL": "https://jira.example/mcp",
            f"{OLD}0_NAME": "github",
            f"{OLD}0_URL": "http://127.0.0.1:9/mcp",
            f"{P}0_HEADERS": '{"Authorization": "Bearer ghp_secret"}',
            f"{P}0_TOOL_ALLOW_REGEX": "^(get|list)_",
            f"{P}0_TOOL_DENY_REGEX": "_secret$",
        }
    )
    servers = options.mcp_servers  # type: ignore[attr-defined]
    assert [(s.index, s.name, s.url) for s in servers] == [
        (0, "github", "http://127.0.0.1:9/mcp"),
        (1, "jira", "https://jira.example/mcp"),
    ]
    github = servers[0]
    assert github.headers == (("Authorization", "Bearer ghp_secret"),)
    assert github.injects("get_issue") and not github.injects("delete_repo")
    assert not github.injects("get_secret")  # deny wins over allow
    assert "ghp_secret" not in repr(github)
    assert sum("CODER_AIBRIDGE_MCP_SERVER_0_NAME is deprecated" in line for line in lines) == 1
    assert not any("not a relay option" in line for line in lines)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({f"{P}0_URL": "http://x/mcp"}, f"{P}0_NAME is required"),
        ({f"{P}0_NAME": "a"}, f"{P}0_URL is required"),
        ({f"{P}0_NAME": "A_b", f"{P}0_URL": "http://x"}, "a name must match"),
        ({f"{P}0_NAME": "a", f"{P}0_URL": "ftp://x"}, "an http:// or https:// URL"),
        ({f"{P}1_NAME": "a", f"{P}1_URL": "http://x"}, "contiguous from 0"),
        ({f"{P}x_NAME": "a"}, "is not a number"),
        (
            {
                f"{P}0_NAME": "a",
                f"{P}0_URL": "http://x",
                f"{P}1_NAME": "a",
                f"{P}1_URL": "http://y",
            },
            "the name is taken",
        ),
        ({f"{P}0_NAME": "a", f"{P}0_URL": "http://x", f"{P}0_TOOL_DENY_REGEX": "("}, "regular"),
        ({f"{P}0_NAME": "a", f"{P}0_URL": "http://x", f"{P}0_HEADERS": "nocolon"}, "Name: value"),
    ],
)
def test_unusable_servers_are_refused_naming_the_variable(
    env: dict[str, str], message: str
) -> None:
    with pytest.raises(OptionError, match=message):
        _load(env)


def test_an_unknown_key_is_warned_about() -> None:
    _, lines = _load({f"{P}0_NAME": "a", f"{P}0_URL": "http://x", f"{P}0_TOKEN": "t"})
    assert any(f"{P}0_TOKEN is not an MCP server setting" in line for line in lines)


def test_headers_as_lines_and_a_refused_value_is_never_shown() -> None:
    assert parse_mcp_headers("Authorization: Bearer t\nX-Team: core\n") == (
        ("Authorization", "Bearer t"),
        ("X-Team", "core"),
    )
    with pytest.raises(ValueError) as info:
        parse_mcp_headers('{"X": 5, "Y": "very-secret"}')
    assert "very-secret" not in str(info.value)


def test_no_servers_by_default() -> None:
    options, _ = _load({})
    assert options.mcp_servers == ()  # type: ignore[attr-defined]
