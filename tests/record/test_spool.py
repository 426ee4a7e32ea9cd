"""The spool's frame format and segment handling (no database involved)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.record.spool import SEGMENT_MAGIC, Spool, decode_frames, encode_frame


@given(st.lists(st.binary(max_size=300), max_size=8), st.data())
def test_any_truncation_yields_the_whole_frames_before_it(payloads: list[bytes], data) -> None:  # type: ignore[no-untyped-def]
    encoded = b"".join(encode_frame(p) for p in payloads)
    assert decode_frames(encoded).frames == payloads
    assert decode_frames(encoded).problem is None
    cut = data.draw(st.integers(0, len(encoded)))
    decoded = decode_frames(encoded[:cut])
    # Exactly the frames that fit whole before the cut; a torn tail is not damage.
    ends = [sum(len(encode_frame(p)) for p in payloads[: i + 1]) for i in range(len(payloads))]
    whole = sum(1 for end in ends if end <= cut)
    assert decoded.frames == payloads[:whole]
    assert not decoded.damaged
    assert (decoded.problem is None) == (cut in (0, *ends))


def test_flipped_byte_is_damage() -> None:
    encoded = bytearray(encode_frame(b"first") + encode_frame(b"second"))
    encoded[-1] ^= 0xFF
    decoded = decode_frames(bytes(encoded))
    assert decoded.frames == [b"first"]
    assert decoded.damaged and decoded.problem and "checksum" in decoded.problem


def test_append_claim_remove(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.append(b"a")
    spool.append(b"b")
    assert spool.current_frames == 2
    # The open segment is never handed out for replay.
    assert spool.claim() == []
    spool.rotate()
    spool.append(b"c")
    (segment,) = spool.claim()
    assert segment.read().frames == [b"a", b"b"]
    spool.remove(segment)
    assert not segment.path.exists()
    spool.rotate()
    (segment,) = spool.claim()
    assert segment.read().frames == [b"c"]
    spool.release(segment)
    assert segment.path.exists()  # kept for a later attempt
    assert spool.pending_segments() == 1


def test_segments_held_by_another_process_are_skipped(tmp_path: Path) -> None:
    # Two Spool objects on one directory stand for two relay processes: flock
    # conflicts between separate open files, as between processes.
    writer = Spool(tmp_path)
    writer.append(b"in use")
    other = Spool(tmp_path)
    assert other.claim() == []  # the writer holds its open segment
    writer.rotate()
    (claimed,) = other.claim()
    assert writer.claim() == []  # now the other process holds it
    other.remove(claimed)
    assert list(tmp_path.iterdir()) == []


def test_rotates_at_segment_size(tmp_path: Path) -> None:
    spool = Spool(tmp_path, segment_bytes=50)  # every frame fills a segment
    for i in range(5):
        spool.append(bytes([i]) * 60)
    segments = spool.claim()
    assert len(segments) == 5
    assert [s.read().frames for s in segments] == [[bytes([i]) * 60] for i in range(5)]
    for s in segments:
        spool.release(s)


def test_torn_tail_and_damage_on_disk(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.append(b"whole")
    spool.rotate()
    (path,) = tmp_path.glob("*.spool")
    with open(path, "ab") as f:
        f.write(encode_frame(b"half written")[:9])  # a crash mid-write
    (segment,) = spool.claim()
    decoded = segment.read()
    assert decoded.frames == [b"whole"] and decoded.problem and not decoded.damaged
    spool.release(segment)

    with open(path, "r+b") as f:
        f.seek(len(SEGMENT_MAGIC) + 8)
        f.write(b"W")  # change the payload under its checksum
    (segment,) = spool.claim()
    assert segment.read().damaged
    kept = spool.quarantine(segment)
    assert kept.suffix == ".corrupt" and kept.exists()
    assert spool.claim() == []


def test_unwritable_spool_raises(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    spool = Spool(blocker / "spool")
    with pytest.raises(OSError):
        spool.append(b"x")


def test_segment_only_appears_complete(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.append(b"x")
    names = os.listdir(tmp_path)
    assert len(names) == 1 and names[0].endswith(".spool")
    with open(tmp_path / names[0], "rb") as f:
        assert f.read(len(SEGMENT_MAGIC)) == SEGMENT_MAGIC
