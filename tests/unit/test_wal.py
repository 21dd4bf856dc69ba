"""Write-ahead log: framing, replay, torn tails, corruption, group commit, rotation, reads,
segment format versions (1 and 2 in one log) and the record payloads of both formats."""

from __future__ import annotations

import os
import random
import threading
from pathlib import Path

import numpy as np
import pytest

from core.errors import CorruptionError, OutOfRange
from shard import records
from shard import wal as wal_mod
from shard.wal import HEADER_SIZE, FsyncPolicy, Record, Wal, WalOptions


def payload(seq: int) -> bytes:
    return f"record-{seq}-".encode() * (1 + seq % 7)


def open_wal(path: Path, options: WalOptions | None = None, start_seq: int = 1) -> tuple[Wal, list[tuple[int, bytes]]]:
    seen: list[tuple[int, bytes]] = []
    wal = Wal.open(path, options or WalOptions(), lambda s, v, p: seen.append((s, p)), start_seq=start_seq)
    return wal, seen


def open_wal_versions(path: Path, options: WalOptions | None = None) -> tuple[Wal, list[tuple[int, int, bytes]]]:
    seen: list[tuple[int, int, bytes]] = []
    wal = Wal.open(path, options or WalOptions(), lambda s, v, p: seen.append((s, v, p)))
    return wal, seen


