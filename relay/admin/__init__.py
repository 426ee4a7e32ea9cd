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
