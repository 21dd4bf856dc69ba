"""Segmented write-ahead log with CRC32C-framed records and group commit.

On-disk format (segment format versions 1 and 2)
------------------------------------------------
A log is a directory of segment files named ``{first_seq:020d}.wal``. Each segment starts with
a 20-byte header ``magic "VSWL" | u32 version | u64 first_seq | u32 crc32c(previous 16 bytes)``
followed by records, each framed as::

    u32 payload_length | u64 seq | payload | u32 crc32c(length | seq | payload)

all little-endian. Sequence numbers are consecutive across the whole log. A new segment is
written to a temporary name, fsynced and renamed, and the previous segment is fsynced before
that, so only the last segment can end in a torn record.

The framing is the same in every version; the header's version says how the payloads of that
segment's records are encoded, and every record of a segment has its header's version:

* version 2 (written now): a serialised ``vectorsearch.shard.v1.WalOp``
  (proto/vectorsearch/shard/v1/wal.proto);
* version 1 (written before that proto existed; read only): the public
  ``vectorsearch.v1.WalRecord`` with its seq unset, read through ``WalRecordV1``.

This module does not interpret payloads: replay and :meth:`Wal.read_from` hand each record's
version to the caller with its payload, and ``shard/records.py`` decodes them. New segments are
always of version :data:`VERSION`. A log may hold older segments followed by newer ones (after an
upgrade); when the last segment on open is of an older version, a new segment of the current
version takes the new writes (or replaces it, if it holds no record), so a segment is never
appended to in another version than its header's. A segment of any other version raises
``CorruptionError`` (so older code refuses a log that newer code has written to).

Durability contract
-------------------
``write`` puts a record in the OS page cache (it survives a process crash). ``sync(seq)``
returns once every record up to ``seq`` is on stable storage; concurrent callers share one
``fdatasync`` (group commit). Under ``FsyncPolicy.ALWAYS`` callers acknowledge a write only
after ``sync``; under ``FsyncPolicy.INTERVAL`` a background thread syncs every interval and a
power failure may lose the writes of the last interval.

Recovery contract
-----------------
``Wal.open`` replays every intact record in order. Replay stops at the first record whose frame
is short, whose checksum fails or whose seq is out of order; if that is in the last segment the
file is truncated there (a torn tail). Damage in an earlier segment, or a damaged segment
header, raises ``CorruptionError``: those records were fsynced, so losing them silently would
lose acknowledged writes.

Thread-safety: every public method may be called from any thread.
"""

from __future__ import annotations

import enum
import os
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO, NamedTuple

from crc32c import crc32c

from core.errors import CorruptionError, OutOfRange, Unavailable
from shard.fsutil import fsync_dir
from shard.metrics import WAL_FSYNC_SECONDS

MAGIC = b"VSWL"
VERSION = 2
"""The segment format version new segments are written in."""
SUPPORTED_VERSIONS = frozenset({1, 2})
"""Segment format versions this code reads."""
_HEADER = struct.Struct("<4sIQ")
_HEADER_CRC = struct.Struct("<I")
HEADER_SIZE = _HEADER.size + _HEADER_CRC.size
_FRAME = struct.Struct("<IQ")
_CRC = struct.Struct("<I")
FRAME_OVERHEAD = _FRAME.size + _CRC.size
MAX_PAYLOAD = 1 << 30
SUFFIX = ".wal"


class FsyncPolicy(enum.Enum):
    ALWAYS = "always"
    INTERVAL = "interval"


@dataclass(frozen=True)
class WalOptions:
    fsync: FsyncPolicy = FsyncPolicy.ALWAYS
    fsync_interval_s: float = 0.05
    segment_bytes: int = 64 << 20


class Record(NamedTuple):
    """One record as :meth:`Wal.read_from` yields it: its seq, the format version of its
    segment (how ``payload`` is encoded) and the payload."""

    seq: int
    version: int
    payload: bytes


@dataclass
class _Segment:
    first_seq: int
    path: Path
    size: int
    version: int = VERSION


def _segment_name(first_seq: int) -> str:
    return f"{first_seq:020d}{SUFFIX}"


def _encode_header(first_seq: int, version: int = VERSION) -> bytes:
    head = _HEADER.pack(MAGIC, version, first_seq)
    return head + _HEADER_CRC.pack(crc32c(head))


def encode_frame(seq: int, payload: bytes) -> bytes:
    head = _FRAME.pack(len(payload), seq)
    crc = crc32c(payload, crc32c(head))
    return head + payload + _CRC.pack(crc)


