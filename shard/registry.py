"""All collections of one shard process, under one data directory, plus background compaction.

Layout: ``{data_dir}/collections/{name}/`` (spec.json, wal/, snapshots/). Creation goes through
a staging directory and a rename; dropping renames the directory aside before deleting it, so
a crash never leaves a half-created or half-dropped collection visible.

Thread-safety: every method may be called from any thread.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
import uuid
from pathlib import Path

from core.errors import AlreadyExists, NotFound, Unavailable
from core.spec import CollectionSpec, validate_name
from core.text import quote
from shard.collection import Collection, CollectionOptions
from shard.fsutil import fsync_dir
from shard.types import CompactResult

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

    def open(self) -> None:
        """Recovers every collection on disk. Raises CorruptionError if one cannot be recovered."""
        self._root.mkdir(parents=True, exist_ok=True)
        for leftover in self._root.glob(".*"):
            shutil.rmtree(leftover, ignore_errors=True)  # half-created or half-dropped
        for path in sorted(self._root.iterdir()):
            if path.is_dir():
                self._collections[path.name] = Collection.open(path, self.options)
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
            collection = Collection.create(self._root / spec.name, spec, self.options)
            self._collections[spec.name] = collection
            return True, spec

    def drop(self, name: str) -> bool:
        validate_name(name)
        with self._lock:
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
                    try:
                        collection.compact()
                    except Unavailable:
                        continue  # dropped or closing meanwhile
                    except Exception:  # keep compacting the others; the delta stays searchable
                        log.exception("compaction of %s failed", name)
