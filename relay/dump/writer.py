"""Writes dumps off the hot path (see ``relay.dump``).

The hot path only calls cheap, synchronous, non-blocking methods: each puts a
small tuple on a bounded trio channel and returns. ``DumpWriter.run`` (a task in
the server's nursery) takes batches off the channel and writes them in a worker
thread, so the event loop never waits on the disk. A full channel drops the
rest of that interception's dump (counted); an unwritable directory or a full
disk is one warning and a metric, and the stream goes on untouched.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import trio

from relay.dump.files import (
    PASSTHROUGH_DIR,
    SUFFIX_CHUNKS,
    SUFFIX_REQUEST,
    SUFFIX_RESPONSE,
    ChunkLine,
    EndLine,
    Header,
    RequestLine,
    ResponseLine,
    format_request_head,
    format_response_head,
    line_encoder,
    safe_model_dir,
)

if TYPE_CHECKING:
    from relay.metrics import Metrics

log = logging.getLogger("relay.dump")

# -- the hot-path side ---------------------------------------------------------------------------

# Operations on the channel: (kind, handle, payload). Kinds:
_REQUEST = 0  # payload: (method, path, headers, body, sidecar line)
_REQUEST_MORE = 1  # payload: bytes appended to the request body (passthrough streams)
_RESPONSE = 2  # payload: (status, headers, t)
_CHUNK = 3  # payload: (data, t)
_END = 4  # payload: EndLine


class DumpHandle:
    """One exchange being dumped. Every method is synchronous and never blocks."""

    __slots__ = ("_body_bytes", "_finished", "_started", "_writer", "dead", "failed", "stem")

    def __init__(self, writer: DumpWriter, stem: Path) -> None:
        self._writer = writer
        self.stem = stem  # the three files are stem + suffix
        self._started = time.monotonic()
        self._body_bytes = 0
        self._finished = False
        # Set when data was dropped or a write failed: the rest is skipped.
        self.dead = False
        # Set by the writer thread when a write failed: queued data is skipped too.
        self.failed = False

    def request_chunk(self, data: bytes) -> None:
        """More request body (a passthrough body that streams through)."""
        if data and not self.dead:
            self._writer._put(self, _REQUEST_MORE, data)

    def response_start(self, status: int, headers: Iterable[Header]) -> None:
        if not self.dead:
            t = time.monotonic() - self._started
            self._writer._put(self, _RESPONSE, (status, list(headers), t))

    def response_chunk(self, data: bytes) -> None:
        """One upstream chunk, as relayed; its size and arrival time go to the sidecar."""
        if data and not self.dead:
            self._body_bytes += len(data)
            self._writer._put(self, _CHUNK, (data, time.monotonic() - self._started))

    def finish(self) -> None:
        """The exchange is over (call it from ``finally``; calling it twice is harmless)."""
        if self._finished:
            return
        self._finished = True
        t = round(time.monotonic() - self._started, 6)
        end = EndLine(t=t, complete=not self.dead, bytes=self._body_bytes)
        # Even a dead handle tries to mark its sidecar incomplete.
        self._writer._put(self, _END, end, final=True)
        self.dead = True


class DumpStats(msgspec.Struct):
    started: int = 0  # exchanges begun
    dropped: int = 0  # exchanges whose dump lost data because the queue was full
    failed: int = 0  # exchanges whose dump could not be written (disk full, permissions)


class DumpWriter:
    """Owns the dump directory; ``run`` is its writer task (see the module doc)."""

    def __init__(
        self,
        base_dir: Path | str | None,
        metrics: Metrics | None = None,
        *,
        queue_size: int = 8192,
        max_queued_bytes: int = 64 * 1024 * 1024,
        batch_size: int = 512,
    ) -> None:
        self.base_dir = Path(base_dir) if base_dir else None
        self.metrics = metrics
        self.stats = DumpStats()
        self._send, self._receive = trio.open_memory_channel[tuple[int, DumpHandle, Any]](
            queue_size
        )
        self._max_queued_bytes = max_queued_bytes
        self._queued_bytes = 0  # only touched on the event loop's thread
        self._batch_size = batch_size
        self._made_dirs: set[Path] = set()  # writer thread only
        self._warned = False
        self._drained = trio.Event()
        self._running = False

    @property
    def enabled(self) -> bool:
        return self.base_dir is not None

    def begin(
        self,
        provider_name: str,
        model: str | None,
        interception_id: uuid.UUID | str,
        method: str,
        path_with_query: str,
        headers: Iterable[Header],
        body: bytes,
        *,
        request_id: str | None = None,
    ) -> DumpHandle | None:
        """Start dumping one intercepted exchange (None when dumping is off)."""
        if self.base_dir is None:
            return None
        unix_ms = time.time_ns() // 1_000_000
        stem = (
            self.base_dir / provider_name / safe_model_dir(model) / f"{unix_ms}-{interception_id}"
        )
        meta = RequestLine(
            unix_ms=unix_ms,
            interception_id=str(interception_id),
            provider=provider_name,
            model=model,
            request_id=request_id,
        )
        return self._begin(stem, (method, path_with_query, list(headers), body, meta))

    def begin_passthrough(
        self,
        provider_name: str,
        method: str,
        path_with_query: str,
        headers: Iterable[Header],
        body: bytes = b"",
        *,
        request_id: str | None = None,
    ) -> DumpHandle | None:
        """Start dumping a passthrough exchange, under ``<provider>/passthrough/``."""
        if self.base_dir is None:
            return None
        unix_ms = time.time_ns() // 1_000_000
        exchange_id = uuid.uuid4()
        stem = self.base_dir / provider_name / PASSTHROUGH_DIR / f"{unix_ms}-{exchange_id}"
        meta = RequestLine(
            unix_ms=unix_ms,
            interception_id=str(exchange_id),
            provider=provider_name,
            model=None,
            request_id=request_id,
        )
        return self._begin(stem, (method, path_with_query, list(headers), body, meta))

    def _begin(self, stem: Path, payload: Any) -> DumpHandle:
        handle = DumpHandle(self, stem)
        self.stats.started += 1
        self._put(handle, _REQUEST, payload)
        return handle

    def _put(self, handle: DumpHandle, kind: int, payload: Any, *, final: bool = False) -> None:
        size = _payload_size(kind, payload)
        if self._queued_bytes + size > self._max_queued_bytes:
            self._drop(handle, final)
            return
        try:
            self._send.send_nowait((kind, handle, payload))
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            self._drop(handle, final)
            return
        self._queued_bytes += size

    def _drop(self, handle: DumpHandle, final: bool) -> None:
        if not handle.dead and not final:
            handle.dead = True
            self.stats.dropped += 1
            if self.metrics is not None:
                self.metrics.dump_dropped()

    # -- the writer task -----------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Write queued dump data until ``aclose`` (or cancellation)."""
        self._running = True
        task_status.started()
        try:
            async with self._receive:
                while True:
                    try:
                        batch = [await self._receive.receive()]
                    except trio.EndOfChannel:
                        return
                    while len(batch) < self._batch_size:
                        try:
                            batch.append(self._receive.receive_nowait())
                        except (trio.WouldBlock, trio.EndOfChannel):
                            break
                    failures, written = await trio.to_thread.run_sync(self._write_batch, batch)
                    self._queued_bytes -= sum(_payload_size(k, p) for k, _, p in batch)
                    self._after_batch(failures, written)
        finally:
            self._drained.set()

    async def aclose(self) -> None:
        """Stop accepting dump data and wait until what is queued is on disk."""
        self._send.close()
        if self._running:
            await self._drained.wait()

    def _after_batch(self, failures: list[tuple[DumpHandle, str]], written: int) -> None:
        if not failures:
            if written:
                self._warned = False  # writing works again: a later failure deserves a warning
            return
        for _handle, _reason in failures:
            self.stats.failed += 1
            if self.metrics is not None:
                self.metrics.dump_write_failure()
        if not self._warned:
            self._warned = True
            log.warning(
                "dump: cannot write to %s (%s); dumps are skipped until it works again, "
                "streams are not affected",
                self.base_dir,
                failures[0][1],
            )

    def _write_batch(
        self, batch: list[tuple[int, DumpHandle, Any]]
    ) -> tuple[list[tuple[DumpHandle, str]], int]:
        """Append a batch to the files (worker thread): (handle, why) per failure, and
        how many files were written."""
        # Group by file, keeping each file's order: one open per file per batch.
        files: dict[Path, tuple[str, list[bytes], DumpHandle]] = {}

        def add(path: Path, data: bytes, handle: DumpHandle, create: bool = False) -> None:
            entry = files.get(path)
            if entry is None or create:
                files[path] = ("wb" if create else "ab", [data], handle)
            else:
                entry[1].append(data)

        for kind, handle, payload in batch:
            if handle.failed:
                continue
            stem = str(handle.stem)
            if kind == _CHUNK:
                data, t = payload
                add(Path(stem + SUFFIX_RESPONSE), data, handle)
                line = line_encoder.encode(ChunkLine(t=round(t, 6), size=len(data)))
                add(Path(stem + SUFFIX_CHUNKS), line + b"\n", handle)
            elif kind == _REQUEST:
                method, path_with_query, headers, body, meta = payload
                head = format_request_head(method, path_with_query, headers)
                add(Path(stem + SUFFIX_REQUEST), head, handle, create=True)
                add(Path(stem + SUFFIX_REQUEST), body, handle)  # not joined: no copy
                add(Path(stem + SUFFIX_CHUNKS), line_encoder.encode(meta) + b"\n", handle, True)
            elif kind == _REQUEST_MORE:
                add(Path(stem + SUFFIX_REQUEST), payload, handle)
            elif kind == _RESPONSE:
                status, headers, t = payload
                head = format_response_head(status, headers)
                add(Path(stem + SUFFIX_RESPONSE), head, handle, create=True)
                line = line_encoder.encode(ResponseLine(t=round(t, 6), status=status))
                add(Path(stem + SUFFIX_CHUNKS), line + b"\n", handle)
            elif kind == _END:
                add(Path(stem + SUFFIX_CHUNKS), line_encoder.encode(payload) + b"\n", handle)

        failures: list[tuple[DumpHandle, str]] = []
        written = 0
        for path, (mode, parts, handle) in files.items():
            if handle.failed:
                continue
            try:
                self._write_file(path, mode, parts)
                written += 1
            except OSError as exc:
                # The rest of this exchange would be inconsistent: skip it all.
                handle.failed = True
                handle.dead = True
                failures.append((handle, f"{type(exc).__name__}: {exc.strerror or exc}"))
        return failures, written

    def _write_file(self, path: Path, mode: str, parts: list[bytes]) -> None:
        directory = path.parent
        if directory not in self._made_dirs:
            self._make_private_dirs(directory)
            self._made_dirs.add(directory)
        try:
            _write_private(path, mode, parts)
        except FileNotFoundError:
            # The directory was removed while the relay ran: make it again, once.
            self._make_private_dirs(directory)
            _write_private(path, mode, parts)

    def _make_private_dirs(self, directory: Path) -> None:
        """``directory`` and its parents up to the base, each 0700 whatever the umask.

        Dumps hold prompts and answers. ``os.makedirs`` gives its mode to the
        last directory only, so each level is made (or, made 0755 by an
        older relay, set) here. The base itself is the operator's: it is
        made 0700 when missing, never changed when it exists.
        """
        assert self.base_dir is not None
        base = self.base_dir
        if not base.is_dir():
            os.makedirs(base, mode=0o700, exist_ok=True)
        for level in reversed([directory, *directory.parents]):
            if level == base or base not in level.parents:
                continue
            try:
                os.mkdir(level, 0o700)
            except FileExistsError:
                pass
            if os.stat(level).st_mode & 0o077:
                os.chmod(level, 0o700)


def _write_private(path: Path, mode: str, parts: list[bytes]) -> None:
    """Write or append ``parts`` to a file created 0600 (the umask can only narrow it)."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if mode == "wb" else os.O_APPEND)
    fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0), 0o600)
    with open(fd, "wb", closefd=True) as f:
        f.writelines(parts)  # a multi-megabyte body is written, not copied


def _payload_size(kind: int, payload: Any) -> int:
    if kind == _CHUNK:
        return len(payload[0])
    if kind == _REQUEST:
        return len(payload[3]) + 512
    if kind == _REQUEST_MORE:
        return len(payload)
    return 128
