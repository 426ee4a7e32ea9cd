"""MCP tools as the relay offers them to the model: checked, named, snapshotted.

A server's tool list is hostile input: a tool whose name, description or
input schema is not what the protocol says, or too large, is left out (and
logged by the caller) rather than sent to every model request. ``ToolSet``
is one immutable snapshot of every server's tools, taken once per request:
the tools injected and the names resolved come from the same snapshot.
Sans-io.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec

from relay.mcp.names import NameTable

MAX_TOOLS_PER_SERVER = 128
MAX_DESCRIPTION = 4096  # characters
MAX_SCHEMA_BYTES = 32 * 1024  # the input schema, as JSON


@dataclass(frozen=True, slots=True)
class McpTool:
    server: str  # the configured server name
    url: str  # the server's endpoint (recorded with each call)
    tool: str  # the tool's own name on its server
    name: str  # the injected name the model sees
    description: str
    input_schema: Mapping[str, Any]


def check_tool(raw: Mapping[str, Any]) -> tuple[str, str, dict[str, Any]] | str:
    """(name, description, input schema) of one listed tool, or why it is left out."""
    name = raw.get("name")
    if not isinstance(name, str) or not name or len(name) > 256:
        return "no usable name"
    description = raw.get("description") or ""
    if not isinstance(description, str):
        return f"{name!r}: the description is not a string"
    schema = raw.get("input_schema", raw.get("inputSchema"))
    if not isinstance(schema, dict) or schema.get("type", "object") != "object":
        return f"{name!r}: the input schema is not a JSON Schema object"
    try:
        size = len(msgspec.json.encode(schema))
    except (TypeError, ValueError, OverflowError):
        return f"{name!r}: the input schema is not JSON"
    if size > MAX_SCHEMA_BYTES:
        return f"{name!r}: the input schema is {size} bytes (at most {MAX_SCHEMA_BYTES})"
    schema = dict(schema)
    schema.setdefault("type", "object")
    # Anthropic refuses an object schema without properties in some models' strict modes.
    schema.setdefault("properties", {})
    return name, description[:MAX_DESCRIPTION], schema


@dataclass(frozen=True, slots=True)
class ServerTools:
    """One server's usable tools, as last listed (empty while it is down)."""

    server: str
    url: str
    tools: tuple[tuple[str, str, dict[str, Any]], ...] = ()


@dataclass(frozen=True, slots=True)
class ToolSet:
    """Every server's injected tools at one moment, and the way back from a name."""

    tools: tuple[McpTool, ...] = ()
    by_name: Mapping[str, McpTool] = field(default_factory=dict)
    skipped: tuple[str, ...] = ()  # server/tool left out for a name collision

    def __bool__(self) -> bool:
        return bool(self.tools)

    def resolve(self, name: str) -> McpTool | None:
        return self.by_name.get(name)

    def without(self, names: Iterable[str]) -> ToolSet:
        """This set less the tools the client defined itself under the same names."""
        drop = set(names)
        if not any(t.name in drop for t in self.tools):
            return self
        kept = tuple(t for t in self.tools if t.name not in drop)
        return ToolSet(kept, {t.name: t for t in kept}, self.skipped)


def build_toolset(servers: Iterable[ServerTools]) -> ToolSet:
    """The snapshot of ``servers``' tools, in configuration order, names made unique."""
    table = NameTable()
    tools: list[McpTool] = []
    skipped: list[str] = []
    seen: set[str] = set()
    for server in servers:
        for tool, description, schema in server.tools:
            name = table.add(server.server, tool)
            if name is None or name in seen:
                skipped.append(f"{server.server}/{tool}")
                continue
            seen.add(name)
            tools.append(McpTool(server.server, server.url, tool, name, description, schema))
    return ToolSet(tuple(tools), {t.name: t for t in tools}, tuple(skipped))
