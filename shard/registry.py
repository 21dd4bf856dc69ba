"""All collections of one shard process, under one data directory, plus background compaction.

Layout: ``{data_dir}/collections/{name}/`` (spec.json, wal/, snapshots/) and
``{data_dir}/control.json`` (``shard.control``: ring version floor, write fences, WAL pins).
Creation goes through a staging directory and a rename; dropping renames the directory aside
before deleting it, so a crash never leaves a half-created or half-dropped collection visible.

Thread-safety: every method may be called from any thread.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

from core.errors import AlreadyExists, InvalidArgument, NotFound, Unavailable
from core.spec import CollectionSpec, validate_name
from core.text import quote
from shard.collection import Collection, CollectionOptions
from shard.control import CONTROL_FILE, ShardControl, validate_key
from shard.fsutil import fsync_dir
from shard.sched import lower_thread_priority
from shard.types import CompactResult, KeyRange

log = logging.getLogger(__name__)


class Registry:
    def __init__(self, data_dir: Path, options: CollectionOptions, compaction_poll_s: float = 0.2) -> None:
        self.data_dir = data_dir
        self.options = options
        self._root = data_dir / "collections"
        self._lock = threading.Lock()
        self._collections: dict[str, Collection] = {}
        self._requested: set[str] = set()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._poll_s = compaction_poll_s
        self._compactor: threading.Thread | None = None
        self.control = ShardControl(data_dir / CONTROL_FILE)

    def open(self) -> None:
        """Recovers the controls and every collection on disk. Raises CorruptionError if one
        cannot be recovered."""
        self.control.load()
        self._root.mkdir(parents=True, exist_ok=True)
        for leftover in self._root.glob(".*"):
            shutil.rmtree(leftover, ignore_errors=True)  # half-created or half-dropped
        for path in sorted(self._root.iterdir()):
            if path.is_dir():
                self._collections[path.name] = self._attach(Collection.open(path, self.options))
        for name in {c for pins in self.control.snapshot().pins.values() for c in pins}:
            if name not in self._collections:  # its directory went away behind our back: keep nothing
                self.control.drop_collection(name)
        self._compactor = threading.Thread(target=self._compaction_loop, name="compactor", daemon=True)
        self._compactor.start()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._compactor is not None:
            self._compactor.join()
        with self._lock:
            collections = list(self._collections.values())
        for collection in collections:
            collection.close()

    # ------------------------------------------------------------------ collections
    def create(self, spec: CollectionSpec) -> tuple[bool, CollectionSpec]:
        with self._lock:
            existing = self._collections.get(spec.name)
            if existing is not None:
                if existing.spec != spec:
                    raise AlreadyExists(
                        f"collection {spec.name!r} exists with a different spec ({existing.spec.to_json()})"
                    )
                return False, existing.spec
            collection = self._attach(Collection.create(self._root / spec.name, spec, self.options))
            self._collections[spec.name] = collection
            return True, spec

    def drop(self, name: str) -> bool:
        validate_name(name)
        with self._lock:
            if name in self._collections:
                self.control.drop_collection(name)  # first: if that fails, nothing changed
            collection = self._collections.pop(name, None)
        if collection is None:
            return False
        collection.close()
        aside = self._root / f".dropped-{name}-{uuid.uuid4().hex}"
        collection.directory.rename(aside)
        fsync_dir(self._root)
        shutil.rmtree(aside, ignore_errors=True)
        return True

    def get(self, name: str) -> Collection:
        collection = self._collections.get(name)
        if collection is None:
            raise NotFound(f"collection {quote(name)} does not exist on this shard")
        return collection

    def list(self) -> list[CollectionSpec]:
        with self._lock:
            return [c.spec for c in sorted(self._collections.values(), key=lambda c: c.spec.name)]

    def collections(self) -> tuple[Collection, ...]:
        """The open collections (metrics and the recall probe read them)."""
        with self._lock:
            return tuple(self._collections.values())

    def _attach(self, collection: Collection) -> Collection:
        name = collection.spec.name
        collection.pin_floor = lambda: self.control.pin_floor(name)
        return collection

    # ------------------------------------------------------------------ rebalancing controls
    def set_min_epoch(self, epoch: int) -> int:
        """Raises the ring version floor (never lowers it); returns the current one. When it
        returns, no write of an older handle can be logged any more (write barrier)."""
        before = self.control.min_epoch
        current = self.control.set_min_epoch(epoch)
        if current != before:
            self._write_barrier()
        return current

    def set_fence(self, key: str, ranges: Sequence[KeyRange] | None) -> None:
        """Sets (or, with no ranges, removes) the write fence ``key``. When it returns, no client
        write to a fenced id can be logged any more: every collection's write lock is taken once
        after the change, so a write in flight has finished and every later one sees the fence."""
        self.control.set_fence(key, ranges)
        self._write_barrier()

    def _write_barrier(self) -> None:
        with self._lock:
            collections = list(self._collections.values())
        for collection in collections:
            collection.write_barrier()

    def pin_wal(self, name: str, key: str, from_seq: int) -> None:
        """Keeps the collection's log from ``from_seq`` on until ``unpin_wal(key)`` (or a drop).
        NotFound for an unknown collection, OutOfRange when the log no longer holds ``from_seq``.
        Pinning again under the same key moves that key's pin of the collection."""
        validate_key(key)
        if from_seq < 0:
            raise InvalidArgument(f"from_seq must be >= 0, got {from_seq}")
        with self._lock:  # not dropped meanwhile (a drop forgets the pins under this lock)
            collection = self.get(name)
            collection.hold_wal(from_seq, lambda: self.control.pin(name, key, from_seq))

    def unpin_wal(self, key: str) -> None:
        """Releases every pin of ``key``; the next compaction may truncate behind them."""
        self.control.unpin(key)

    # ------------------------------------------------------------------ compaction
    def compact(self, name: str, wait: bool) -> CompactResult | None:
        collection = self.get(name)
        if wait:
            return collection.compact()
        with self._lock:
            self._requested.add(name)
        self._wake.set()
        return None

    def _compaction_loop(self) -> None:
        lower_thread_priority(self.options.compact_nice)  # background folds yield the cores (shard/sched.py)
        while not self._stop.is_set():
            self._wake.wait(self._poll_s)
            self._wake.clear()
            with self._lock:
                requested, self._requested = self._requested, set()
                candidates = list(self._collections.items())
            now = time.monotonic()
            for name, collection in candidates:
                if self._stop.is_set():
                    return
                if name in requested or collection.needs_compaction(now):
                    try:  # a requested compaction (Compact without wait) checkpoints as a waited one
                        collection.compact(background=name not in requested)
                    except Unavailable:
                        continue  # dropped or closing meanwhile
                    except Exception:  # keep compacting the others; the delta stays searchable
                        log.exception("compaction of %s failed", name)
