"""The delta layer: writes not yet folded into the HNSW graph, searched exactly.

Rows are append-only; a superseded or deleted row gets a ``dead_seq``. Readers never lock:
they take a view sequence number ``v`` (the collection's applied seq, read before the layers)
and see a row iff ``row_seq <= v < dead_seq``. Growing the arrays swaps in bigger copies, so a
reader holding the old arrays still sees every row below the count it read.

Thread-safety: one writer at a time (the collection's write lock); any number of readers.
After the collection seals a delta, only ``kill`` is still called on it.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from shard.vectors import Matrix

NEVER = np.iinfo(np.int64).max
TOMBSTONE = -1


class Delta:
    def __init__(self, dimension: int, capacity: int = 1024) -> None:
        self.dimension = dimension
        self._arrays = self._allocate(capacity)
        self.rows = 0
        self.ids: list[str] = []
        # id -> its newest row in this delta, or TOMBSTONE when deleted here.
        self.index: dict[str, int] = {}
        # id -> seq of the first operation on it in this delta (used to shadow older layers).
        self.first_seq: dict[str, int] = {}

    def _allocate(self, capacity: int) -> tuple[Matrix, npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        return (
            np.empty((capacity, self.dimension), dtype=np.float32),
            np.empty(capacity, dtype=np.int64),
            np.full(capacity, NEVER, dtype=np.int64),
        )

    @property
    def arrays(self) -> tuple[Matrix, npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """(vectors, row_seq, dead_seq); valid for rows below ``rows`` read before this."""
        return self._arrays

    def __len__(self) -> int:
        """Number of ids this delta has an operation for."""
        return len(self.index)

    def append(self, ids: list[str], vectors: Matrix, seq: int) -> None:
        """Appends one row per id (ids unique). The caller has already killed older rows."""
        count = len(ids)
        start = self.rows
        vecs, row_seq, dead_seq = self._arrays
        if start + count > len(row_seq):
            capacity = max(2 * len(row_seq), start + count)
            bigger = self._allocate(capacity)
            bigger[0][:start] = vecs[:start]
            bigger[1][:start] = row_seq[:start]
            bigger[2][:start] = dead_seq[:start]
            self._arrays = bigger
            vecs, row_seq, dead_seq = bigger
        vecs[start : start + count] = vectors
        row_seq[start : start + count] = seq
        self.ids.extend(ids)
        self.rows = start + count  # publish the rows only after their data is in place
        index = self.index
        first = self.first_seq
        for offset, item in enumerate(ids):
            index[item] = start + offset
            first.setdefault(item, seq)

    def tombstone(self, item: str, seq: int) -> None:
        self.index[item] = TOMBSTONE
        self.first_seq.setdefault(item, seq)

    def kill(self, row: int, seq: int) -> None:
        dead = self._arrays[2]
        if dead[row] == NEVER:
            dead[row] = seq

    def live_rows(self, view_seq: int) -> npt.NDArray[np.intp]:
        """Row numbers visible at ``view_seq``."""
        rows = self.rows
        _, row_seq, dead_seq = self._arrays
        visible = (row_seq[:rows] <= view_seq) & (dead_seq[:rows] > view_seq)
        return np.flatnonzero(visible)

    def vector(self, row: int) -> Matrix:
        return self._arrays[0][row]