def _scan_segment(data: bytes, first_seq: int) -> tuple[list[tuple[int, int, int]], int]:
    """Returns ([(seq, payload_start, payload_end)], end of the last intact record)."""
    records: list[tuple[int, int, int]] = []
    view = memoryview(data)
    pos = HEADER_SIZE
    expected = first_seq
    while pos + FRAME_OVERHEAD <= len(data):
        length, seq = _FRAME.unpack_from(data, pos)
        end = pos + _FRAME.size + length + _CRC.size
        if length > MAX_PAYLOAD or end > len(data) or seq != expected:
            break
        (stored,) = _CRC.unpack_from(data, end - _CRC.size)
        if crc32c(view[pos : end - _CRC.size]) != stored:
            break
        records.append((seq, pos + _FRAME.size, end - _CRC.size))
        pos = end
        expected += 1
    return records, pos


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Wal:
    """An open write-ahead log. Create with :meth:`open`."""

    def __init__(self, directory: Path, options: WalOptions, segments: list[_Segment], next_seq: int) -> None:
        self._dir = directory
        self._options = options
        self._segments = segments
        self._lock = threading.Lock()
        self._sync_lock = threading.Lock()
        self._next_seq = next_seq
        self._synced_seq = next_seq - 1
        self._failure: BaseException | None = None
        self._closed = False
        active = segments[-1]
        self._fd = os.open(active.path, os.O_WRONLY | os.O_APPEND)
        self._stop = threading.Event()
        self._syncer: threading.Thread | None = None
        if options.fsync is FsyncPolicy.INTERVAL:
            self._syncer = threading.Thread(target=self._sync_loop, name=f"wal-sync-{directory}", daemon=True)
            self._syncer.start()

    # ------------------------------------------------------------------ opening and replay
    @classmethod
    def open(
        cls,
        directory: Path,
        options: WalOptions,
        on_record: Callable[[int, int, bytes], None],
        start_seq: int = 1,
    ) -> Wal:
        """Opens (or creates) the log, replays intact records to ``on_record(seq, version,
        payload)``, where ``version`` is the format version of the record's segment.

        ``start_seq`` is the seq the log starts at when it holds no segment (one past what the
        newest snapshot covers). Raises CorruptionError on damage that is not a torn tail, and
        on a segment of a version this code does not read.
        """
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob("*.tmp"):
            stale.unlink()
        paths = sorted(directory.glob(f"*{SUFFIX}"))
        segments: list[_Segment] = []
        next_seq = start_seq
        for index, path in enumerate(paths):
            last = index == len(paths) - 1
            data = path.read_bytes()
            if len(data) < HEADER_SIZE and last:
                path.unlink()  # torn while being created: it never held a record
                fsync_dir(directory)
                break
            magic, version, first_seq = _HEADER.unpack_from(data) if len(data) >= HEADER_SIZE else (b"", 0, 0)
            header_ok = (
                len(data) >= HEADER_SIZE
                and magic == MAGIC
                and _HEADER_CRC.unpack_from(data, _HEADER.size)[0] == crc32c(data[: _HEADER.size])
            )
            if not header_ok:
                raise CorruptionError(f"write-ahead log segment {path} has a damaged header")
            if version not in SUPPORTED_VERSIONS:
                raise CorruptionError(f"write-ahead log segment {path} has unsupported version {version}")
            if segments and first_seq != next_seq:
                raise CorruptionError(f"write-ahead log segment {path} starts at seq {first_seq}, expected {next_seq}")
            records, intact_end = _scan_segment(data, first_seq)
            if intact_end != len(data):
                if not last:
                    raise CorruptionError(
                        f"write-ahead log segment {path} is damaged at byte {intact_end} "
                        "but later segments exist; refusing to drop fsynced records"
                    )
                with open(path, "r+b") as handle:
                    handle.truncate(intact_end)
                    handle.flush()
                    os.fsync(handle.fileno())
            view = memoryview(data)
            for seq, start, end in records:
                on_record(seq, version, bytes(view[start:end]))
            next_seq = first_seq + len(records)
            segments.append(_Segment(first_seq, path, intact_end, version))
        if not segments:
            segments.append(cls._create_segment(directory, next_seq))
        elif segments[-1].version != VERSION:
            # Never append records of this version to a segment of an older one.
            old = segments[-1]
            if old.size <= HEADER_SIZE:
                segments.pop()  # no record yet: the new segment replaces it (an atomic rename)
            else:
                _fsync_path(old.path)  # sealed: durable before a later segment exists
            segments.append(cls._create_segment(directory, next_seq))
        return cls(directory, options, segments, next_seq)

    @staticmethod
    def _create_segment(directory: Path, first_seq: int) -> _Segment:
        path = directory / _segment_name(first_seq)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, _encode_header(first_seq))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
        fsync_dir(directory)
        return _Segment(first_seq, path, HEADER_SIZE)

    # ------------------------------------------------------------------ writing
    @property
    def next_seq(self) -> int:
        return self._next_seq

    @property
    def last_seq(self) -> int:
        return self._next_seq - 1

    def write(self, payload: bytes) -> int:
        """Appends one record and returns its seq. Durable only after ``sync(seq)``.

        Callers that need the log order to match an in-memory apply order must hold their
        own lock across ``write`` and the apply.
        """
        frame_len = len(payload) + FRAME_OVERHEAD
        if len(payload) > MAX_PAYLOAD:
            raise Unavailable(f"record of {len(payload)} bytes exceeds the log's limit")
        with self._lock:
            self._check_usable()
            active = self._segments[-1]
            if active.size + frame_len > self._options.segment_bytes and active.size > HEADER_SIZE:
                self._rotate_locked()
                active = self._segments[-1]
            seq = self._next_seq
            frame = encode_frame(seq, payload)
            try:
                written = 0
                while written < len(frame):
                    written += os.write(self._fd, frame[written:])
            except OSError as exc:
                self._undo_partial_write(active.size, exc)
                raise Unavailable(f"write-ahead log write failed: {exc.strerror}") from exc
            active.size += len(frame)
            self._next_seq = seq + 1
            return seq

    def _undo_partial_write(self, good_size: int, exc: OSError) -> None:
        try:
            os.ftruncate(self._fd, good_size)
        except OSError:
            self._failure = exc

    def sync(self, seq: int) -> None:
        """Blocks until every record up to ``seq`` is on stable storage (group commit)."""
        if self._synced_seq >= seq:
            return
        with self._sync_lock:
            if self._synced_seq >= seq:
                return
            with self._lock:
                self._check_usable()
                target = self._next_seq - 1
                fd = os.dup(self._fd)
            started = time.perf_counter()
            try:
                os.fdatasync(fd)
                WAL_FSYNC_SECONDS.observe(time.perf_counter() - started)
            except OSError as exc:
                # After a failed fsync the page cache state is unknown: stop taking writes.
                self._failure = exc
                raise Unavailable(f"write-ahead log fsync failed: {exc.strerror}") from exc
            finally:
                os.close(fd)
            self._synced_seq = max(self._synced_seq, target)

    def _sync_loop(self) -> None:
        while not self._stop.wait(self._options.fsync_interval_s):
            try:
                self.sync(self.last_seq)
            except Unavailable:
                return

    def _check_usable(self) -> None:
        if self._failure is not None:
            raise Unavailable(f"write-ahead log failed earlier ({self._failure}); restart the shard")
        if self._closed:
            raise Unavailable("write-ahead log is closed")

    # ------------------------------------------------------------------ segments
    def rotate(self) -> None:
        """Starts a new segment at the next seq, unless the active one holds no record yet."""
        with self._lock:
            self._check_usable()
            if self._segments[-1].size > HEADER_SIZE:
                self._rotate_locked()

    def _rotate_locked(self) -> None:
        os.fsync(self._fd)  # every record of a sealed segment is durable before the next exists
        self._synced_seq = max(self._synced_seq, self._next_seq - 1)
        segment = self._create_segment(self._dir, self._next_seq)
        os.close(self._fd)
        self._fd = os.open(segment.path, os.O_WRONLY | os.O_APPEND)
        self._segments.append(segment)

    def truncate_before(self, seq: int) -> int:
        """Deletes whole segments whose records all have seq < ``seq``; returns how many."""
        with self._lock:
            doomed = []
            while len(self._segments) > 1 and self._segments[1].first_seq <= seq:
                doomed.append(self._segments.pop(0))
        for segment in doomed:
            segment.path.unlink(missing_ok=True)
        if doomed:
            fsync_dir(self._dir)
        return len(doomed)

    @property
    def first_seq(self) -> int:
        """The oldest seq still kept (== next_seq when the log is empty)."""
        with self._lock:
            return self._segments[0].first_seq

    @property
    def size_bytes(self) -> int:
        with self._lock:
            return sum(s.size for s in self._segments)

    # ------------------------------------------------------------------ reading
    def read_from(self, from_seq: int) -> Iterator[Record]:
        """Yields a :class:`Record` (seq, segment format version, payload) for each record from
        ``from_seq`` up to the last one written when the call was made. Raises OutOfRange when
        ``from_seq`` was already truncated."""
        handles: list[tuple[BinaryIO, _Segment]] = []
        with self._lock:
            first = self._segments[0].first_seq
            if from_seq < first:
                raise OutOfRange(
                    f"records before seq {first} were compacted away (asked from {from_seq}); "
                    f"first_available_seq={first}"
                )
            last = self._next_seq - 1
            for index, segment in enumerate(self._segments):
                following = self._segments[index + 1].first_seq if index + 1 < len(self._segments) else last + 1
                if following <= from_seq:
                    continue
                # Open under the lock: an open file survives a concurrent truncate_before.
                # A copy: the active segment's size grows with later writes.
                handles.append((open(segment.path, "rb"), replace(segment)))  # noqa: SIM115
        return self._iter_handles(handles, from_seq, last)

    @staticmethod
    def _iter_handles(handles: list[tuple[BinaryIO, _Segment]], from_seq: int, last: int) -> Iterator[Record]:
        try:
            for handle, segment in handles:
                data = handle.read(segment.size)
                records, _ = _scan_segment(data, segment.first_seq)
                for seq, start, end in records:
                    if from_seq <= seq <= last:
                        yield Record(seq, segment.version, data[start:end])
        finally:
            for handle, _ in handles:
                handle.close()

    # ------------------------------------------------------------------ closing
    def close(self) -> None:
        """Syncs everything written and closes the log. Idempotent."""
        self._stop.set()
        if self._syncer is not None:
            self._syncer.join()
        with self._lock:
            if self._closed:
                return
            try:
                if self._failure is None:
                    os.fsync(self._fd)
            finally:
                os.close(self._fd)
                self._closed = True
