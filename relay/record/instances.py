"""Relay processes ("instances") in the database, and the rows the dead ones left.

Every interception is recorded ``in_progress`` when it starts, stamped with the
id of the instance serving it, and completed when it ends. A process that dies
without completing them (SIGKILL, OOM, power loss) leaves them ``in_progress``;
the surviving relays mark them ``interrupted``. Which instances are gone, in a
fleet on one database:

- an instance of the **same host** (same hostname, boot id and PID namespace,
  so its pid means the same process here) whose pid no longer runs: at once;
- any instance whose **heartbeat** is older than the lease (another host that
  crashed or lost its network; a live one that lost only the database writes
  its completions later, and those replace ``interrupted``);
- an instance that **stopped gracefully** (it drained its recorder first: what
  is still ``in_progress`` waits in a spool, whose replay completes it);
- rows naming an instance that is not (or no longer) in the table, e.g.
  replayed from a dead process's spool after its instance was swept.

A relay registers at start, sweeps before it serves (so a relay restarted on
the same machine settles its predecessor's rows before its first request), then
heartbeats and sweeps every ``HEARTBEAT_INTERVAL``, and after each spool
segment the recorder replays (it may bring in rows of a dead process, whose
instance row a sweep has already removed). A pid reused by another
process looks alive: such an instance waits for its lease, never the reverse.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from relay.db.bridge import UNAVAILABLE_ERRORS, Database
from relay.record.events import new_id

log = logging.getLogger(__name__)

_UNAVAILABLE_OR_SLOW: tuple[type[BaseException], ...] = (*UNAVAILABLE_ERRORS, trio.TooSlowError)

HEARTBEAT_INTERVAL = 10.0  # seconds between heartbeats (and sweeps)
LEASE = 60.0  # an instance silent this long is taken for dead, whatever its host

INTERRUPTED_ERROR_TYPE = "relay_interrupted"
INTERRUPTED_MESSAGE = (
    "the relay process serving this request ended before the request did "
    "(killed or crashed); usage after the start is unknown"
)


def host_key() -> str:
    """Processes with the same key share a PID space: a pid means one process."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = "?"
    try:
        namespace = str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        namespace = "?"
    return f"{socket.gethostname()}/{boot}/{namespace}"


def pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


_SWEEP = """
WITH gone AS (
    DELETE FROM relay_instances WHERE id = ANY($1::uuid[]) RETURNING id, heartbeat_at
)
UPDATE interceptions i SET
    status = 'interrupted',
    ended_at = greatest(
        i.started_at,
        coalesce((SELECT g.heartbeat_at FROM gone g WHERE g.id = i.instance_id), now())
    ),
    error_type = $2,
    error_message = $3
WHERE i.status = 'in_progress'
  AND (i.instance_id = ANY($1::uuid[])
       OR i.instance_id IS NULL
       OR NOT EXISTS (SELECT 1 FROM relay_instances r WHERE r.id = i.instance_id))
"""


@dataclass
class Instance:
    """This process in ``relay_instances``. ``id`` stamps its interceptions."""

    db: Database
    id: uuid.UUID = field(default_factory=new_id)
    host: str = field(default_factory=host_key)
    pid: int = field(default_factory=os.getpid)
    lease: float = LEASE
    pid_running: Callable[[int], bool] = pid_running
    interrupted: int = 0  # rows this process marked interrupted
    _wake: trio.Event = field(default_factory=trio.Event)

    async def register(self) -> None:
        """Insert (or, after a sweep took it for dead, re-insert) this instance."""
        await self.db.execute(
            "INSERT INTO relay_instances (id, host_key, hostname, pid) VALUES ($1, $2, $3, $4) "
            "ON CONFLICT (id) DO UPDATE SET heartbeat_at = now(), stopped_at = NULL",
            self.id,
            self.host,
            socket.gethostname(),
            self.pid,
        )

    async def heartbeat(self) -> None:
        status = await self.db.execute(
            "UPDATE relay_instances SET heartbeat_at = now() WHERE id = $1", self.id
        )
        if status == "UPDATE 0":
            await self.register()

    async def sweep(self) -> int:
        """Mark ``interrupted`` the rows of instances that are gone; how many."""
        rows = await self.db.fetch(
            "SELECT id, host_key, pid, stopped_at IS NOT NULL AS stopped, "
            "heartbeat_at < now() - make_interval(secs => $1) AS expired "
            "FROM relay_instances WHERE id <> $2",
            self.lease,
            self.id,
        )
        dead = [
            row["id"]
            for row in rows
            if row["stopped"]
            or row["expired"]
            or (row["host_key"] == self.host and not self.pid_running(row["pid"]))
        ]
        status = await self.db.execute(_SWEEP, dead, INTERRUPTED_ERROR_TYPE, INTERRUPTED_MESSAGE)
        count = _affected(status)
        if count:
            self.interrupted += count
            log.warning(
                "marked %d interception(s) interrupted: their relay process ended first", count
            )
        return count

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Heartbeat and sweep every ``HEARTBEAT_INTERVAL`` (a task in the services nursery)."""
        task_status.started()
        while True:
            with trio.move_on_after(HEARTBEAT_INTERVAL):
                await self._wake.wait()
            self._wake = trio.Event()
            try:
                await self.heartbeat()
                await self.sweep()
            except UNAVAILABLE_ERRORS:
                pass  # the database is away: the recorder says so; try again later
            except Exception as exc:  # never the end of the services nursery
                log.warning("instance heartbeat or sweep failed: %r", exc)

    def sweep_soon(self) -> None:
        """Sweep now rather than at the next heartbeat (rows were replayed from a spool)."""
        self._wake.set()

    async def stopped(self) -> None:
        """A graceful stop, after the recorder drained: the others may sweep us at once."""
        try:
            with trio.fail_after(5):
                await self.db.execute(
                    "UPDATE relay_instances SET stopped_at = now() WHERE id = $1", self.id
                )
        except _UNAVAILABLE_OR_SLOW:
            pass  # the lease runs out instead
        except Exception as exc:
            log.warning("could not mark this relay instance stopped: %r", exc)


def _affected(status: object) -> int:
    if isinstance(status, str) and status.rsplit(" ", 1)[-1].isdigit():
        return int(status.rsplit(" ", 1)[-1])
    return 0