def write_segment(directory: Path, first_seq: int, payloads: list[bytes], version: int) -> Path:
    """A segment as an older (or foreign) writer left it: header of ``version``, then records."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{first_seq:020d}.wal"
    frames = b"".join(wal_mod.encode_frame(first_seq + i, p) for i, p in enumerate(payloads))
    path.write_bytes(wal_mod._encode_header(first_seq, version) + frames)
    return path


def header_version(path: Path) -> int:
    return int.from_bytes(path.read_bytes()[4:8], "little")


def write_records(wal: Wal, count: int) -> list[int]:
    seqs = []
    for _ in range(count):
        seq = wal.write(payload(wal.next_seq))
        wal.sync(seq)
        seqs.append(seq)
    return seqs


def test_replay_returns_every_record_in_order(tmp_path: Path) -> None:
    wal, seen = open_wal(tmp_path)
    assert seen == []
    assert write_records(wal, 50) == list(range(1, 51))
    wal.close()
    wal, seen = open_wal(tmp_path)
    assert seen == [(s, payload(s)) for s in range(1, 51)]
    assert wal.next_seq == 51
    wal.close()


def test_rotation_keeps_sequence_across_segments(tmp_path: Path) -> None:
    wal, _ = open_wal(tmp_path, WalOptions(segment_bytes=300))
    write_records(wal, 40)
    wal.close()
    segments = sorted(tmp_path.glob("*.wal"))
    assert len(segments) > 5
    wal, seen = open_wal(tmp_path, WalOptions(segment_bytes=300))
    assert [s for s, _ in seen] == list(range(1, 41))
    wal.close()


@pytest.mark.parametrize("seed", range(3))
def test_torn_tail_at_random_offsets_keeps_whole_records(tmp_path: Path, seed: int) -> None:
    """Truncating the last segment anywhere keeps exactly the records wholly before the cut."""
    rng = random.Random(seed)
    base = tmp_path / "base"
    wal, _ = open_wal(base)
    write_records(wal, 30)
    wal.close()
    (segment,) = sorted(base.glob("*.wal"))
    data = segment.read_bytes()
    # record boundaries: end offset of each record
    ends = []
    pos = HEADER_SIZE
    while pos < len(data):
        length = int.from_bytes(data[pos : pos + 4], "little")
        pos += wal_mod.FRAME_OVERHEAD + length
        ends.append(pos)
    for trial in range(40):
        cut = rng.randrange(0, len(data) + 1)
        work = tmp_path / f"t{trial}"
        work.mkdir()
        (work / segment.name).write_bytes(data[:cut])
        wal, seen = open_wal(work)
        whole = sum(1 for end in ends if end <= cut)
        assert [s for s, _ in seen] == list(range(1, whole + 1)), f"cut at {cut}"
        assert all(p == payload(s) for s, p in seen)
        # the log is usable after the repair and the next record continues the sequence
        seq = wal.write(b"after")
        wal.sync(seq)
        assert seq == whole + 1
        wal.close()
        wal, seen = open_wal(work)
        assert [s for s, _ in seen] == list(range(1, whole + 2))
        assert seen[-1][1] == b"after"
        wal.close()


def test_bit_flip_in_last_segment_truncates_from_there(tmp_path: Path) -> None:
    wal, _ = open_wal(tmp_path)
    write_records(wal, 10)
    wal.close()
    (segment,) = sorted(tmp_path.glob("*.wal"))
    data = bytearray(segment.read_bytes())
    data[len(data) // 2] ^= 0x40
    segment.write_bytes(bytes(data))
    wal, seen = open_wal(tmp_path)
    assert 0 < len(seen) < 10
    assert [s for s, _ in seen] == list(range(1, len(seen) + 1))
    wal.close()


def test_damage_in_an_earlier_segment_refuses_to_open(tmp_path: Path) -> None:
    wal, _ = open_wal(tmp_path, WalOptions(segment_bytes=300))
    write_records(wal, 40)
    wal.close()
    first = sorted(tmp_path.glob("*.wal"))[0]
    data = bytearray(first.read_bytes())
    data[-3] ^= 0xFF
    first.write_bytes(bytes(data))
    with pytest.raises(CorruptionError, match="later segments exist"):
        open_wal(tmp_path, WalOptions(segment_bytes=300))


def test_damaged_header_refuses_to_open(tmp_path: Path) -> None:
    wal, _ = open_wal(tmp_path)
    write_records(wal, 3)
    wal.close()
    (segment,) = sorted(tmp_path.glob("*.wal"))
    data = bytearray(segment.read_bytes())
    data[5] ^= 0x01
    segment.write_bytes(bytes(data))
    with pytest.raises(CorruptionError, match="header"):
        open_wal(tmp_path)


def test_group_commit_shares_fsyncs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = 0
    real = os.fdatasync

    def counting(fd: int) -> None:
        nonlocal calls
        calls += 1
        real(fd)

    monkeypatch.setattr(os, "fdatasync", counting)
    wal, _ = open_wal(tmp_path)
    lock = threading.Lock()
    acked: list[int] = []

    def writer() -> None:
        for _ in range(50):
            seq = wal.write(b"x" * 100)
            wal.sync(seq)
            with lock:
                acked.append(seq)

    threads = [threading.Thread(target=writer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wal.close()
    assert sorted(acked) == list(range(1, 401))
    assert calls < 400, f"{calls} fsyncs for 400 concurrent writes: no group commit"
    _, seen = open_wal(tmp_path)
    assert len(seen) == 400


def test_interval_policy_syncs_in_background(tmp_path: Path) -> None:
    wal, _ = open_wal(tmp_path, WalOptions(fsync=FsyncPolicy.INTERVAL, fsync_interval_s=0.01))
    for _ in range(20):
        wal.write(b"y")
    deadline = threading.Event()
    for _ in range(200):
        if wal._synced_seq >= 20:
            break
        deadline.wait(0.01)
    assert wal._synced_seq >= 20
    wal.close()


def test_truncate_and_read_from(tmp_path: Path) -> None:
    wal, _ = open_wal(tmp_path)
    write_records(wal, 10)
    wal.rotate()
    write_records(wal, 10)
    wal.rotate()
    write_records(wal, 5)
    assert [r.seq for r in wal.read_from(8)] == list(range(8, 26))
    assert wal.truncate_before(11) == 1
    assert wal.first_seq == 11
    with pytest.raises(OutOfRange):
        list(wal.read_from(5))
    assert list(wal.read_from(24)) == [
        Record(24, wal_mod.VERSION, payload(24)),
        Record(25, wal_mod.VERSION, payload(25)),
    ]
    wal.close()
    wal, seen = open_wal(tmp_path)
    assert [s for s, _ in seen] == list(range(11, 26))
    wal.close()


def test_start_seq_for_an_empty_log(tmp_path: Path) -> None:
    wal, _ = open_wal(tmp_path, start_seq=101)
    assert wal.write(b"z") == 101
    wal.close()


# ---------------------------------------------------------------------- segment format versions
def test_new_segments_are_written_in_the_current_version(tmp_path: Path) -> None:
    assert wal_mod.VERSION == 2
    wal, _ = open_wal(tmp_path, WalOptions(segment_bytes=300))
    write_records(wal, 20)
    wal.close()
    segments = sorted(tmp_path.glob("*.wal"))
    assert len(segments) > 2
    assert {header_version(p) for p in segments} == {wal_mod.VERSION}


def test_mixed_version_log_replays_in_order_with_each_records_version(tmp_path: Path) -> None:
    write_segment(tmp_path, 1, [payload(s) for s in range(1, 5)], version=1)
    write_segment(tmp_path, 5, [payload(s) for s in range(5, 8)], version=1)
    wal, seen = open_wal_versions(tmp_path)
    assert seen == [(s, 1, payload(s)) for s in range(1, 8)]
    assert wal.next_seq == 8
    write_records(wal, 3)  # 8..10
    wal.rotate()
    write_records(wal, 2)  # 11..12
    expected = [(s, 1 if s < 8 else 2, payload(s)) for s in range(1, 13)]
    assert [tuple(r) for r in wal.read_from(1)] == expected
    assert [tuple(r) for r in wal.read_from(6)] == expected[5:]
    wal.close()
    wal, seen = open_wal_versions(tmp_path)
    assert seen == expected
    assert [header_version(p) for p in sorted(tmp_path.glob("*.wal"))] == [1, 1, 2, 2]
    # Truncation drops the old segments; what is left is all of the current version.
    assert wal.truncate_before(8) == 2
    assert [tuple(r) for r in wal.read_from(8)] == expected[7:]
    wal.close()
    _, seen = open_wal_versions(tmp_path)
    assert seen == expected[7:]


def test_version_1_active_segment_is_not_appended_to(tmp_path: Path) -> None:
    old = write_segment(tmp_path, 1, [payload(s) for s in range(1, 4)], version=1)
    before = old.read_bytes()
    wal, seen = open_wal_versions(tmp_path)
    assert [(s, v) for s, v, _ in seen] == [(1, 1), (2, 1), (3, 1)]
    assert write_records(wal, 2) == [4, 5]
    wal.close()
    assert old.read_bytes() == before  # not one byte appended to the format-1 segment
    new = tmp_path / f"{4:020d}.wal"
    assert sorted(tmp_path.glob("*.wal")) == [old, new]
    assert header_version(new) == 2
    _, seen = open_wal_versions(tmp_path)
    assert [(s, v) for s, v, _ in seen] == [(1, 1), (2, 1), (3, 1), (4, 2), (5, 2)]


def test_opening_twice_without_writes_adds_no_empty_segments(tmp_path: Path) -> None:
    write_segment(tmp_path, 1, [payload(1)], version=1)
    for _ in range(3):
        wal, seen = open_wal_versions(tmp_path)
        assert [(s, v) for s, v, _ in seen] == [(1, 1)]
        wal.close()
    assert [header_version(p) for p in sorted(tmp_path.glob("*.wal"))] == [1, 2]


def test_empty_version_1_segment_is_replaced_by_a_current_one(tmp_path: Path) -> None:
    write_segment(tmp_path, 1, [payload(s) for s in range(1, 3)], version=1)
    empty = write_segment(tmp_path, 3, [], version=1)  # rotated, then the old process stopped
    wal, seen = open_wal_versions(tmp_path)
    assert [(s, v) for s, v, _ in seen] == [(1, 1), (2, 1)]
    assert header_version(empty) == 2  # same name, same first seq, new header
    assert wal.write(payload(3)) == 3
    wal.close()
    assert len(list(tmp_path.glob("*.wal"))) == 2
    _, seen = open_wal_versions(tmp_path)
    assert [(s, v) for s, v, _ in seen] == [(1, 1), (2, 1), (3, 2)]


def test_torn_tail_of_a_version_1_segment_is_cut_before_the_new_segment(tmp_path: Path) -> None:
    old = write_segment(tmp_path, 1, [payload(s) for s in range(1, 6)], version=1)
    data = old.read_bytes()
    old.write_bytes(data[:-7])  # record 5 torn
    wal, seen = open_wal_versions(tmp_path)
    assert [(s, v) for s, v, _ in seen] == [(s, 1) for s in range(1, 5)]
    assert wal.write(b"after") == 5
    wal.close()
    assert header_version(tmp_path / f"{5:020d}.wal") == 2
    _, seen = open_wal_versions(tmp_path)
    assert seen[-1] == (5, 2, b"after") and len(seen) == 5


@pytest.mark.parametrize("version", [0, 3, 0xFFFFFFFF])
@pytest.mark.parametrize("position", ["only", "first", "last"])
def test_unknown_version_is_corruption(tmp_path: Path, version: int, position: str) -> None:
    if position == "only":
        write_segment(tmp_path, 1, [payload(1)], version=version)
    elif position == "first":
        write_segment(tmp_path, 1, [payload(1)], version=version)
        write_segment(tmp_path, 2, [payload(2)], version=2)
    else:
        write_segment(tmp_path, 1, [payload(1)], version=1)
        write_segment(tmp_path, 2, [payload(2)], version=version)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(CorruptionError, match=f"unsupported version {version}"):
        open_wal_versions(tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # nothing repaired or added


# ---------------------------------------------------------------------- record payloads
def _format_1_payload(op: records.Op) -> bytes:
    """What the base commit's records.encode wrote: the public WalRecord, seq unset."""
    from vsproto.v1 import types_pb2

    record = types_pb2.WalRecord()
    if isinstance(op, records.UpsertOp):
        record.upsert.ids.extend(op.ids)
        record.upsert.vectors.dimension = op.vectors.shape[1]
        record.upsert.vectors.packed = np.ascontiguousarray(op.vectors, dtype="<f4").tobytes()
    else:
        record.delete.ids.extend(op.ids)
    data: bytes = record.SerializeToString()
    return data


