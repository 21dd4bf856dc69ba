"""Shard-level controls for online rebalancing (issue #16), persisted in ``{data_dir}/control.json``.

A coordinator moving arcs of the id-hash ring between shards sets three things on a shard:

* ``min_epoch``: the oldest ring version whose handles the shard still serves. A call made
  through a handle of an older ring (epoch ``0 < epoch < min_epoch``) is refused with
  ``WrongRoute`` before it does anything; epoch 0 is an unchecked caller (the coordinator
  itself, admin tools). It only ever rises.
* fences, by key: arcs whose ids clients may no longer write here (they are moving or have
  moved). A client write touching one is refused whole with ``WrongRoute``; the coordinator's
  own copying (``replicate``) is not fenced. The check runs under the collection's write lock
  (``Collection.upsert_batch(guard=...)``), and setting a fence takes every write lock once
  after the change (``Registry.set_fence``), so once it returns no client write to a fenced id
  can be logged any more.
* WAL pins, by key: per collection, the first seq whose records compaction must keep, so a
  mover's catch-up cannot fall off the end of the log (``Collection._prune``).

Every setter returns after the new state is durable (temp file, fsync, rename, fsync of the
directory). A missing file is the empty state; a damaged one is ``CorruptionError``.
Thread-safe: setters are serialised; the checks read an immutable snapshot without a lock.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import CorruptionError, InvalidArgument, WrongRoute
from core.keyranges import KeyRange, RangeSet
from shard.fsutil import atomic_write
from shard.types import ControlState

CONTROL_FILE = "control.json"
FORMAT = 1
MAX_KEY_CHARS = 128
MAX_FENCE_RANGES = 100_000


def validate_key(key: str) -> str:
    """A fence or pin key: 1..128 characters (InvalidArgument otherwise)."""
    if not isinstance(key, str) or not 1 <= len(key) <= MAX_KEY_CHARS:
        shown = key[:40] + "..." if isinstance(key, str) and len(key) > 40 else key
        raise InvalidArgument(f"a control key must be 1..{MAX_KEY_CHARS} characters, got {shown!r}")
    return key


@dataclass(frozen=True)
class _State:
    min_epoch: int = 0
    fences: dict[str, RangeSet] = field(default_factory=dict)
    pins: dict[str, dict[str, int]] = field(default_factory=dict)
    fenced: RangeSet = field(default_factory=RangeSet)  # the union of every fence

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": FORMAT,
                "min_epoch": self.min_epoch,
                "fences": {key: ranges.to_pairs() for key, ranges in sorted(self.fences.items())},
                "pins": {key: dict(sorted(pins.items())) for key, pins in sorted(self.pins.items())},
            },
            indent=1,
        )

    @classmethod
    def build(cls, min_epoch: int, fences: dict[str, RangeSet], pins: dict[str, dict[str, int]]) -> _State:
        union = RangeSet(r for ranges in fences.values() for r in ranges.ranges)
        return cls(min_epoch, fences, pins, union)


def _parse(text: str, path: Path) -> _State:
    try:
        doc: Any = json.loads(text)
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise ValueError(f"unknown format {doc.get('format') if isinstance(doc, dict) else doc!r}")
        min_epoch = doc["min_epoch"]
        if type(min_epoch) is not int or min_epoch < 0:
            raise ValueError(f"bad min_epoch {min_epoch!r}")
        fences: dict[str, RangeSet] = {}
        for key, pairs in dict(doc["fences"]).items():
            validate_key(key)
            if (
                not isinstance(pairs, list)
                or not pairs
                or not all(isinstance(p, list) and len(p) == 2 and all(type(v) is int for v in p) for p in pairs)
            ):
                raise ValueError(f"bad ranges of fence {key!r}")
            fences[key] = RangeSet.from_pairs(pairs)
        pins: dict[str, dict[str, int]] = {}
        for key, by_collection in dict(doc["pins"]).items():
            validate_key(key)
            if not isinstance(by_collection, dict) or not by_collection:
                raise ValueError(f"bad pins of key {key!r}")
            for collection, seq in by_collection.items():
                if not isinstance(collection, str) or type(seq) is not int or seq < 0:
                    raise ValueError(f"bad pin {key!r}: {collection!r} -> {seq!r}")
            pins[key] = dict(by_collection)
    except (ValueError, KeyError, TypeError, InvalidArgument) as exc:
        raise CorruptionError(f"shard control file {path} is damaged ({exc}); restore it or remove it") from None
    return _State.build(min_epoch, fences, pins)


class ShardControl:
    """The persisted controls of one shard (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._state = _State()

    def load(self) -> None:
        """(Re)reads the file: missing is the empty state, damaged is CorruptionError."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            state = _State()
        except (OSError, UnicodeDecodeError) as exc:
            raise CorruptionError(f"cannot read shard control file {self.path}: {exc}") from None
        else:
            state = _parse(text, self.path)
        with self._lock:
            self._state = state

    def _commit(self, state: _State) -> None:
        """Makes ``state`` durable, then current. Caller holds ``_lock``."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, state.to_json().encode())
        self._state = state

    # ------------------------------------------------------------------ checks
    @property
    def min_epoch(self) -> int:
        return self._state.min_epoch

    def admit(self, epoch: int) -> None:
        """WrongRoute when a handle of ring version ``epoch`` is older than this shard serves
        (epoch 0: an unchecked caller, always admitted)."""
        floor = self._state.min_epoch
        if 0 < epoch < floor:
            raise WrongRoute(
                f"ring version {epoch} is stale: this shard serves version {floor} and newer; "
                "nothing was done. Reload the topology and retry"
            )

    def check_writes(self, ids: Sequence[str]) -> None:
        """WrongRoute when a client write touches an id whose hash is fenced (nothing is
        hashed when there is no fence)."""
        fenced = self._state.fenced
        if not fenced:
            return
        hits = int(fenced.contains_ids(ids).sum())
        if hits:
            raise WrongRoute(
                f"{hits} of {len(ids)} ids are moving or have moved off this shard (write fence); "
                "nothing was written. Reload the topology and retry"
            )

    def pin_floor(self, collection: str) -> int | None:
        """The smallest pinned ``from_seq`` of the collection, None when it has no pin."""
        seqs = [pins[collection] for pins in self._state.pins.values() if collection in pins]
        return min(seqs) if seqs else None

    def snapshot(self) -> ControlState:
        state = self._state
        return ControlState(
            state.min_epoch,
            {key: list(ranges.ranges) for key, ranges in sorted(state.fences.items())},
            {key: dict(sorted(pins.items())) for key, pins in sorted(state.pins.items())},
        )

    # ------------------------------------------------------------------ setters (durable on return)
    def set_min_epoch(self, epoch: int) -> int:
        """Raises ``min_epoch`` to ``epoch`` (never lowers it); returns the current one."""
        if epoch < 0:
            raise InvalidArgument(f"epoch must be >= 0, got {epoch}")
        with self._lock:
            state = self._state
            if epoch > state.min_epoch:
                self._commit(_State.build(epoch, state.fences, state.pins))
            return self._state.min_epoch

    def set_fence(self, key: str, ranges: Sequence[KeyRange] | None) -> None:
        """Sets the fence ``key`` to ``ranges``, or removes it when they are empty or None.
        Only the state: ``Registry.set_fence`` also waits out writes in flight."""
        validate_key(key)
        ranges = list(ranges or ())
        if len(ranges) > MAX_FENCE_RANGES:
            raise InvalidArgument(f"at most {MAX_FENCE_RANGES} ranges per fence, got {len(ranges)}")
        with self._lock:
            state = self._state
            fences = dict(state.fences)
            if ranges:
                fences[key] = RangeSet(ranges)
            elif fences.pop(key, None) is None:
                return
            self._commit(_State.build(state.min_epoch, fences, state.pins))

    def pin(self, collection: str, key: str, from_seq: int) -> None:
        """Records that ``collection``'s log must be kept from ``from_seq`` on, under ``key``
        (replacing that key's earlier pin of the collection). Only the state:
        ``Registry.pin_wal`` checks the log still holds ``from_seq``."""
        validate_key(key)
        if from_seq < 0:
            raise InvalidArgument(f"from_seq must be >= 0, got {from_seq}")
        with self._lock:
            state = self._state
            if state.pins.get(key, {}).get(collection) == from_seq:
                return
            pins = dict(state.pins)
            pins[key] = {**pins.get(key, {}), collection: from_seq}
            self._commit(_State.build(state.min_epoch, state.fences, pins))

    def unpin(self, key: str) -> None:
        """Removes every pin of ``key`` (all collections); nothing when it has none."""
        validate_key(key)
        with self._lock:
            state = self._state
            if key not in state.pins:
                return
            pins = {k: v for k, v in state.pins.items() if k != key}
            self._commit(_State.build(state.min_epoch, state.fences, pins))

    def drop_collection(self, name: str) -> None:
        """Forgets every pin of the collection ``name`` (it was dropped)."""
        with self._lock:
            state = self._state
            if not any(name in pins for pins in state.pins.values()):
                return
            pins = {}
            for key, by_collection in state.pins.items():
                rest = {c: s for c, s in by_collection.items() if c != name}
                if rest:
                    pins[key] = rest
            self._commit(_State.build(state.min_epoch, state.fences, pins))
