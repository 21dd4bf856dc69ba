"""Write-ahead log: framing, replay, torn tails, corruption, group commit, rotation, reads."""

from __future__ import annotations

import os
import random
import threading
from pathlib import Path

import pytest

from core.errors import CorruptionError, OutOfRange
from shard import wal as wal_mod
from shard.wal import HEADER_SIZE, FsyncPolicy, Wal, WalOptions


def payload(seq: int) -> bytes:
    return f"record-{seq}-".encode() * (1 + seq % 7)


def open_wal(path: Path, options: WalOptions | None = None, start_seq: int = 1) -> tuple[Wal, list[tuple[int, bytes]]]:
    seen: list[tuple[int, bytes]] = []
    wal = Wal.open(path, options or WalOptions(), lambda s, p: seen.append((s, p)), start_seq=start_seq)
    return wal, seen


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
    assert [s for s, _ in wal.read_from(8)] == list(range(8, 26))
    assert wal.truncate_before(11) == 1
    assert wal.first_seq == 11
    with pytest.raises(OutOfRange):
        list(wal.read_from(5))
    assert [(s, p) for s, p in wal.read_from(24)] == [(24, payload(24)), (25, payload(25))]
    wal.close()
    wal, seen = open_wal(tmp_path)
    assert [s for s, _ in seen] == list(range(11, 26))
    wal.close()


def test_start_seq_for_an_empty_log(tmp_path: Path) -> None:
    wal, _ = open_wal(tmp_path, start_seq=101)
    assert wal.write(b"z") == 101
    wal.close()
