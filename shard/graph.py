"""The HNSW graph layer: a published graph's labels never change; its index may grow.

A compaction publishes the next graph by swapping a reference. With the native index
(``shard._vsnative``, float32) the next graph shares the current one's index: the fold adds the
new labels to it while it is searched (the native index's searches are safe beside its
``add_items``), and every graph passes its own element count as the search ``limit``, so it
never returns a label it does not hold. A label the fold supersedes stays in the index unmarked
while an older graph may still need it; the new graph hides it (``shadow_seq`` 0, counted in
``shadowed``) and the collection marks it deleted once those graphs are gone
(``Collection._mark_superseded``). Without the native index (hnswlib's bindings, whose searches
must not overlap an insert) and for int8 graphs, the fold builds a private index (a copy loaded
from the snapshot or made in memory, or a fresh build). A rebuild always starts a fresh index.

Labels are hnswlib integers; ``ids`` (an :class:`~shard.idtable.IdTable`, packed) maps them back
to external ids ("" for a label that is no longer live) and live ids to labels.

``shadow_seq[label]`` is the seq of the first newer write to that id held in a delta layer; a
reader at view seq ``v`` ignores a label with ``shadow_seq <= v`` (0: every reader). It is the
only field that changes after publication (written under the collection's write lock).

Search uses a fixed ``ef`` of 1 on the index and asks for ``max(k, ef)`` results instead, which
gives hnswlib's exact ``ef`` semantics without mutating shared state per request.

An int8 collection (``Quantization.INT8``, docs/quantization.md) has a graph whose index holds
one byte per dimension (``Int8Quantizer``, ``_vsnative``'s ``set_int8``) and ``full_rows``: the
float32 rows by label in ``vectors.f32`` (in the snapshot, or a private file of the fold before
the snapshot is written), read by ``RowsFile`` (``pread``, or a read-only map with
``VS_INT8_ROWS=mmap``). Its searches ask the index for
``max(ef, RESCORE_FACTOR * k)`` candidates and re-score the first ``RESCORE_FACTOR * k`` of them
exactly on ``full_rows``; ``vectors()`` reads ``full_rows``, so Get, scans and folds see exactly
the vectors written.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
import sys
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from core.errors import FailedPrecondition
from core.spec import CollectionSpec, Quantization
from core.vectors import Matrix
from shard import exact, hnsw
from shard.delta import NEVER
from shard.fields import FieldColumns, LayerIndex, decode_batch
from shard.hnsw import HnswIndex
from shard.idtable import IdTable
from shard.labelset import LabelSet

Labels = npt.NDArray[np.uint64]

RESCORE_FACTOR = 4
"""An int8 graph re-scores the ``RESCORE_FACTOR * k`` best candidates by code distance with the
float32 rows (and asks the index for at least that many)."""

ROWS_FILE = "vectors.f32"
"""An int8 graph's float32 rows, label-major, little-endian, no header (``elements * dim * 4``)."""


@dataclass(frozen=True)
class Int8Quantizer:
    """int8 codes ``round((x - lo) / scale)`` clamped to 0..255: a per-dimension offset ``lo``
    (float32 [dim]) and one ``scale`` > 0. Trained on the rows of a collection's first
    compaction and again at each rebuild (cosine rows are already normalised); later rows
    outside the trained range are clamped (re-scoring with the float32 rows keeps returned
    distances exact)."""

    lo: npt.NDArray[np.float32]
    scale: float

    @classmethod
    def train(cls, low: npt.NDArray[np.float32], high: npt.NDArray[np.float32]) -> Int8Quantizer:
        """From the per-dimension minimum and maximum of the training rows."""
        span = float(np.max(high - low)) if len(low) else 0.0
        scale = span / 255.0 if span > 0 and np.isfinite(span) else 1.0
        return cls(np.ascontiguousarray(low, dtype=np.float32), scale)

    def to_json(self) -> dict[str, object]:
        return {"lo": [float(v) for v in self.lo], "scale": self.scale}

    @classmethod
    def from_json(cls, data: object, dim: int) -> Int8Quantizer:
        """ValueError if ``data`` is not what :meth:`to_json` wrote for ``dim``."""
        if not isinstance(data, dict) or not isinstance(data.get("lo"), list) or len(data["lo"]) != dim:
            raise ValueError("int8 quantizer: malformed")
        scale = float(data["scale"])
        if not (scale > 0 and np.isfinite(scale)):
            raise ValueError("int8 quantizer: bad scale")
        return cls(np.asarray(data["lo"], dtype=np.float32), scale)