def _same(a: records.Op, b: records.Op) -> bool:
    if isinstance(a, records.UpsertOp) and isinstance(b, records.UpsertOp):
        return a.ids == b.ids and a.vectors.dtype == b.vectors.dtype and np.array_equal(a.vectors, b.vectors)
    return type(a) is type(b) and a.ids == b.ids


OPS: list[records.Op] = [
    records.UpsertOp(["a", "ü-キー", "c"], np.arange(12, dtype=np.float32).reshape(3, 4) - 5.5),
    records.UpsertOp(["x"], np.array([[np.float32(1e-38), -0.0, 3.4e38]], dtype=np.float32)),
    records.DeleteOp(["a", "b"]),
]


@pytest.mark.parametrize("op", OPS)
def test_records_round_trip_in_the_written_format(op: records.Op) -> None:
    assert records.FORMAT_V2 == wal_mod.VERSION  # encode writes what the segment header says
    assert _same(records.decode(records.encode(op), wal_mod.VERSION), op)
    assert _same(records.from_proto(records.to_proto(op)), op)  # what ReadWal streams


@pytest.mark.parametrize("op", OPS)
def test_records_decode_format_1_payloads(op: records.Op) -> None:
    old = _format_1_payload(op)
    assert _same(records.decode(old, 1), op)
    assert records.to_proto(records.decode(old, 1)) == records.to_proto(op)


def test_format_1_upsert_read_as_format_2_would_be_a_delete() -> None:
    """Why every payload travels with its segment's version."""
    old = _format_1_payload(OPS[0])
    assert isinstance(records.decode(old, 2), records.DeleteOp)


def test_records_reject_unknown_formats_and_garbage() -> None:
    with pytest.raises(CorruptionError, match="format 3"):
        records.decode(records.encode(OPS[2]), 3)
    with pytest.raises(CorruptionError):
        records.decode(b"\xff\xff\xff", 2)
    with pytest.raises(CorruptionError, match="no operation"):
        records.decode(b"", 2)
    with pytest.raises(CorruptionError, match="no operation"):
        records.decode(b"", 1)
    bad = records.to_proto(OPS[0])
    bad.upsert.dimension = 5  # 12 floats are not 3 rows of 5
    with pytest.raises(CorruptionError, match="dimension 5"):
        records.decode(bad.SerializeToString(), 2)


def test_wal_entry_is_a_frozen_value() -> None:
    entry = records.WalEntry(7, OPS[2])
    assert entry == records.WalEntry(7, records.DeleteOp(["a", "b"]))
    with pytest.raises(AttributeError):
        entry.seq = 8  # type: ignore[misc]
