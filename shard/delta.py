"""The delta layer: writes not yet folded into the HNSW graph, searched exactly.

Rows are append-only and live in fixed-size blocks, so growing never copies rows (no stall
under the write lock, no over-allocation beyond one block). A superseded or deleted row gets
a ``dead_seq``. Readers never lock: they take a view sequence number ``v`` (the collection's
applied seq, read before the layers), then ``rows``, then the blocks, and see a row iff
``row_seq <= v < dead_seq``.

Thread-safety: one writer at a time (the collection's write lock); any number of readers.
After the collection seals a delta, only ``kill`` is still called on it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from core.vectors import Matrix
from shard.exact import squared_norms
from shard.fields import FieldColumns, Fields, decode_batch

NEVER = np.iinfo(np.int64).max
TOMBSTONE = -1
BLOCK_ROWS = 4096


class Block(NamedTuple):
    """A view of ``len(vectors)`` consecutive rows starting at row ``start``, with each row's
    squared norm when the delta keeps them (``exact.squared_norms``: an l2 scan then reads the
    rows once), else None."""

    start: int
    vectors: Matrix
    row_seq: npt.NDArray[np.int64]
    dead_seq: npt.NDArray[np.int64]
    norms: npt.NDArray[np.float32] | None

    def visible(self, view_seq: int) -> npt.NDArray[np.bool_]:
        return (self.row_seq <= view_seq) & (self.dead_seq > view_seq)


class Delta:
    def __init__(self, dimension: int, block_rows: int = BLOCK_ROWS, keep_norms: bool = False) -> None:
        """``keep_norms``: keep each row's squared norm (an l2 collection's delta; 4 bytes a row,
        computed once per append instead of once per search)."""
        self.dimension = dimension
        self.block_rows = block_rows
        self.keep_norms = keep_norms
        # per block: rows, row_seq, dead_seq, squared norms (None unless keep_norms)
        self._blocks: list[
            tuple[Matrix, npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.float32] | None]
        ] = []
        self.rows = 0
        self.ids: list[str] = []
        # payloads[row]: the row's payload (b"" when it has none); extended before ``rows`` grows.
        self.payloads: list[bytes] = []
        # id -> its newest row in this delta, or TOMBSTONE when deleted here.
        self.index: dict[str, int] = {}
        # id -> seq of the first operation on it in this delta (used to shadow older layers).
        self.first_seq: dict[str, int] = {}
        # the filterable fields of every row (shard/fields.py); appended before ``rows`` grows.
        self.columns = FieldColumns()

    def __len__(self) -> int:
        """Number of ids this delta has an operation for."""
        return len(self.index)

    # ------------------------------------------------------------------ writer side
    def append(
        self,
        ids: list[str],
        vectors: Matrix,
        seq: int,
        payloads: list[bytes] | None = None,
        fields: Sequence[Fields | None] | None = None,
    ) -> None:
        """Appends one row per id (ids unique), with its payload (None: none) and the payload's
        ``Fields`` (None: decoded here; CorruptionError if one cannot be). The caller has
        already killed older rows."""
        count = len(ids)
        start = self.rows
        self.columns.append(decode_batch(payloads, count) if fields is None else fields)
        done = 0
        while done < count:
            block, offset = divmod(start + done, self.block_rows)
            if block == len(self._blocks):
                self._blocks.append(
                    (
                        np.empty((self.block_rows, self.dimension), dtype=np.float32),
                        np.empty(self.block_rows, dtype=np.int64),
                        np.full(self.block_rows, NEVER, dtype=np.int64),
                        np.empty(self.block_rows, dtype=np.float32) if self.keep_norms else None,
                    )
                )
            take = min(self.block_rows - offset, count - done)
            block_vectors, row_seq, _, norms = self._blocks[block]
            block_vectors[offset : offset + take] = vectors[done : done + take]
            if norms is not None:
                norms[offset : offset + take] = squared_norms(block_vectors[offset : offset + take])
            row_seq[offset : offset + take] = seq
            done += take
        self.ids.extend(ids)
        self.payloads.extend(payloads if payloads is not None else [b""] * count)
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
        block, offset = divmod(row, self.block_rows)
        dead = self._blocks[block][2]
        if dead[offset] == NEVER:
            dead[offset] = seq

    # ------------------------------------------------------------------ reader side
    def blocks(self, rows: int | None = None) -> Iterator[Block]:
        """Views of the first ``rows`` rows (default: all published rows), block by block."""
        rows = self.rows if rows is None else rows
        blocks = self._blocks
        for number in range((rows + self.block_rows - 1) // self.block_rows):
            start = number * self.block_rows
            used = min(self.block_rows, rows - start)
            vectors, row_seq, dead_seq, norms = blocks[number]
            yield Block(start, vectors[:used], row_seq[:used], dead_seq[:used], None if norms is None else norms[:used])

    def vector(self, row: int) -> Matrix:
        block, offset = divmod(row, self.block_rows)
        return self._blocks[block][0][offset]

    def version(self, row: int) -> int:
        """The row's version: the seq of the log record that wrote it."""
        block, offset = divmod(row, self.block_rows)
        return int(self._blocks[block][1][offset])

    def live_rows(self, view_seq: int) -> npt.NDArray[np.intp]:
        """Row numbers visible at ``view_seq``."""
        parts = [np.flatnonzero(b.visible(view_seq)) + b.start for b in self.blocks()]
        return np.concatenate(parts) if parts else np.empty(0, dtype=np.intp)
