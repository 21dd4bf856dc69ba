"""A graph's labels and their external ids, packed: no Python object per item.

An :class:`IdTable` maps each hnswlib label ``0..len-1`` to its id (``""``: a label no longer
live) and each live id to its label. It replaces a list of ``str`` and a ``dict`` of ``str`` to
``int``, which cost ~130 bytes an item in objects (bench/results/memory.md); here an item costs
its UTF-8 bytes, a 4-byte offset and a 12-byte hash entry.

Layout: ``blob`` holds the ids' UTF-8 bytes back to back in label order, ``offsets[label]`` ..
``offsets[label + 1]`` delimits one (empty for a dead label); ``hashes`` holds ``hash()`` of each
live id (the ``str``: Python caches it in the string, so an id that was hashed before, as every
written id was, costs nothing to hash again), sorted, beside ``by_hash``, the label of each
entry. A lookup is a binary search on ``hashes`` and a comparison of the id at each label with
that hash (so a collision of Python's 64-bit ``hash`` costs a comparison, never a wrong answer).
Python randomises ``hash`` per process: a table is never persisted as is (the snapshot's ids file
holds lengths and bytes).

The arrays are ``array.array``s, read one element at a time without numpy's per-call cost, with
numpy views over the same memory for whole-array work.

Immutable once built, so any thread may read it; :meth:`evolve` returns a new table.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

Labels = npt.NDArray[np.int64]


def _packed(values: npt.NDArray[Any], code: str) -> array[int]:
    """``values`` copied into an ``array.array`` of type ``code``."""
    out: array[int] = array(code)
    out.frombytes(np.ascontiguousarray(values, dtype=np.dtype(code)).tobytes())
    return out


class IdTable:
    __slots__ = ("_blob", "_by_hash", "_hashes", "_live", "_offsets")

    def __init__(
        self, blob: bytes, offsets: npt.NDArray[Any], hashes: npt.NDArray[np.int64], by_hash: npt.NDArray[Any]
    ) -> None:
        """Internal: use :meth:`from_ids`, :meth:`from_lengths` or :meth:`evolve`. Offsets are
        held as uint32 where they fit, labels always (hnswlib's are 32-bit)."""
        self._blob = blob
        self._offsets = _packed(offsets, "I" if len(blob) < 2**32 else "q")
        self._hashes = _packed(hashes, "q")
        self._by_hash = _packed(by_hash, "I")
        self._live = len(by_hash)

    @property
    def _offsets_np(self) -> npt.NDArray[Any]:
        return np.frombuffer(self._offsets, dtype=np.dtype(self._offsets.typecode))

    @property
    def _hashes_np(self) -> npt.NDArray[np.int64]:
        return np.frombuffer(self._hashes, dtype=np.int64)

    @property
    def _by_hash_np(self) -> npt.NDArray[np.uint32]:
        return np.frombuffer(self._by_hash, dtype=np.uint32)

    # ------------------------------------------------------------------ building
    @classmethod
    def from_ids(cls, ids: Sequence[str]) -> IdTable:
        """Label ``i`` holds ``ids[i]`` (``""``: dead). ValueError if a live id appears twice."""
        encoded = [item.encode() for item in ids]
        lengths = np.fromiter((len(b) for b in encoded), dtype=np.int64, count=len(encoded))
        return cls.from_lengths(b"".join(encoded), lengths)

    @classmethod
    def from_lengths(cls, blob: bytes, lengths: npt.NDArray[np.integer[Any]]) -> IdTable:
        """From the ids' UTF-8 bytes back to back in label order and each one's length (0: a
        dead label), as the snapshot's ids file holds them. ValueError if the lengths do not
        add up to the blob or a live id appears twice."""
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        if int(offsets[-1]) != len(blob):
            raise ValueError(f"ids: lengths add up to {int(offsets[-1])} bytes, the blob holds {len(blob)}")
        live = np.flatnonzero(np.asarray(lengths) > 0).astype(np.int64)
        starts, ends = offsets[live].tolist(), offsets[live + 1].tolist()
        hashes = np.fromiter((hash(blob[s:e].decode()) for s, e in zip(starts, ends, strict=True)), np.int64, len(live))
        order = np.argsort(hashes, kind="stable")
        table = cls(blob, offsets, hashes[order], live[order])
        table._check_unique(hashes[order])
        return table

    def evolve(self, dead: Iterable[int], added: Sequence[str]) -> IdTable:
        """A new table: this one with the labels in ``dead`` no longer live (their ids are
        forgotten; a label dead already is skipped) and ``added`` taking the next labels
        ``len(self) ..``. ValueError if an added id is live in the result twice."""
        dead_labels = np.unique(np.fromiter(dead, dtype=np.int64))
        blob, offsets, hashes, by_hash = self._blob, self._offsets_np, self._hashes_np, self._by_hash_np
        if len(dead_labels):
            lengths = np.diff(offsets)
            keep_label = np.ones(len(lengths), dtype=np.bool_)
            keep_label[dead_labels] = False
            keep_bytes = np.repeat(keep_label, lengths)
            blob = np.frombuffer(blob, dtype=np.uint8)[keep_bytes].tobytes()
            lengths[dead_labels] = 0
            offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
            np.cumsum(lengths, out=offsets[1:])
            kept = keep_label[by_hash]
            hashes, by_hash = hashes[kept], by_hash[kept]
        if added:
            encoded = [item.encode() for item in added]
            lengths_new = np.fromiter((len(b) for b in encoded), dtype=np.int64, count=len(encoded))
            if not lengths_new.all():
                raise ValueError("ids: an added id is empty")
            base = len(offsets) - 1
            offsets = np.concatenate([offsets, offsets[-1] + np.cumsum(lengths_new)])
            blob = blob + b"".join(encoded)
            new_hashes = np.fromiter((hash(item) for item in added), dtype=np.int64, count=len(added))
            order = np.argsort(new_hashes, kind="stable")
            new_hashes = new_hashes[order]
            at = np.searchsorted(hashes, new_hashes)
            hashes = np.insert(hashes, at, new_hashes)
            by_hash = np.insert(by_hash, at, np.arange(base, base + len(encoded), dtype=np.int64)[order])
        elif not len(dead_labels):
            return self
        table = IdTable(blob, offsets, hashes, by_hash)
        if added:
            table._check_unique(hashes)
        return table

    def _check_unique(self, hashes: npt.NDArray[np.int64]) -> None:
        """ValueError if two live labels hold the same id (equal hashes: almost surely the same
        id, else a collision, so the ids of every run of equal hashes are compared)."""
        same = np.flatnonzero(hashes[1:] == hashes[:-1])
        if not len(same):
            return
        runs: dict[int, set[int]] = {}
        for at in same.tolist():
            runs.setdefault(int(hashes[at]), set()).update((at, at + 1))
        for positions in runs.values():
            seen: dict[bytes, int] = {}
            for at in sorted(positions):
                label = self._by_hash[at]
                other = seen.setdefault(self._bytes(label), label)
                if other != label:
                    raise ValueError(f"ids: {self.id_of(label)!r} holds labels {other} and {label}")

    # ------------------------------------------------------------------ reading
    def __len__(self) -> int:
        """How many labels (live and dead)."""
        return len(self._offsets) - 1

    @property
    def live(self) -> int:
        """How many live labels (ids)."""
        return self._live

    @property
    def nbytes(self) -> int:
        """The table's own memory, in bytes."""
        return sum(len(part) * part.itemsize for part in (self._offsets, self._hashes, self._by_hash)) + len(self._blob)

    def _bytes(self, label: int) -> bytes:
        offsets = self._offsets
        return self._blob[offsets[label] : offsets[label + 1]]

    def id_of(self, label: int) -> str:
        """The id of ``label`` (``""`` when dead). IndexError outside ``0..len-1``."""
        if not 0 <= label < len(self):
            raise IndexError(f"label {label} outside 0..{len(self) - 1}")
        return self._bytes(label).decode()

    def ids_of(self, labels: npt.NDArray[np.integer[Any]]) -> npt.NDArray[np.object_]:
        """The ids of ``labels`` (any shape), as an object array of that shape; ``-1`` (a
        search's padding) and dead labels give ``""``."""
        blob, offsets = self._blob, self._offsets
        flat = np.asarray(labels).ravel().tolist()
        out = np.empty(len(flat), dtype=object)
        out[:] = [blob[offsets[label] : offsets[label + 1]].decode() if label >= 0 else "" for label in flat]
        return out.reshape(np.shape(labels))

    def label_of(self, item: str) -> int | None:
        """The label of live id ``item``, None if it has none."""
        hashes, h = self._hashes, hash(item)
        at = bisect_left(hashes, h)
        while at < len(hashes) and hashes[at] == h:
            label = self._by_hash[at]
            if self._bytes(label).decode() == item:
                return label
            at += 1
        return None

    def __contains__(self, item: object) -> bool:
        return isinstance(item, str) and self.label_of(item) is not None

    def labels_of(self, items: Sequence[str]) -> Labels:
        """The label of each of ``items`` (``-1``: not live here), in order: one vectorised
        search for all of them, then a comparison for each hash found."""
        count = len(items)
        out = np.full(count, -1, dtype=np.int64)
        if not count or not self._live:
            return out
        hashes = self._hashes_np
        wanted = np.fromiter(map(hash, items), dtype=np.int64, count=count)
        at = np.minimum(np.searchsorted(hashes, wanted), len(hashes) - 1)
        hit = np.flatnonzero(hashes[at] == wanted)
        by_hash = self._by_hash
        for i, pos in zip(hit.tolist(), at[hit].tolist(), strict=True):
            label = by_hash[pos]
            if self._bytes(label).decode() == items[i]:
                out[i] = label
            else:  # a collision of hashes: look at every entry with this hash
                found = self.label_of(items[i])
                out[i] = -1 if found is None else found
        return out

    def live_labels(self) -> Labels:
        """The live labels, ascending."""
        return np.flatnonzero(np.diff(self._offsets_np) > 0).astype(np.int64)

    def live_ids(self) -> Iterator[str]:
        """The live ids, in label order."""
        offsets, blob = self._offsets, self._blob
        for label in self.live_labels().tolist():
            yield blob[offsets[label] : offsets[label + 1]].decode()

    def encoded(self) -> tuple[npt.NDArray[np.int64], bytes]:
        """(each label's id length in bytes, 0 when dead; the ids' bytes back to back): what
        :meth:`from_lengths` takes."""
        return np.diff(self._offsets_np).astype(np.int64), self._blob
