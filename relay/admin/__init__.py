"""The read side of the recorded data: the admin HTTP API (``api``) and the
``relay usage`` report (``usage``).

Apart from ``relay.record``, which is only the write path (recorder, writer,
spool, retention): reading needs nothing of it but the tables' names, and the
recorder needs nothing of what dashboards ask.
"""

from __future__ import annotations

from typing import Any, Protocol


class ReadDatabase(Protocol):
    """What the read side needs of ``relay.db.bridge.Database``."""

    async def fetch(self, sql: str, *args: Any) -> list[Any]: ...


class Where:
    """SQL conditions with their parameters, numbered from ``start``: only the
    filters given, never ``($n IS NULL OR col = $n)``. PostgreSQL plans a
    prepared statement generically after five runs, and a generic plan cannot
    use an index for a condition that may be switched off: such a query turned
    from an index scan into a sequential scan of the table (4x slower on 1M
    interceptions) from its sixth call on one connection."""

    def __init__(self, start: int = 1) -> None:
        self.conditions: list[str] = []
        self.params: list[Any] = []
        self._next = start

    def param(self, value: Any) -> str:
        """A placeholder for ``value`` (``$n``)."""
        self.params.append(value)
        self._next += 1
        return f"${self._next - 1}"

    def add(self, condition: str, *values: Any) -> None:
        """``condition`` with a ``{}`` for each value, e.g. ``"i.model = {}"``."""
        names = [self.param(v) for v in values]
        self.conditions.append(condition.format(*names))

    def sql(self) -> str:
        return " AND ".join(self.conditions) if self.conditions else "true"
