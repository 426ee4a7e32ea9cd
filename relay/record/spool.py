"""The recorder's on-disk spool: where batches wait while PostgreSQL is away.

A spool directory holds segment files, ``<time ns>-<pid>-<seq>.spool``. Each
starts with an 8-byte magic and then holds frames, one per batch::

    u32 big-endian payload length | u32 big-endian CRC-32 of the payload | payload

The payload is the batch as msgspec msgpack (see ``relay.record.recorder``).
Segments are append-only and fsync'd per frame. A crash can leave at most a
torn last frame, which the reader detects (length or CRC) and drops.

Several relay processes may share one data directory. A process holds an
exclusive ``flock`` on the segment it is writing and on each segment it is
replaying, so another process never replays (or deletes) a segment in use.
A segment appears under its final name only once it is locked.

Everything here is blocking file I/O: the recorder calls it from a worker
thread (``trio.to_thread.run_sync``), never from the event loop.
"""

from __future__ import annotations

import fcntl
import logging
import os
import struct
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

SEGMENT_MAGIC = b"RLYSPL01"
SEGMENT_SUFFIX = ".spool"
CORRUPT_SUFFIX = ".corrupt"
FRAME_HEADER = struct.Struct(">II")


def encode_frame(payload: bytes) -> bytes:
    return FRAME_HEADER.pack(len(payload), zlib.crc32(payload)) + payload


@dataclass(frozen=True)
class DecodedFrames:
    frames: list[bytes]
    end: int  # offset just past the last whole, valid frame
    problem: str | None = None  # why decoding stopped before the end of the data
    # A torn last frame is what a crash mid-write leaves; anything else
    # (checksum, magic) means the file was damaged and is kept aside.
    damaged: bool = False


def decode_frames(data: bytes, start: int = 0) -> DecodedFrames:
    """Split ``data[start:]`` into frame payloads; stops at the first bad frame."""
    frames: list[bytes] = []
    view = memoryview(data)
    offset = start
    header_size = FRAME_HEADER.size
    while offset < len(data):
        if len(data) - offset < header_size:
            return DecodedFrames(frames, offset, "torn frame header at the end")
        length, crc = FRAME_HEADER.unpack_from(data, offset)
        body_start = offset + header_size
        body_end = body_start + length
        if body_end > len(data):
            return DecodedFrames(frames, offset, "torn frame at the end")
        payload = bytes(view[body_start:body_end])
        if zlib.crc32(payload) != crc:
            return DecodedFrames(frames, offset, f"checksum mismatch at offset {offset}", True)
        frames.append(payload)
        offset = body_end
    return DecodedFrames(frames, offset)


@dataclass
class ClaimedSegment:
    """A closed segment this process holds (flock) while it replays it."""

    path: Path
    fd: int

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)  # releases the flock

    def read(self) -> DecodedFrames:
        os.lseek(self.fd, 0, os.SEEK_SET)
        chunks = []
        while chunk := os.read(self.fd, 1 << 20):
            chunks.append(chunk)
        data = b"".join(chunks)
        if not data.startswith(SEGMENT_MAGIC):
            return DecodedFrames([], 0, "not a relay spool segment (bad magic)", True)
        return decode_frames(data, len(SEGMENT_MAGIC))


