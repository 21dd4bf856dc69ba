"""The delta layer: writes not yet folded into the HNSW graph, searched exactly.

Rows are append-only and live in fixed-size blocks, so growing never copies rows (no stall
under the write lock, no over-allocation beyond one block). A superseded or deleted row gets
a ``dead_seq``. Readers never lock: they take a view sequence number ``v`` (the collection's
applied seq, read before the layers), then ``rows``, then the blocks, and see a row iff
``row_seq <= v < dead_seq``.

Thread-safety: one writer at a time (the collection's write lock); any number of readers.
After the collection seals a delta, only ``kill`` is still called on it.

A fold that publishes its graph in steps replaces the sealed delta in the view by its
``tail(first)``: the same rows, ids and payloads (shared, not copied), with the rows before
``first`` (held by the step's graph) left out of ``blocks`` and their whole blocks released once
no older view holds the delta they came from. ``index`` still names those rows: a row below
``first`` means "in the graph now" (``row_of`` answers None for it).
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


_BlockData = tuple[Matrix, npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.float32] | None]


class Delta:
    def __init__(self, dimension: int, block_rows: int = BLOCK_ROWS, keep_norms: bool = False) -> None:
        """``keep_norms``: keep each row's squared norm (an l2 collection's delta; 4 bytes a row,
        computed once per append instead of once per search)."""
        self.dimension = dimension
        self.block_rows = block_rows
        self.keep_norms = keep_norms
        # per block: rows, row_seq, dead_seq, squared norms (None unless keep_norms)
        self._blocks: list[_BlockData | None] = []  # None: released by ``tail`` (wholly before ``first``)
        self.rows = 0
        self.first = 0  # rows before it are not this layer's any more (``tail``)
        self.folded = 0  # ids of ``index`` whose row lies before ``first``
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
        """Number of ids this delta has an operation for that is not in a graph yet (``tail``)."""
        return len(self.index) - self.folded

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
            block_vectors, row_seq, _, norms = self._data(block)
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
        """Hides ``row`` (at or after ``first``) from reads at seq >= ``seq``."""
        block, offset = divmod(row, self.block_rows)
        dead = self._data(block)[2]
        if dead[offset] == NEVER:
            dead[offset] = seq

    def tail(self, first: int, folded: int = 0) -> Delta:
        """This sealed delta without its rows before ``first`` (>= ``self.first``, <= ``rows``),
        ``folded`` of whose ids (the live ones: one row each) are in a graph now: a new object
        sharing the rows, ids, payloads, index and columns; blocks wholly before ``first`` are not
        referenced by it. For a sealed delta only (no appends after)."""
        if not self.first <= first <= self.rows:
            raise ValueError(f"tail from row {first} of a delta holding rows {self.first}..{self.rows}")
        if not self.folded <= folded <= len(self.index):
            raise ValueError(f"{folded} folded ids of a delta with {len(self.index)} ids, {self.folded} folded")
        out = Delta.__new__(Delta)
        out.__dict__.update(self.__dict__)
        out.first, out.folded = first, folded
        kept = first // self.block_rows  # blocks before it hold only rows before ``first``
        out._blocks = [None if number < kept else data for number, data in enumerate(self._blocks)]
        return out

    def row_of(self, item: str) -> int | None:
        """``item``'s newest row in this layer, TOMBSTONE if deleted here, None if this layer has
        no operation on it or its row lies before ``first`` (in a graph now, ``tail``)."""
        row = self.index.get(item)
        if row is None or row == TOMBSTONE or row >= self.first:
            return row
        return None

    def _data(self, block: int) -> _BlockData:
        data = self._blocks[block]
        if data is None:
            raise IndexError(f"block {block} of this delta was released (rows before {self.first})")
        return data

    # ------------------------------------------------------------------ reader side
    def blocks(self, rows: int | None = None) -> Iterator[Block]:
        """Views of rows ``first`` .. ``rows - 1`` (default: all published rows), block by block
        (the first view starts at ``first``)."""
        rows = self.rows if rows is None else rows
        lo = self.first
        while lo < rows:
            hi = min(rows, (lo // self.block_rows + 1) * self.block_rows)
            yield self.span(lo, hi)
            lo = hi

    def span(self, lo: int, hi: int) -> Block:
        """A view of rows ``lo`` .. ``hi - 1``: published, at or after ``first``, in one block."""
        number, offset = divmod(lo, self.block_rows)
        if not (self.first <= lo <= hi <= self.rows and hi - lo <= self.block_rows - offset):
            raise ValueError(f"rows {lo}..{hi} are not one block's of rows {self.first}..{self.rows}")
        vectors, row_seq, dead_seq, norms = self._data(number)
        end = offset + hi - lo
        part = None if norms is None else norms[offset:end]
        return Block(lo, vectors[offset:end], row_seq[offset:end], dead_seq[offset:end], part)

    def vector(self, row: int) -> Matrix:
        block, offset = divmod(row, self.block_rows)
        return self._data(block)[0][offset]

    def version(self, row: int) -> int:
        """The row's version: the seq of the log record that wrote it."""
        block, offset = divmod(row, self.block_rows)
        return int(self._data(block)[1][offset])

    def live_rows(self, view_seq: int) -> npt.NDArray[np.intp]:
        """Row numbers visible at ``view_seq``."""
        parts = [np.flatnonzero(b.visible(view_seq)) + b.start for b in self.blocks()]
        return np.concatenate(parts) if parts else np.empty(0, dtype=np.intp)
