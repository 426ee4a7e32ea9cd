"""Injected tool names and the tool checks: sans-io, no server."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from relay.mcp.names import MAX_NAME, NameTable, injected_name
from relay.mcp.tools import MAX_SCHEMA_BYTES, ServerTools, build_toolset, check_tool

_VALID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


def test_a_short_name_is_kept_as_is() -> None:
    assert injected_name("github", "list_issues") == "bmcp_github_list_issues"


def test_a_long_name_is_shortened_deterministically_and_stays_distinct() -> None:
    a = injected_name("server", "t" * 80 + "a")
    b = injected_name("server", "t" * 80 + "b")
    assert len(a) == MAX_NAME and len(b) == MAX_NAME
    assert a != b
    assert a == injected_name("server", "t" * 80 + "a")
    assert a.startswith("bmcp_server_ttt")


def test_invalid_characters_are_replaced_and_the_names_stay_apart() -> None:
    dotted = injected_name("s", "repo.list")
    underscored = injected_name("s", "repo_list")
    assert _VALID.match(dotted)
    assert underscored == "bmcp_s_repo_list"
    assert dotted != underscored


@settings(max_examples=60, deadline=None)
@given(st.from_regex(r"[a-z0-9]+(-[a-z0-9]+)*", fullmatch=True), st.text(min_size=1, max_size=200))
def test_every_name_is_valid_and_resolves_back(server: str, tool: str) -> None:
    table = NameTable()
    name = table.add(server, tool)
    assert name is not None
    assert _VALID.match(name), name
    ref = table.resolve(name)
    assert ref is not None and (ref.server, ref.tool) == (server, tool)


def test_a_name_taken_twice_keeps_its_first_owner() -> None:
    # "bmcp_a_b_c" is both server "a" tool "b_c" and server "a_b"... (not a valid server
    # name), so collide through the table directly: the same name from two refs.
    table = NameTable()
    assert table.add("a", "b_c") == "bmcp_a_b_c"
    assert table.add("a-b", "c") == "bmcp_a-b_c"  # a hyphen keeps them apart
    assert table.add("a", "b_c") == "bmcp_a_b_c"  # the same tool again: the same name


def test_build_toolset_skips_a_colliding_tool() -> None:
    servers = [
        ServerTools("a", "http://a", (("b_c", "", {"type": "object"}),)),
        # A hashed name that equals a plain one cannot be produced by chance; simulate a
        # server listing the same tool twice.
        ServerTools("a", "http://a2", (("b_c", "", {"type": "object"}),)),
    ]
    toolset = build_toolset(servers)
    assert [t.name for t in toolset.tools] == ["bmcp_a_b_c"]
    assert toolset.resolve("bmcp_a_b_c") is not None
    assert toolset.resolve("bmcp_a_b_c").url == "http://a"  # type: ignore[union-attr]


def test_client_tools_of_the_same_name_win() -> None:
    toolset = build_toolset([ServerTools("s", "u", (("x", "", {}), ("y", "", {})))])
    assert [t.name for t in toolset.without(["bmcp_s_x"]).tools] == ["bmcp_s_y"]


def test_schema_garbage_is_left_out() -> None:
    assert isinstance(check_tool({"name": "t", "inputSchema": "nope"}), str)
    assert isinstance(check_tool({"name": "t", "inputSchema": {"type": "string"}}), str)
    assert isinstance(check_tool({"name": "", "inputSchema": {}}), str)
    assert isinstance(check_tool({"name": 3, "inputSchema": {}}), str)
    assert isinstance(check_tool({"name": "t", "description": 5, "inputSchema": {}}), str)
    big = {"type": "object", "properties": {"p": {"description": "d" * MAX_SCHEMA_BYTES}}}
    assert isinstance(check_tool({"name": "t", "inputSchema": big}), str)
    ok = check_tool({"name": "t", "description": "d" * 10_000, "inputSchema": {}})
    assert not isinstance(ok, str)
    name, description, schema = ok
    assert name == "t" and len(description) == 4096
    assert schema == {"type": "object", "properties": {}}
