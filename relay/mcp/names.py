"""Injected tool names: ``bmcp_<server>_<tool>``, at most 64 characters, reversible.

The providers accept tool names of ``[a-zA-Z0-9_-]{1,64}``. A server's tool
whose injected name fits (and needs no character replaced) keeps it; any
other is shortened deterministically: the longest prefix that leaves room,
then ``_`` and 8 hex digits of a SHA-256 of the server and tool names, so the
same tool gets the same name on every relay and every refresh. ``NameTable``
holds the way back (injected name → server, tool); a name that would be
taken twice keeps its first owner and the other tool is left out (and
logged by the caller). Sans-io: nothing here does I/O.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

PREFIX = "bmcp_"
MAX_NAME = 64
_HASH_LEN = 8
_VALID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_INVALID_CHARS = re.compile(r"[^a-zA-Z0-9_-]")


def injected_name(server: str, tool: str) -> str:
    """The name the model sees for ``tool`` of ``server``."""
    plain = f"{PREFIX}{server}_{tool}"
    if len(plain) <= MAX_NAME and _VALID.match(plain):
        return plain
    digest = hashlib.sha256(f"{server}\0{tool}".encode("utf-8", "surrogatepass")).hexdigest()
    cleaned = _INVALID_CHARS.sub("_", plain)
    return f"{cleaned[: MAX_NAME - _HASH_LEN - 1]}_{digest[:_HASH_LEN]}"


def is_injected_name(name: str) -> bool:
    return name.startswith(PREFIX)


@dataclass(frozen=True, slots=True)
class ToolRef:
    server: str
    tool: str


@dataclass(slots=True)
class NameTable:
    """Injected name → (server, tool), built as tools are added."""

    _by_name: dict[str, ToolRef] = field(default_factory=dict)

    def add(self, server: str, tool: str) -> str | None:
        """The tool's injected name, or None when another tool holds it already."""
        name = injected_name(server, tool)
        ref = ToolRef(server, tool)
        held = self._by_name.get(name)
        if held is not None and held != ref:
            return None
        self._by_name[name] = ref
        return name

    def resolve(self, name: str) -> ToolRef | None:
        return self._by_name.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __len__(self) -> int:
        return len(self._by_name)