ROWS_MODE = os.environ.get("VS_INT8_ROWS", "pread")
"""How an int8 graph reads its float32 rows: ``pread`` (default: nothing of the file enters this
process's RSS; the kernel's page cache holds the hot rows) or ``mmap`` (a read-only map advised
``MADV_RANDOM``: no system call per row, but every page a search touched stays in the RSS,
file-backed, up to the whole file: bench/results/quantization.md). Read at import."""


class RowsFile:
    """The float32 rows of a ``ROWS_FILE`` by label (``count`` rows of ``dim``), read-only.
    Holds the file open until closed or collected, so a pruned snapshot's rows stay readable
    while a graph uses them. Thread-safe (``pread`` has no file offset)."""

    def __init__(self, path: Path, dim: int, count: int, mode: str = "") -> None:
        """ValueError if the file's size is not ``count * dim * 4`` bytes."""
        self._fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        self._close = weakref.finalize(self, os.close, self._fd)
        size = os.fstat(self._fd).st_size
        if size != count * dim * 4:
            self._close()
            raise ValueError(f"{path}: {size} bytes for {count} rows of {dim}")
        self.dim, self.count = dim, count
        self._map: Matrix | None = None
        if (mode or ROWS_MODE) == "mmap" and count:
            mapped = mmap.mmap(self._fd, size, access=mmap.ACCESS_READ)
            if hasattr(mmap, "MADV_RANDOM"):
                mapped.madvise(mmap.MADV_RANDOM)
            self._map = np.frombuffer(mapped, dtype="<f4").reshape(count, dim)

    def __len__(self) -> int:
        return self.count

    def take(self, labels: npt.NDArray[np.int64]) -> Matrix:
        """The rows of ``labels`` (1-D, each in ``[0, count)``), in order, as a new array."""
        if self._map is not None:
            return np.array(self._map[labels], dtype=np.float32)
        native = hnsw.read_rows(self._fd, labels, self.dim)
        if native is not None:
            return native if sys.byteorder == "little" else native.byteswap()
        out = np.empty((len(labels), self.dim), dtype=np.float32)
        fd, size = self._fd, 4 * self.dim
        for row, label in zip(out, labels.tolist(), strict=True):
            if os.preadv(fd, [row.data.cast("B")], label * size) != size:
                raise OSError(f"short read of row {label}")
        return out if sys.byteorder == "little" else out.byteswap()

    def read(self, lo: int, hi: int) -> Matrix:
        """Rows ``lo..hi-1`` (clipped to ``count``) in one read."""
        hi = min(hi, self.count)
        out = np.empty((max(0, hi - lo), self.dim), dtype=np.float32)
        if len(out) and os.preadv(self._fd, [out.data.cast("B")], lo * 4 * self.dim) != out.nbytes:
            raise OSError(f"short read of rows {lo}..{hi}")
        return out if sys.byteorder == "little" else out.byteswap()

    def close(self) -> None:
        self._map = None
        self._close()


# hnswlib 0.8 index file header (hnswalg.h saveIndex): offsetLevel0, max_elements,
# cur_element_count, size_data_per_element, label_offset, offsetData (size_t), maxlevel (int),
# enterpoint_node (uint32), maxM, maxM0, M (size_t), mult (double), ef_construction (size_t);
# then cur_element_count level-0 records of size_data_per_element bytes.
_HNSW_HEADER = struct.Struct("<QQQQQQiIQQQdQ")


class IndexFileRows:
    """The vectors of an hnswlib index file by label, read with ``pread`` into the caller's
    array: nothing of the file is mapped, so nothing of it stays in this process's RSS (a map
    keeps every page a gather touched resident, up to the graph's size again; on a filesystem
    with large folios even a few rows cost megabytes). Holds the file open until it is closed
    or collected: a pruned snapshot's rows stay readable while a graph still uses them.
    Thread-safe (``pread`` has no file offset)."""

    def __init__(
        self, path: Path, dim: int, record: int, data_offset: int, internal_of_label: npt.NDArray[np.int64]
    ) -> None:
        self._fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        self._close = weakref.finalize(self, os.close, self._fd)
        self.dim = dim
        self._record = record
        self._base = _HNSW_HEADER.size + data_offset
        self.internal_of_label = internal_of_label

    def rows(self, labels: npt.NDArray[np.int64]) -> Matrix:
        """Float32 rows of ``labels`` (each in ``[0, count)``), in order."""
        out = np.empty((len(labels), self.dim), dtype=np.float32)
        offsets = self.internal_of_label[labels] * self._record + self._base
        fd, size = self._fd, 4 * self.dim
        for row, at in zip(out, offsets.tolist(), strict=True):
            if os.preadv(fd, [row.data.cast("B")], at) != size:
                raise OSError(f"short read of a vector at offset {at}")
        return out if sys.byteorder == "little" else out.byteswap()

    def close(self) -> None:
        self._close()


def open_index_rows(path: Path, dim: int, count: int) -> IndexFileRows | None:
    """A reader of the vectors of the hnswlib index file at ``path`` by label, or None if its
    header does not describe ``count`` float32 vectors of ``dim`` labelled ``0..count-1``."""
    layout = _index_layout(path, dim, count)
    if layout is None:
        return None
    elements, record, label_offset, data_offset = layout
    labels = _read_labels(path, elements, record, label_offset)
    if labels is None or labels.max() >= count:
        return None
    internal_of_label = np.empty(count, dtype=np.int64)
    internal_of_label[labels.astype(np.int64)] = np.arange(elements)
    return IndexFileRows(path, dim, record, data_offset, internal_of_label)


def _index_layout(path: Path, dim: int, count: int) -> tuple[int, int, int, int] | None:
    """(elements, record size, label offset, vector offset) of an hnswlib index file holding
    ``count`` float32 vectors of ``dim``, else None."""
    try:
        with open(path, "rb") as handle:
            header = _HNSW_HEADER.unpack(handle.read(_HNSW_HEADER.size))
    except (OSError, struct.error):
        return None
    _, _, elements, record, label_offset, data_offset = header[:6]
    if elements != count or count == 0 or data_offset + 4 * dim > record or label_offset + 8 > record:
        return None
    if path.stat().st_size < _HNSW_HEADER.size + elements * record:
        return None
    return elements, record, label_offset, data_offset


def map_index_vectors(path: Path, dim: int, count: int) -> tuple[Matrix, npt.NDArray[np.int64]] | None:
    """(vectors by internal id, internal id by label) as views of an hnswlib index file, or
    None if the header does not describe ``count`` float32 vectors of ``dim`` (benchmarks: the
    shard reads rows with :class:`IndexFileRows`, which leaves nothing resident)."""
    layout = _index_layout(path, dim, count)
    if layout is None:
        return None
    elements, record, label_offset, data_offset = layout
    labels = _read_labels(path, elements, record, label_offset)
    if labels is None or labels.max() >= count:
        return None
    blob = np.memmap(path, dtype=np.uint8, mode="r", offset=_HNSW_HEADER.size, shape=(elements * record,))
    vectors: Matrix = np.ndarray((elements, dim), dtype="<f4", buffer=blob, offset=data_offset, strides=(record, 4))
    internal_of_label = np.empty(count, dtype=np.int64)
    internal_of_label[labels.astype(np.int64)] = np.arange(elements)
    return vectors, internal_of_label


