"""A graph's labels and their external ids, packed: no Python object per item.

An :class:`IdTable` maps each hnswlib label ``0..len-1`` to its id (``""``: a label no longer
live) and each live id to its label. It replaces a list of ``str`` and a ``dict`` of ``str`` to
``int``, which cost ~130 bytes an item in objects (bench/results/memory.md); here an item costs
its UTF-8 bytes, a 4-byte offset and a 12-byte hash entry.

Layout: ``blob`` holds the ids' UTF-8 bytes back to back in label order, ``offsets[label]`` ..
``offsets[label + 1]`` delimits one (empty for a dead label); ``hashes`` holds ``hash()`` of each
live id's bytes, sorted, beside ``by_hash``, the label of each entry. A lookup is a binary search
on ``hashes`` and a comparison of the bytes at each label with that hash (so collisions of
Python's 64-bit ``hash`` cost a comparison, never a wrong answer). Python randomises ``hash`` per
process: a table is never persisted as is (the snapshot's ids file holds lengths and bytes).

Immutable once built, so any thread may read it; :meth:`evolve` returns a new table.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

Labels = npt.NDArray[np.int64]


class IdTable:
    __slots__ = ("_blob", "_by_hash", "_hashes", "_live", "_offsets")

    def __init__(
        self, blob: bytes, offsets: npt.NDArray[Any], hashes: npt.NDArray[np.int64], by_hash: npt.NDArray[Any]
    ) -> None:
        """Internal: use :meth:`from_ids`, :meth:`from_lengths` or :meth:`evolve`. Offsets and
        labels are held as uint32 where they fit (labels always do: hnswlib's are 32-bit)."""
        self._blob = blob
        self._offsets: npt.NDArray[Any] = offsets.astype(np.uint32) if len(blob) < 2**32 else offsets
        self._hashes = hashes
        self._by_hash: npt.NDArray[Any] = by_hash.astype(np.uint32)
        self._live = len(by_hash)

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
        hashes = np.fromiter((hash(blob[s:e]) for s, e in zip(starts, ends, strict=True)), np.int64, len(live))
        order = np.argsort(hashes, kind="stable")
        table = cls(blob, offsets, hashes[order], live[order])
        table._check_unique(hashes[order])
        return table

    def evolve(self, dead: Iterable[int], added: Sequence[str]) -> IdTable:
        """A new table: this one with the labels in ``dead`` no longer live (their ids are
        forgotten; a label dead already is skipped) and ``added`` taking the next labels
        ``len(self) ..``. ValueError if an added id is live in the result twice."""
        dead_labels = np.unique(np.fromiter(dead, dtype=np.int64))
        blob, offsets, hashes, by_hash = self._blob, self._offsets, self._hashes, self._by_hash
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
            new_hashes = np.fromiter((hash(b) for b in encoded), dtype=np.int64, count=len(encoded))
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
        id, else a collision, so the bytes of every run of equal hashes are compared)."""
        same = np.flatnonzero(hashes[1:] == hashes[:-1])
        if not len(same):
            return
        runs: dict[int, set[int]] = {}
        for at in same.tolist():
            runs.setdefault(int(hashes[at]), set()).update((at, at + 1))
        for positions in runs.values():
            seen: dict[bytes, int] = {}
            for at in sorted(positions):
                label = int(self._by_hash[at])
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
        return len(self._blob) + self._offsets.nbytes + self._hashes.nbytes + self._by_hash.nbytes

    def _bytes(self, label: int) -> bytes:
        return self._blob[int(self._offsets[label]) : int(self._offsets[label + 1])]

    def id_of(self, label: int) -> str:
        """The id of ``label`` (``""`` when dead). IndexError outside ``0..len-1``."""
        if not 0 <= label < len(self):
            raise IndexError(f"label {label} outside 0..{len(self) - 1}")
        return self._bytes(label).decode()

    def ids_of(self, labels: npt.NDArray[np.integer[Any]]) -> npt.NDArray[np.object_]:
        """The ids of ``labels`` (any shape), as an object array of that shape; ``-1`` (a
        search's padding) and dead labels give ``""``."""
        flat = np.asarray(labels, dtype=np.int64).ravel()
        out = np.empty(len(flat), dtype=object)
        blob = self._blob
        safe = np.where(flat >= 0, flat, 0)
        starts = np.where(flat >= 0, self._offsets[safe], 0).tolist()
        ends = np.where(flat >= 0, self._offsets[safe + 1], 0).tolist()
        out[:] = [blob[s:e].decode() for s, e in zip(starts, ends, strict=True)]
        return out.reshape(np.shape(labels))

    def label_of(self, item: str) -> int | None:
        """The label of live id ``item``, None if it has none."""
        encoded = item.encode()
        hashes, h = self._hashes, hash(encoded)
        at = int(np.searchsorted(hashes, h))
        while at < len(hashes) and hashes[at] == h:
            label = int(self._by_hash[at])
            if self._bytes(label) == encoded:
                return label
            at += 1
        return None

    def __contains__(self, item: object) -> bool:
        return isinstance(item, str) and self.label_of(item) is not None

    def labels_of(self, items: Sequence[str]) -> Labels:
        """The label of each of ``items`` (``-1``: not live here), in order."""
        if not items:
            return np.empty(0, dtype=np.int64)
        encoded = [item.encode() for item in items]
        wanted = np.fromiter((hash(b) for b in encoded), dtype=np.int64, count=len(encoded))
        hashes = self._hashes
        at = np.minimum(np.searchsorted(hashes, wanted), max(0, len(hashes) - 1))
        out = np.full(len(items), -1, dtype=np.int64)
        if not len(hashes):
            return out
        hit = np.flatnonzero(hashes[at] == wanted)
        blob, offsets, by_hash = self._blob, self._offsets, self._by_hash
        for i in hit.tolist():
            label = int(by_hash[at[i]])
            if blob[int(offsets[label]) : int(offsets[label + 1])] == encoded[i]:
                out[i] = label
            else:  # a collision of hashes: the slow path looks at every entry with this hash
                found = self.label_of(items[i])
                out[i] = -1 if found is None else found
        return out

    def live_labels(self) -> Labels:
        """The live labels, ascending."""
        return np.flatnonzero(np.diff(self._offsets) > 0).astype(np.int64)

    def live_ids(self) -> Iterator[str]:
        """The live ids, in label order."""
        offsets, blob = self._offsets, self._blob
        for label in self.live_labels().tolist():
            yield blob[int(offsets[label]) : int(offsets[label + 1])].decode()

    def encoded(self) -> tuple[npt.NDArray[np.int64], bytes]:
        """(each label's id length in bytes, 0 when dead; the ids' bytes back to back): what
        :meth:`from_lengths` takes."""
        return np.diff(self._offsets).astype(np.int64), self._blob