class Spool:
    """Append batches to the current segment; hand closed segments to replay."""

    def __init__(self, directory: Path, *, segment_bytes: int = 16 * 1024 * 1024) -> None:
        self.directory = Path(directory)
        self.segment_bytes = segment_bytes
        self._fd: int | None = None
        self._path: Path | None = None
        self._size = 0
        self._seq = 0
        self.current_frames = 0  # frames in the open segment
        # Worker threads and, after the recorder's shutdown, the event loop's
        # own thread may both append.
        self._lock = threading.RLock()

    # --- writing ---------------------------------------------------------------------------

    def append(self, payload: bytes) -> None:
        """Write one frame and fsync it. Raises OSError (e.g. disk full)."""
        with self._lock:
            self._append(payload)

    def _append(self, payload: bytes) -> None:
        if self._fd is None:
            self._open_segment()
        assert self._fd is not None
        frame = encode_frame(payload)
        before = self._size
        try:
            _write_all(self._fd, frame)
            os.fsync(self._fd)
        except OSError:
            self._undo_partial(before)
            raise
        self._size += len(frame)
        self.current_frames += 1
        if self._size >= self.segment_bytes:
            self.rotate()

    def rotate(self) -> None:
        """Close the open segment, so that it can be replayed."""
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)  # releases the flock
            self._fd = None
            self._path = None
            self._size = 0
            self.current_frames = 0

    def close(self) -> None:
        self.rotate()

    def _open_segment(self) -> None:
        # Segments hold prompts: the directory is the relay's alone, whatever the umask.
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.directory.stat().st_mode & 0o077:
            os.chmod(self.directory, 0o700)
        self._seq += 1
        name = f"{time.time_ns():020d}-{os.getpid()}-{self._seq:06d}"
        temporary = self.directory / f".{name}.tmp"
        final = self.directory / f"{name}{SEGMENT_SUFFIX}"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            _write_all(fd, SEGMENT_MAGIC)
            os.fsync(fd)
            os.rename(temporary, final)
            _fsync_directory(self.directory)
        except OSError:
            os.close(fd)
            _unlink_quietly(temporary)
            raise
        self._fd, self._path, self._size = fd, final, len(SEGMENT_MAGIC)

    def _undo_partial(self, size: int) -> None:
        # A half-written frame would hide every later frame from the reader:
        # cut it off, or, if even that fails, end the segment here.
        assert self._fd is not None
        try:
            os.ftruncate(self._fd, size)
        except OSError:
            log.error("spool: could not truncate %s after a failed write", self._path)
            frames = self.current_frames
            self.rotate()
            self.current_frames = frames

    # --- replaying -------------------------------------------------------------------------

    def claim(self) -> list[ClaimedSegment]:
        """Every closed segment no process holds, oldest first, now held by us."""
        with self._lock:
            return self._claim()

    def _claim(self) -> list[ClaimedSegment]:
        if not self.directory.is_dir():
            return []
        claimed = []
        for path in sorted(self.directory.glob(f"*{SEGMENT_SUFFIX}")):
            if path == self._path:
                continue
            try:
                fd = os.open(path, os.O_RDWR)
            except FileNotFoundError:
                continue  # another process finished it meanwhile
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)  # being written or replayed elsewhere
                continue
            if os.fstat(fd).st_nlink == 0:
                os.close(fd)  # replayed and removed while we waited
                continue
            claimed.append(ClaimedSegment(path, fd))
        return claimed

    def remove(self, segment: ClaimedSegment) -> None:
        """The segment's rows are committed: delete it, then let go of it."""
        try:
            _unlink_quietly(segment.path)
            _fsync_directory(self.directory)
        finally:
            segment.close()

    def release(self, segment: ClaimedSegment) -> None:
        """Replay failed part-way: keep the segment for a later attempt."""
        segment.close()

    def quarantine(self, segment: ClaimedSegment) -> Path:
        """Keep a damaged segment aside (for a person to look at); never replay it again."""
        target = segment.path.with_suffix(CORRUPT_SUFFIX)
        try:
            os.rename(segment.path, target)
        finally:
            segment.close()
        return target

    def pending_segments(self) -> int:
        """Segment files in the directory (ours and other processes')."""
        if not self.directory.is_dir():
            return 0
        return sum(1 for _ in self.directory.glob(f"*{SEGMENT_SUFFIX}"))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


# --- health (blocking: call from a worker thread) ----------------------------------------

PROBE_BYTES = 4096


def probe_writable(directory: Path) -> str | None:
    """Whether a frame could be spooled now: None, or why not (the OSError).

    Creates the directory if need be, writes, fsyncs and removes a small file:
    what a read-only filesystem, a full disk or a missing permission refuse.
    """
    probe = Path(directory) / f".probe-{os.getpid()}-{threading.get_ident()}"
    try:
        Path(directory).mkdir(parents=True, exist_ok=True)
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            _write_all(fd, b"\0" * PROBE_BYTES)
            os.fsync(fd)
        finally:
            os.close(fd)
            _unlink_quietly(probe)
    except OSError as exc:
        return str(exc) or type(exc).__name__
    return None


def free_bytes(directory: Path) -> int | None:
    """Bytes free for this process on the filesystem that holds (or will hold) ``directory``."""
    path = Path(directory)
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize
