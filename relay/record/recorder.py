"""The recorder nursery: request handlers hand it records without ever
waiting; it batches them into PostgreSQL, or into the on-disk spool while the
database is away, and replays the spool when the database is back.

::

    record() ──send_nowait──▶ channel (bounded) ──▶ collector ──COPY──▶ PostgreSQL
       │ channel full                                 │ database down / slow
       ▼                                              ▼
    overflow (bounded) ──▶ overflow spooler ──────▶ spool (fsync'd frames)
                                                      │ replayer: probe with backoff,
                                                      ▼ replay in order, then delete
                                                   PostgreSQL

Nothing is dropped silently: a record is written, spooled, or counted in
``stats.lost`` and logged as an error (spool unwritable, both queues full).
The log counts rows exactly as ``stats.lost`` (and so the
``relay_recorder_lost_events`` metric) does: the first loss at once, then a
summary every ``LOSS_SUMMARY_INTERVAL`` while losses go on, the rest at the end.
``cannot_record`` tells the request path when usage can go nowhere (database
away and spool unwritable), for the ``REQUIRE_RECORDING`` option.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import trio

from relay.record.events import Record
from relay.record.spool import ClaimedSegment, Spool, free_bytes, probe_writable
from relay.record.writer import RecordingDatabase, write_batch_isolating

log = logging.getLogger(__name__)

LOSS_SUMMARY_INTERVAL = 10.0  # seconds between "LOST" lines while losses go on
FREE_SPACE_CHECK_INTERVAL = 30.0
FREE_SPACE_WARNING_INTERVAL = 300.0  # at most one low-space warning per this
DEFAULT_MIN_FREE_BYTES = 512 * 1024 * 1024


@dataclass
class RecorderStats:
    """Counters in rows (records); metrics read them."""

    accepted: int = 0  # handed to record()
    queued: int = 0  # accepted and not yet written, spooled or lost (in memory now)
    written: int = 0  # committed to PostgreSQL, replays included
    spooled: int = 0  # appended to the spool
    replayed: int = 0  # read back from the spool and committed
    lost: int = 0  # neither written nor spooled: spool unwritable, queues full
    rejected: int = 0  # refused by PostgreSQL as invalid (logged one by one)
    batches: int = 0  # committed write transactions (one COPY per table each)
    database_up: bool = False


class ReplayFailure(Exception):
    """A spooled batch failed while PostgreSQL answered: the batch, not the database."""

    def __init__(self, segment: str, frame: int, attempts: int, cause: BaseException) -> None:
        super().__init__(f"{segment} batch {frame}: {cause!r}")
        self.segment = segment
        self.frame = frame
        self.attempts = attempts
        self.cause = cause


class Recorder:
    """Owns the path from ``record()`` to PostgreSQL. Start ``run()`` in the
    server's nursery (``await nursery.start(recorder.run)``); call ``aclose()``
    at shutdown, after the last request handler has finished."""

    def __init__(
        self,
        db: RecordingDatabase | str,
        spool_dir: Path,
        *,
        batch_size: int = 1000,
        flush_interval: float = 0.05,
        queue_size: int = 10_000,
        write_timeout: float = 5.0,
        retention: float | None = None,
        max_backoff: float = 5.0,
        rescan_interval: float = 30.0,
        watch_interval: float | None = None,
        min_free_bytes: int = DEFAULT_MIN_FREE_BYTES,
        isolate_after: int = 3,
    ) -> None:
        """``db``: an open ``relay.db.bridge.Database``, or a DSN to open (and
        reopen) here. ``queue_size``: record() calls (one per interception)
        that may wait in memory; as many again go straight to the spool when
        the writer is behind. ``retention``: seconds to keep rows, or None to
        leave deleting old rows to someone else. ``watch_interval``: how often to
        check the database and the spool, so that ``cannot_record`` is at most
        this old (None: learnt from writes only). ``min_free_bytes``: warn when
        the spool's filesystem has less free space. ``isolate_after``: failed
        replays of one spooled batch (with PostgreSQL answering) after which
        its records are written one by one and those that fail alone set aside."""
        self._dsn = db if isinstance(db, str) else None
        self._db: RecordingDatabase | None = None if isinstance(db, str) else db
        self.spool_dir = Path(spool_dir)
        self._spool = Spool(self.spool_dir)
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._queue_size = queue_size
        self._write_timeout = write_timeout
        self._retention = retention
        self._max_backoff = max_backoff
        self._rescan_interval = rescan_interval
        self._isolate_after = isolate_after
        # (segment name, frame index) -> failed replays of that batch in a row.
        self._frame_failures: dict[tuple[str, int], int] = {}
        # segment name -> its leading batches already committed (a retry skips them).
        self._frames_done: dict[str, int] = {}
        self.stats = RecorderStats()
        self._was_down = False  # only a database seen away can come "back"

        self._send, self._receive = trio.open_memory_channel[Sequence[Record]](queue_size)
        self._overflow: list[Sequence[Record]] = []
        self._overflow_ready = trio.Event()
        self._replay_wanted = trio.Event()
        self._initial_pass_done = trio.Event()
        self._spool_lock = trio.Lock()
        self._batch: list[Record] = []
        self._waiting_rows = 0  # rows in the channel (record() adds, the collector takes)
        self._batch_full = trio.Event()  # _waiting_rows reached a batch, or the channel closed
        self._in_flight: list[Record] | None = None
        self._started = False
        self._closed = False
        self._done = trio.Event()
        # Called after a spool segment was replayed: it may hold interceptions a
        # dead process left in_progress (services: Instance.sweep_soon).
        self.on_replayed: Callable[[], None] | None = None
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder = msgspec.msgpack.Decoder(list[Record])
        self._unlogged_losses = 0
        self._loss_reason = ""
        self._losing = trio.Event()  # set while losses go on (the summary loop runs)
        self._watch_interval = watch_interval
        self._min_free_bytes = min_free_bytes
        self._spool_error: str | None = None  # the last spool write or probe failed: why
        self._watch_wanted = trio.Event()
        self._unrecordable_since: float | None = None
        self._last_free_warning = -math.inf

    # --- the hot path ------------------------------------------------------------------------

    def record(self, records: Sequence[Record]) -> None:
        """Accept one interception's records. Never blocks, never awaits.

        Do not mutate ``records`` afterwards; it is queued as given.
        """
        count = len(records)
        if not count:
            return
        self.stats.accepted += count
        if self._closed:
            # Shutdown has passed: nothing will drain the queues any more.
            self._spool_synchronously(records)
            return
        try:
            self._send.send_nowait(records)
            # The collector sleeps through a batch's flush interval instead of
            # waking for every interception: it is woken early only when a
            # whole batch is waiting.
            self._waiting_rows += count
            if self._waiting_rows + len(self._batch) >= self._batch_size:
                self._batch_full.set()
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            # The writer is behind, or shutting down: the overflow goes to the
            # spool directly (and is drained once more before the end).
            if len(self._overflow) >= self._queue_size:
                self._lose(count, "the recorder's queue and its overflow are full")
                return
            self._overflow.append(records)
            self._overflow_ready.set()
        self.stats.queued += count

    # --- lifetime ----------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Started and not yet finished (``/readyz``)."""
        return self._started and not self._done.is_set()

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """The recorder nursery. Returns after ``aclose()`` has drained everything;
        if cancelled, spools whatever is still in memory before it returns."""
        if self._started:
            raise RuntimeError("Recorder.run() may be started once")
        self._started = True
        try:
            async with trio.open_nursery() as nursery:
                if self._dsn is not None:
                    nursery.start_soon(self._keep_database_open, self._dsn)
                nursery.start_soon(self._replay_loop)
                nursery.start_soon(self._spool_overflow_loop)
                nursery.start_soon(self._loss_summary_loop)
                nursery.start_soon(self._watch_loop)
                if self._retention is not None:
                    nursery.start_soon(self._retention_loop, self._retention)
                task_status.started()
                # A spool left by an earlier run is replayed before new batches
                # are written (they wait in the channel meanwhile).
                await self._initial_pass_done.wait()
                await self._collect()
                await self._spool_overflow()
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await self._spool_leftovers()
            self._done.set()
            self._log_losses()
            if self.stats.lost:
                log.error("recorder: %d row(s) were lost in this run", self.stats.lost)

    async def aclose(self) -> None:
        """Graceful shutdown: stop accepting, write or spool everything queued."""
        self._send.close()
        self._batch_full.set()  # the collector need not sleep out its interval
        if self._started:
            await self._done.wait()
        else:
            with trio.CancelScope(shield=True):
                await self._spool_leftovers()

    # --- collecting and writing --------------------------------------------------------------

    async def _collect(self) -> None:
        """Batch the channel: flush at batch_size rows or flush_interval, whichever first.

        One wake-up per batch, not per ``record()``: the first records of a
        batch wake the collector, which then sleeps until the flush interval
        has passed (or ``record()`` signals a whole batch waiting, or the
        channel closes) and takes everything the channel holds at once.
        """
        receive = self._receive
        while True:
            try:
                first = await receive.receive()
            except trio.EndOfChannel:
                break
            self._waiting_rows -= len(first)
            self._batch.extend(first)
            deadline = trio.current_time() + self._flush_interval
            closed = False
            while len(self._batch) < self._batch_size:
                closed = self._take_waiting()
                if closed or len(self._batch) >= self._batch_size:
                    break
                if trio.current_time() >= deadline:
                    break
                with trio.move_on_at(deadline):
                    await self._batch_full.wait()
                self._batch_full = trio.Event()
            await self._flush()
            if closed:
                break
        if self._batch:
            await self._flush()

    def _take_waiting(self) -> bool:
        """Move what the channel holds into the batch (up to its size); True once it is closed."""
        receive = self._receive
        while len(self._batch) < self._batch_size:
            try:
                item = receive.receive_nowait()
            except trio.WouldBlock:
                return False
            except trio.EndOfChannel:
                return True
            self._waiting_rows -= len(item)
            self._batch.extend(item)
        return False

    async def _flush(self) -> None:
        batch, self._batch = self._batch, []
        self._in_flight = batch
        await self._store(batch)
        self._in_flight = None

    async def _store(self, batch: list[Record]) -> None:
        if self.stats.database_up and self._db is not None:
            try:
                with trio.fail_after(self._write_timeout):
                    written, rejected = await write_batch_isolating(self._db, batch)
            except Exception as exc:
                self._database_down(exc)
            else:
                self._count_written(written, rejected)
                self.stats.queued -= len(batch)
                return
        await self._spool_batch(batch)
        self.stats.queued -= len(batch)

    def _count_written(self, written: int, rejected: list[Record]) -> None:
        self.stats.written += written
        self.stats.batches += 1
        if rejected:
            self.stats.rejected += len(rejected)
            log.error("recorder: PostgreSQL rejected %d invalid record(s)", len(rejected))

    def _database_down(self, exc: BaseException) -> None:
        if self.stats.database_up:
            reason = "timed out" if isinstance(exc, trio.TooSlowError) else repr(exc)
            log.warning(
                "recorder: PostgreSQL unavailable (%s); spooling records to %s",
                reason,
                self.spool_dir,
            )
        self.stats.database_up = False
        self._was_down = True
        self._replay_wanted.set()
        self._watch_wanted.set()  # can the spool take what PostgreSQL does not?

    # --- the spool ---------------------------------------------------------------------------

    async def _spool_batch(self, batch: Sequence[Record]) -> None:
        payload = self._encoder.encode(batch)
        try:
            async with self._spool_lock:
                await trio.to_thread.run_sync(self._spool.append, payload)
        except OSError as exc:
            self._spool_failed(str(exc))
            self._lose(len(batch), f"the spool in {self.spool_dir} cannot be written: {exc}")
            return
        self._spool_error = None
        self._update_recordable()
        self.stats.spooled += len(batch)
        self._replay_wanted.set()

    async def _spool_overflow_loop(self) -> None:
        while True:
            await self._overflow_ready.wait()
            await self._spool_overflow()

    async def _spool_overflow(self) -> None:
        self._overflow_ready = trio.Event()
        pending, self._overflow = self._overflow, []
        rows = [record for records in pending for record in records]
        for start in range(0, len(rows), self._batch_size):
            chunk = rows[start : start + self._batch_size]
            await self._spool_batch(chunk)
            self.stats.queued -= len(chunk)

    async def _spool_leftovers(self) -> None:
        """Everything still in memory goes to the spool (shutdown or cancellation)."""
        self._send.close()  # from now on record() puts records in the overflow
        while True:
            rows: list[Record] = []
            if self._in_flight is not None:
                rows.extend(self._in_flight)  # may also have committed: ids dedupe
                self._in_flight = None
            rows.extend(self._batch)
            self._batch = []
            while True:
                try:
                    rows.extend(self._receive.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
            for records in self._overflow:
                rows.extend(records)
            self._overflow = []
            if not rows:
                break
            # record() may add to the overflow while these awaits run: loop.
            for start in range(0, len(rows), self._batch_size):
                await self._spool_batch(rows[start : start + self._batch_size])
        # Nothing in memory, and no checkpoint since we looked.
        self._closed = True
        self.stats.queued = 0
        async with self._spool_lock:
            await trio.to_thread.run_sync(self._spool.close)

    def _spool_synchronously(self, records: Sequence[Record]) -> None:
        # Only after shutdown: a blocking write beats losing the records.
        try:
            self._spool.append(self._encoder.encode(records))
            self._spool.rotate()  # closed at once: a later run (or process) replays it
        except OSError as exc:
            self._lose(len(records), f"the spool in {self.spool_dir} cannot be written: {exc}")
            return
        self.stats.spooled += len(records)

    def _lose(self, count: int, why: str) -> None:
        """Count ``count`` rows as lost; the log says so in the same unit (rows)."""
        self.stats.lost += count
        self._unlogged_losses += count
        self._loss_reason = why
        if self._done.is_set():
            self._log_losses()  # after the end (record() spools synchronously): no summary task
        elif not self._losing.is_set():
            # The first loss after a quiet spell is logged at once; the ones that
            # follow are summed up every LOSS_SUMMARY_INTERVAL (_loss_summary_loop).
            self._losing.set()
            self._log_losses()

    def _log_losses(self) -> None:
        if not self._unlogged_losses:
            return
        log.error(
            "recorder: LOST %d row(s) (%d lost since start, as relay_recorder_lost_events "
            "counts): %s",
            self._unlogged_losses,
            self.stats.lost,
            self._loss_reason,
        )
        self._unlogged_losses = 0

    async def _loss_summary_loop(self) -> None:
        while True:
            await self._losing.wait()
            await trio.sleep(LOSS_SUMMARY_INTERVAL)
            if self._unlogged_losses:
                self._log_losses()  # losses went on: one line for the interval
            else:
                self._losing = trio.Event()  # a quiet interval ends the spell

    # --- can usage be recorded at all? --------------------------------------------------------

    @property
    def cannot_record(self) -> bool:
        """True while usage can go nowhere: PostgreSQL away and the spool unwritable."""
        return not self.stats.database_up and self._spool_error is not None

    def _spool_failed(self, why: str) -> None:
        self._spool_error = why
        self._update_recordable()

    def _update_recordable(self) -> None:
        if self.cannot_record:
            if self._unrecordable_since is None:
                self._unrecordable_since = time.monotonic()
                log.error(
                    "recorder: usage cannot be recorded: PostgreSQL is away and the spool in %s "
                    "cannot be written (%s)",
                    self.spool_dir,
                    self._spool_error,
                )
        elif self._unrecordable_since is not None:
            log.warning(
                "recorder: usage can be recorded again (after %.0fs)",
                time.monotonic() - self._unrecordable_since,
            )
            self._unrecordable_since = None

    async def _watch_loop(self) -> None:
        """Keep ``cannot_record`` current and warn before the spool's disk is full."""
        # Until the first replay pass, database_up is False even with PostgreSQL
        # up: a probe now could call a read-only spool fatal for no reason.
        await self._initial_pass_done.wait()
        next_free_check = trio.current_time()
        while True:
            if trio.current_time() >= next_free_check:
                await self._check_free_space()
                next_free_check = trio.current_time() + FREE_SPACE_CHECK_INTERVAL
            if self._watch_interval is not None:
                await self._check_database()
            if self._watch_interval is not None or self._spool_error is not None:
                if not self.stats.database_up:
                    error = await trio.to_thread.run_sync(probe_writable, self.spool_dir)
                    if error is None:
                        self._spool_error = None
                        self._update_recordable()
                    else:
                        self._spool_failed(error)
            self._update_recordable()
            self._watch_wanted = trio.Event()
            wait = self._watch_interval or FREE_SPACE_CHECK_INTERVAL
            if self._spool_error is not None:
                wait = min(wait, 1.0)  # notice a spool that works again soon
            with trio.move_on_after(wait):
                await self._watch_wanted.wait()

    async def _check_database(self) -> None:
        db = self._db
        if db is None:
            return
        try:
            # As slow as a write may be before the recorder spools instead.
            with trio.fail_after(self._write_timeout):
                await db.fetchval("SELECT 1")
        except Exception as exc:
            self._database_down(exc)
        # Coming back is the replay loop's to say (the spool is replayed first).

    async def _check_free_space(self) -> None:
        free = await trio.to_thread.run_sync(free_bytes, self.spool_dir)
        if free is None or free >= self._min_free_bytes:
            return
        now = time.monotonic()
        if now - self._last_free_warning >= FREE_SPACE_WARNING_INTERVAL:
            self._last_free_warning = now
            log.warning(
                "recorder: only %d MiB free for the spool in %s (warning below %d MiB): while "
                "PostgreSQL is away, usage that does not fit is lost",
                free // (1024 * 1024),
                self.spool_dir,
                self._min_free_bytes // (1024 * 1024),
            )

    # --- replaying ---------------------------------------------------------------------------

    async def _replay_loop(self) -> None:
        self._replay_wanted.set()  # a spool from an earlier run, if any
        backoff = 0.05
        while True:
            with trio.move_on_after(self._rescan_interval):
                await self._replay_wanted.wait()
            self._replay_wanted = trio.Event()
            failures = 0
            while True:
                try:
                    await self._replay_pass()
                except Exception as exc:
                    failures += 1
                    self._database_down(exc)
                    self._log_replay_failure(exc, failures, backoff)
                    self._initial_pass_done.set()  # new records go to the spool meanwhile
                    await trio.sleep(backoff)
                    backoff = min(backoff * 2, self._max_backoff)
                    continue
                backoff = 0.05
                break

    def _log_replay_failure(self, exc: Exception, failures: int, backoff: float) -> None:
        if isinstance(exc, ReplayFailure):
            # PostgreSQL answers, yet this batch fails: say which, and why, every time.
            log.warning(
                "recorder: replaying spooled %s failed (%s time(s) in a row): %r; retrying in %.2g s%s",
                f"{exc.segment} batch {exc.frame}",
                exc.attempts,
                exc.cause,
                backoff,
                ", then its records one by one" if exc.attempts >= self._isolate_after else "",
            )
        elif failures == 1:
            log.warning(
                "recorder: cannot replay the spool yet: %r; retrying with backoff (at most %g s)",
                exc,
                self._max_backoff,
            )
        else:
            log.debug("recorder: replay attempt %d failed: %r", failures, exc)

    async def _replay_pass(self) -> None:
        db = self._db
        if db is None:
            raise ConnectionError("no database connection yet")
        with trio.fail_after(self._write_timeout):
            await db.fetchval("SELECT 1")
        async with self._spool_lock:
            await trio.to_thread.run_sync(self._spool.rotate)
            segments = await trio.to_thread.run_sync(self._spool.claim)
        try:
            while segments:
                await self._replay_segment(db, segments[0])
                segments.pop(0)
        finally:
            for segment in segments:
                self._spool.release(segment)
        if self._was_down and not self.stats.database_up:
            log.info("recorder: PostgreSQL is back; writing directly again")
        self.stats.database_up = True
        self._initial_pass_done.set()

    async def _replay_segment(self, db: RecordingDatabase, segment: ClaimedSegment) -> None:
        decoded = await trio.to_thread.run_sync(segment.read)
        damaged = decoded.damaged
        done = self._frames_done.get(segment.path.name, 0)
        for index, frame in enumerate(decoded.frames):
            if index < done:
                continue
            try:
                batch = self._decoder.decode(frame)
            except msgspec.DecodeError as exc:
                log.error("recorder: undecodable frame in %s: %s", segment.path, exc)
                damaged = True
                continue
            key = (segment.path.name, index)
            try:
                if self._frame_failures.get(key, 0) >= self._isolate_after:
                    written, rejected = await self._replay_one_by_one(db, batch)
                else:
                    with trio.fail_after(self._write_timeout):
                        written, rejected = await write_batch_isolating(db, batch)
            except Exception as exc:
                await self._probe(db)  # the database is away: not this batch's fault
                attempts = self._frame_failures.get(key, 0) + 1
                self._frame_failures[key] = attempts
                raise ReplayFailure(segment.path.name, index, attempts, exc) from exc
            self._frame_failures.pop(key, None)
            self._frames_done[segment.path.name] = index + 1
            self._count_written(written, rejected)
            self.stats.replayed += written
        self._frames_done.pop(segment.path.name, None)
        if damaged:
            kept = await trio.to_thread.run_sync(self._spool.quarantine, segment)
            log.error(
                "recorder: spool segment damaged (%s); replayed what was readable, kept it as %s",
                decoded.problem or "undecodable frames",
                kept,
            )
        else:
            if decoded.problem:
                log.warning("recorder: %s in %s (a crash mid-write)", decoded.problem, segment.path)
            await trio.to_thread.run_sync(self._spool.remove, segment)
            log.info("recorder: replayed spool segment %s", segment.path.name)
        if self.on_replayed is not None:
            self.on_replayed()

    async def _probe(self, db: RecordingDatabase) -> None:
        with trio.fail_after(self._write_timeout):
            await db.fetchval("SELECT 1")

    async def _replay_one_by_one(
        self, db: RecordingDatabase, batch: list[Record]
    ) -> tuple[int, list[Record]]:
        """A batch that failed repeatedly: halves, down to single records; a record
        that fails alone while PostgreSQL answers is rejected (logged), the rest written.

        As ``write_batch_isolating`` does for the rows PostgreSQL refuses, but
        for any error (a bug, a value the driver cannot encode), so that one
        bad record never holds up the spool behind it.
        """
        try:
            with trio.fail_after(self._write_timeout):
                return await write_batch_isolating(db, batch)
        except Exception as exc:
            if len(batch) > 1:
                middle = len(batch) // 2
                w1, r1 = await self._replay_one_by_one(db, batch[:middle])
                w2, r2 = await self._replay_one_by_one(db, batch[middle:])
                return w1 + w2, r1 + r2
            await self._probe(db)  # raises while the database is away: keep the record
            log.error(
                "recorder: a spooled record fails on its own (%r), set aside: %r", exc, batch[0]
            )
            return 0, batch

    # --- the database connection and retention -----------------------------------------------

    async def _keep_database_open(self, dsn: str) -> None:
        from relay.db.bridge import Database

        backoff = 0.05
        while True:
            try:
                async with Database.open(dsn) as db:
                    self._db = db
                    self._replay_wanted.set()
                    await trio.sleep_forever()
            except Exception as exc:
                self._db = None
                self._database_down(exc)
                await trio.sleep(backoff)
                backoff = min(backoff * 2, self._max_backoff)

    async def _retention_loop(self, retention: float) -> None:
        from relay.record.retention import run_retention

        await run_retention(lambda: self._db, retention)