def _read_labels(path: Path, elements: int, record: int, label_offset: int) -> npt.NDArray[np.uint64] | None:
    """The label of every level-0 record of an hnswlib index file, read in chunks of ~1 MiB."""
    per_chunk = max(1, (1 << 20) // record)
    out = np.empty(elements, dtype=np.uint64)
    buffer = np.empty(per_chunk * record, dtype=np.uint8)
    with open(path, "rb") as handle:
        handle.seek(_HNSW_HEADER.size)
        for lo in range(0, elements, per_chunk):
            count = min(per_chunk, elements - lo)
            view = buffer[: count * record]
            if handle.readinto(view.data) != len(view):
                return None
            out[lo : lo + count] = np.ndarray(
                (count,), dtype="<u8", buffer=view, offset=label_offset, strides=(record,)
            )
    return out


def check_quantization(spec: CollectionSpec) -> None:
    """FailedPrecondition if this process cannot serve ``spec``'s quantization (int8 needs
    ``shard._vsnative``)."""
    if spec.quantization is Quantization.INT8 and not hnsw.NATIVE:
        raise FailedPrecondition(
            "quantization INT8 needs the shard's native module (python -m shard.native.build; VS_NATIVE not 0)"
        )


def uninitialised_index(spec: CollectionSpec, quantizer: Int8Quantizer | None) -> HnswIndex:
    """An index for ``spec`` before ``init_index``/``load_index``: int8 codes when ``quantizer``
    is given (``spec`` must be INT8 then, and only then: ValueError)."""
    if (quantizer is not None) != (spec.quantization is Quantization.INT8):
        raise ValueError(f"collection {spec.name}: quantizer given for quantization {spec.quantization.name}")
    check_quantization(spec)
    index = hnsw.new_index(spec.metric.hnsw_space, spec.dimension)
    if quantizer is not None:
        index.set_int8(quantizer.lo, quantizer.scale)  # type: ignore[attr-defined]
    return index


def new_index(spec: CollectionSpec, capacity: int, quantizer: Int8Quantizer | None = None) -> HnswIndex:
    """An empty index for ``spec`` (``shard/hnsw.py``: the native class when it is built); int8
    codes with ``quantizer`` (required for, and only for, an INT8 spec)."""
    index = uninitialised_index(spec, quantizer)
    index.init_index(max_elements=max(1, capacity), M=spec.m, ef_construction=spec.ef_construction)
    index.set_ef(1)
    return index


def shares_index(spec: CollectionSpec, graph: Graph) -> bool:
    """Whether the next fold of ``graph`` (the published one) adds to ``graph.index`` itself
    (native float32 index) rather than to a private copy. Not when the index holds more than the
    graph (a fold that shared it failed part way): see :func:`index_is_dirty`."""
    return (
        spec.quantization is not Quantization.INT8
        and graph.full_rows is None
        and hnsw.is_native(graph.index)
        and not index_is_dirty(graph)
    )


def index_is_dirty(graph: Graph) -> bool:
    """Whether the published ``graph``'s index holds elements past the graph's own (added by a
    fold that failed): the next fold rebuilds it, and it cannot be snapshotted."""
    return bool(graph.index.element_count != graph.elements)


def reserve(index: HnswIndex, capacity: int) -> None:
    """Grows a native ``index`` to hold ``capacity`` elements, with an eighth more room so that
    small folds do not resize each time (the room is allocated, not touched: it costs no RSS
    until used). A resize holds this index's searches back for its duration: a few ms where the
    level-0 block is a mapping of the native module's (grown by mremap: ``bench/resize_stall.py``),
    else a copy of the whole block, once per eighth of growth."""
    if index.max_elements < capacity:
        index.resize_index(capacity + capacity // 8)


def mark_deleted(index: HnswIndex, labels: Iterable[int]) -> None:
    """Marks ``labels`` deleted in ``index``; a label marked already (or absent) is skipped."""
    for label in labels:
        with contextlib.suppress(RuntimeError):
            index.mark_deleted(label)


def copy_index(spec: CollectionSpec, graph: Graph, capacity: int) -> HnswIndex | None:
    """A private, mutable copy of ``graph``'s index with room for ``capacity`` elements, made in
    memory (``_vsnative``'s ``copy_from``: the same index as saving and loading it back, without
    the file); None where the index is not native (the caller loads the graph's snapshot). Safe
    while ``graph`` is searched; waits for an ``add_items`` in progress on its index."""
    if not hnsw.is_native(graph.index):
        return None
    index = uninitialised_index(spec, graph.quantizer)
    index.copy_from(graph.index, max(1, capacity))  # type: ignore[attr-defined]
    index.set_ef(1)
    return index


@dataclass(frozen=True)
class GraphFields:
    """A graph's filterable fields: ``columns`` (one row per label, what the next fold gathers
    from), their ``index``, the ``live`` labels, and how many live labels are ``legacy`` (an
    item written without a payload, so without fields)."""

    columns: FieldColumns
    index: LayerIndex
    live: LabelSet
    legacy: int


@dataclass
class Graph:
    index: HnswIndex
    ids: IdTable
    applied_seq: int
    # label -> the item's payload (b"": none); left empty when constructed: no item has one
    label_payloads: list[bytes] = field(default_factory=list)
    # label -> the item's version: the seq of the log record that wrote it (0: unknown, an item
    # from a snapshot written before versions were kept); left empty when constructed: all 0
    label_seq: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    # int8 graphs only: the index's quantizer and the float32 rows by label (every element,
    # deleted ones too), read from ``full_rows_path``
    quantizer: Int8Quantizer | None = None
    full_rows: RowsFile | None = None
    full_rows_path: Path | None = None
    shadow_seq: npt.NDArray[np.int64] = field(init=False)
    shadowed: int = 0

    def __post_init__(self) -> None:
        elements = len(self.ids)
        if not self.label_payloads:
            self.label_payloads = [b""] * elements
        elif len(self.label_payloads) != elements:
            raise ValueError(f"{len(self.label_payloads)} payloads for {elements} labels")
        if not len(self.label_seq):
            self.label_seq = np.zeros(elements, dtype=np.int64)
        elif len(self.label_seq) != elements:
            raise ValueError(f"{len(self.label_seq)} versions for {elements} labels")
        if (self.quantizer is None) != (self.full_rows is None):
            raise ValueError("an int8 graph needs both its quantizer and its float32 rows")
        if self.full_rows is not None and len(self.full_rows) != elements:
            raise ValueError(f"{len(self.full_rows)} float32 rows for {elements} labels")
        self.shadow_seq = np.full(max(1, elements), NEVER, dtype=np.int64)
        self._file_rows: IndexFileRows | None = None
        self._fields: GraphFields | None = None
        # Set by a fold that shared the index while labels it hides are not yet marked deleted
        # there (cleared by the collection once they are): searches then mask them out natively,
        # so they do not take result slots (hnswlib skips deleted labels the same way).
        self.unmarked_hidden = False
        self._live_mask: npt.NDArray[np.bool_] | None = None

    def index_fields(self, columns: FieldColumns | None = None) -> GraphFields:
        """Builds (once) the index of the labels' filterable fields from ``columns`` (one row per
        label) or else by decoding every label's payload (CorruptionError if one cannot be).
        Called before the graph is published; later calls return the same index."""
        if self._fields is None:
            if columns is None:
                columns = FieldColumns()
                columns.append(decode_batch(self.label_payloads, self.elements))
            elif columns.rows != self.elements:
                raise ValueError(f"field columns of {columns.rows} rows for {self.elements} labels")
            live = self.ids.live_labels()
            uri_present = columns.uri.view(self.elements)[1]
            legacy = int(self.live - np.count_nonzero(uri_present[live])) if self.live else 0
            self._fields = GraphFields(
                columns, LayerIndex.build(columns), LabelSet.from_labels(live, self.elements), legacy
            )
        return self._fields

    @property
    def fields(self) -> GraphFields:
        """The field index (built by ``index_fields``, here if it was not yet)."""
        return self._fields if self._fields is not None else self.index_fields()

    @property
    def elements(self) -> int:
        return len(self.ids)

    @property
    def live(self) -> int:
        return self.ids.live

    @property
    def deleted(self) -> int:
        return self.elements - self.live

    def shadow(self, label: int, seq: int) -> None:
        if self.shadow_seq[label] == NEVER:
            self.shadow_seq[label] = seq
            self.shadowed += 1

    def ids_of(self, labels: npt.NDArray[np.int64]) -> npt.NDArray[np.object_]:
        """The ids of ``labels`` (any shape; ``-1`` gives ``""``)."""
        return self.ids.ids_of(labels)

    def attach_file(self, path: Path) -> None:
        """Serves ``vectors`` from this graph's snapshot file (:class:`IndexFileRows`) when the
        index cannot copy rows out itself (``hnsw.can_gather``: an ``hnswlib.Index``).

        hnswlib 0.8's ``get_items`` costs ~40 us per label; a ``pread`` of the row is a few
        microseconds. The file is checked against ``get_items`` on a sample and not used if
        anything disagrees (e.g. another hnswlib file layout).
        """
        if self.full_rows is not None:
            return  # int8: the index file holds codes; full_rows serves the vectors
        if hnsw.can_gather(self.index):
            return  # ``vectors`` copies from the index itself (no file, no label -> offset table)
        rows = open_index_rows(path, self.index.dim, self.elements)
        if rows is None:
            return
        live = self.ids.live_labels()  # get_items refuses deleted
        if len(live) == 0:
            rows.close()
            return
        sample = live[np.unique(np.linspace(0, len(live) - 1, num=min(8, len(live))).astype(np.int64))]
        expected = np.asarray(self.index.get_items(sample.astype(np.uint64), return_type="numpy"), dtype=np.float32)
        if np.array_equal(rows.rows(sample), expected):
            self._file_rows = rows
        else:
            rows.close()

    def vectors(self, labels: list[int] | npt.NDArray[np.int64]) -> Matrix:
        """The stored vectors of live ``labels``: copied from the native index's own memory
        (``hnsw.gather``, no second copy resident), else read from the snapshot file
        (``attach_file``), else hnswlib's ``get_items``."""
        if len(labels) == 0:
            return np.empty((0, self.index.dim), dtype=np.float32)
        wanted = np.asarray(labels, dtype=np.int64)
        if self.full_rows is not None:
            return self.full_rows.take(wanted)
        rows = hnsw.gather(self.index, wanted)
        if rows is not None:
            return rows
        if self._file_rows is not None:
            return self._file_rows.rows(wanted)
        out = self.index.get_items(np.asarray(labels, dtype=np.uint64), return_type="numpy")
        return np.asarray(out, dtype=np.float32)

    def knn(
        self, queries: Matrix, k: int, ef: int, num_threads: int
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        """Top-``k`` live labels (hnswlib-deleted ones excluded) with candidate list ``max(ef, k)``.

        Returns fewer columns when the graph has fewer live elements. Falls back to exact
        search if hnswlib cannot fill the result (possible in a graph thinned by deletes).
        """
        k = min(k, self.live)
        if k <= 0:
            return np.empty((len(queries), 0), dtype=np.int64), np.empty((len(queries), 0), dtype=np.float32)
        rescore = self.full_rows is not None
        wanted = max(k * RESCORE_FACTOR if rescore else k, ef)
        try:
            if self.unmarked_hidden:  # native: navigated through, never returned, as deleted ones
                labels, distances = hnsw.knn_allowed(
                    self.index, queries, min(wanted, self.live), self.live_mask(), num_threads
                )
                if (labels < 0).any():
                    return self._exact(queries, k)
            elif hnsw.is_native(self.index):
                labels, distances = self.index.knn_query(
                    queries,
                    k=min(wanted, self.live),
                    num_threads=num_threads,
                    limit=self.elements,  # type: ignore[call-arg]
                )
            else:
                labels, distances = self.index.knn_query(queries, k=min(wanted, self.live), num_threads=num_threads)
        except RuntimeError:
            return self._exact(queries, k)
        if rescore:
            return self.rescore(queries, labels.astype(np.int64), k)
        return labels[:, :k], distances[:, :k]

    def live_mask(self) -> npt.NDArray[np.bool_]:
        """A bool mask over the graph's labels, True for the live ones (built once)."""
        if self._live_mask is None:
            mask = np.zeros(self.elements, dtype=np.bool_)
            mask[self.ids.live_labels()] = True
            self._live_mask = mask
        return self._live_mask

    def rescore(
        self, queries: Matrix, labels: npt.NDArray[np.int64], k: int
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        """int8 graphs: the ``k`` best of the first ``RESCORE_FACTOR * k`` columns of ``labels``
        (rows ordered by code distance, padded with -1) by exact distance on ``full_rows``, in
        ascending order; -1 / +inf padding stays last. ValueError on a graph without
        ``full_rows``."""
        if self.full_rows is None:
            raise ValueError("rescore needs an int8 graph")
        labels = labels[:, : max(k, k * RESCORE_FACTOR)]
        nq, width = labels.shape
        out_dist = np.full((nq, width), np.inf, dtype=np.float32)
        present = labels >= 0
        space = self.index.space
        step = max(1, 4096 // max(1, width))
        for lo in range(0, nq, step):
            block = labels[lo : lo + step]
            rows = self.full_rows.take(np.where(block >= 0, block, 0).ravel()).reshape(*block.shape, -1)
            if space == "l2":
                diff = rows - queries[lo : lo + step, None, :]
                dist = np.einsum("qcd,qcd->qc", diff, diff)
            else:
                dist = 1 - np.einsum("qcd,qd->qc", rows, queries[lo : lo + step])
            out_dist[lo : lo + step] = np.where(present[lo : lo + step], dist, np.inf)
        order = np.argsort(out_dist, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(labels, order, axis=1), np.take_along_axis(out_dist, order, axis=1)

    def _exact(self, queries: Matrix, k: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        labels = self.ids.live_labels()
        vectors = self.vectors(labels)
        order, best = exact.search(queries, vectors, self.index.space, k)
        return labels[order], best
