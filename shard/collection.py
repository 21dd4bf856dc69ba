"""One collection of a shard: write-ahead log + delta layers + HNSW graph, with recovery.

Contracts
---------
* Durability: ``upsert``/``delete`` return only after their WAL record is fsynced (default
  policy). Each call is one record, so a batch is all-or-nothing after a crash.
* Ordering: writes are serialised by ``_write_lock``; the WAL seq order is the apply order.
* Reads (``search``, ``get``) take no lock. A read first takes the applied seq ``v`` and then
  the current layers, and sees exactly the writes with seq <= max(v, the layers' ``floor``)
  (see delta.py and graph.py): a graph published by a fold shows every write up to the fold's
  seal seq to every reader, so a reader whose ``v`` is older reads at that seal seq (every
  write up to it was applied before the layers were published).
* Compaction (``compact``) seals the active delta, builds the next graph (adding to the
  published graph's own native index and publishing a graph every few thousand rows, else
  privately: an in-memory copy, a loaded snapshot, or a rebuild) and swaps it in; searches and writes go on
  meanwhile (writes wait only for the brief seal and publish steps). One compaction runs at a
  time. A checkpoint writes the published graph's snapshot and truncates the log behind it: on
  every explicit ``compact()``, and for background folds (``compact(background=True)``) once
  ``checkpoint_rows``/``checkpoint_age_s`` say so (every fold where the graph cannot be copied
  in memory, or for int8 collections). Between checkpoints the log holds every write since the
  newest snapshot, so recovery is unchanged.
* Recovery (``open``): newest snapshot that verifies, then the WAL after it. If the WAL does
  not reach back to that snapshot, the collection refuses to open (CorruptionError).
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from core.errors import CorruptionError, FailedPrecondition, InvalidArgument, OutOfRange, Unavailable
from core.filters import Filter
from core.keyranges import RangeSet
from core.spec import MAX_EF, MAX_GET_IDS, MAX_K, CollectionSpec, Metric, Quantization
from core.vectors import Batch, Matrix, Queries, prepare_batch, prepare_queries, validate_ids
from shard import exact, heap, hnsw, memtrace, planner, records, snapshot
from shard.delta import TOMBSTONE, Delta
from shard.fields import FieldColumns, Fields, decode_batch
from shard.fsutil import atomic_write, fsync_dir
from shard.graph import (
    Graph,
    Int8Quantizer,
    RowsFile,
    check_quantization,
    copy_index,
    index_is_dirty,
    mark_deleted,
    new_index,
    reserve,
    shares_index,
)
from shard.idtable import IdTable
from shard.labelset import LabelSet
from shard.metrics import COMPACTION_FAILURES, COMPACTION_SECONDS
from shard.types import (
    CollectionStats,
    CompactResult,
    Fetched,
    KeyRange,
    QueryHits,
    ScanBatch,
    SearchReply,
    SearchStats,
    WriteResult,
)
from shard.wal import FsyncPolicy, Wal, WalOptions

log = logging.getLogger(__name__)

SPEC_FILE = "spec.json"
# Test hook (fault injection): seconds to pause at two points inside every compaction, so crash
# tests can kill the process mid-compaction. Never set in production.
_FAULT_COMPACT_PAUSE_S = float(os.environ.get("VS_SHARD_FAULT_COMPACT_PAUSE_S", "0") or 0)
_INF = np.float32(np.inf)
_BUILD_CHUNK = 8192
_FOLD_STEPS = 32  # a shared fold publishes a graph at least every 1/_FOLD_STEPS of the graph's size
MAX_SCAN_BATCH = 65_536


@dataclass(frozen=True)
class CollectionOptions:
    wal: WalOptions = field(default_factory=WalOptions)
    compact_delta_items: int = 2_500
    compact_age_s: float = 30.0
    rebuild_deleted_ratio: float = 0.2
    build_threads: int = os.cpu_count() or 1
    search_threads: int = os.cpu_count() or 1
    exact_allow_max: int = 20_000
    plan_costs: planner.PlanCosts = field(default_factory=planner.PlanCosts)
    snapshots_kept: int = 2
    # a shared fold (native float32 index) publishes a graph every max(fold_step_rows, graph / 32)
    # rows of the sealed delta it adds, so searches scan fewer rows exactly and the folded
    # rows' delta blocks can go before the fold ends; 0: one graph at the end
    fold_step_rows: int = 1_024
    # added to the nice value of the background compactor thread and its build threads
    # (``shard.sched``): searches and writes get the cores first while a fold runs; 0: unchanged
    compact_nice: int = 10
    # a background fold also checkpoints (snapshot + log truncation) once the rows folded since
    # the newest snapshot reach max(checkpoint_rows, a quarter of the graph), or the graph has
    # gone unsnapshotted for checkpoint_age_s; 0 rows: every fold checkpoints
    checkpoint_rows: int = 20_000
    checkpoint_age_s: float = 60.0


class _Folded(NamedTuple):
    """A fold's new graph; whether it was a rebuild of an existing graph; whether it shares the
    previous graph's index; the labels it superseded there, still unmarked (shared only)."""

    graph: Graph
    rebuilt: bool
    shared: bool
    superseded: list[int]


class _View(NamedTuple):
    graph: Graph | None
    sealed: Delta | None
    active: Delta
    floor: int = 0  # readers of these layers read at seq >= floor (the seal seq of the fold that published them)


class Collection:
    def __init__(self, directory: Path, spec: CollectionSpec, options: CollectionOptions) -> None:
        self.directory = directory
        self.spec = spec
        self.options = options
        self._write_lock = threading.Lock()
        self._compact_lock = threading.Lock()
        self._view = _View(None, None, self._new_delta())
        self._applied_seq = 0
        self._sealed_seq = 0
        self._live = 0
        self._legacy = 0  # live items without a payload (written before payloads): no fields
        self._snapshots: list[snapshot.SnapshotInfo] = []
        # rows folded into graphs since the newest snapshot, and when the first of them was
        # published (None: the published graph is the newest snapshot's, or there is none)
        self._unsnapshotted_rows = 0
        self._unsnapshotted_since: float | None = None
        self._active_since: float | None = None
        self._compactions = 0
        self._compacting = False
        self._closed = False
        self._wal: Wal | None = None
        # The smallest WAL seq a pin keeps (``shard.control``); set by the registry. Log
        # truncation never drops a record at or after it. ``_prune_lock`` orders truncation
        # against ``hold_wal``.
        self.pin_floor: Callable[[], int | None] | None = None
        self._prune_lock = threading.Lock()
        # Graphs published on the current graph's index (a fold that shares it appends; one that
        # builds a new index starts over), and the labels folds superseded in it, each with the
        # graphs that may still return them: marked deleted once those are gone. Compaction only.
        self._index_graphs: list[weakref.ref[Graph]] = []
        self._superseded: list[tuple[list[weakref.ref[Graph]], list[int]]] = []

    # ================================================================== lifecycle
    @classmethod
    def create(cls, directory: Path, spec: CollectionSpec, options: CollectionOptions) -> Collection:
        """Creates the on-disk collection at ``directory`` (must not exist) and opens it.
        FailedPrecondition, before anything is written, for a quantization this process cannot
        serve (int8 without the native module)."""
        check_quantization(spec)
        staging = directory.with_name(f".creating-{directory.name}")
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir(parents=True)
        atomic_write(staging / SPEC_FILE, spec.to_json().encode())
        os.rename(staging, directory)
        fsync_dir(directory.parent)
        return cls.open(directory, options)

    @classmethod
    def read_spec(cls, directory: Path) -> CollectionSpec:
        return CollectionSpec.from_json((directory / SPEC_FILE).read_text())

    @classmethod
    def open(cls, directory: Path, options: CollectionOptions) -> Collection:
        spec = cls.read_spec(directory)
        check_quantization(spec)
        self = cls(directory, spec, options)
        graph, kept = snapshot.load_newest(self._snapshot_dir, spec)
        base_seq = graph.applied_seq if graph is not None else 0
        if graph is not None:
            self._view = _View(graph, None, self._view.active)
            self._live = graph.live
            self._legacy = graph.index_fields().legacy
        self._snapshots = kept if graph is not None else []
        self._applied_seq = base_seq

        def replay(seq: int, version: int, payload: bytes) -> None:
            if seq > base_seq:
                self._apply(seq, records.decode(payload, version))

        wal = Wal.open(self._wal_dir, options.wal, replay, start_seq=base_seq + 1)
        if wal.first_seq > base_seq + 1 or wal.next_seq <= base_seq:
            wal.close()
            covered = f"snapshot at seq {base_seq}" if graph is not None else "no valid snapshot"
            raise CorruptionError(
                f"collection {spec.name}: {covered}, but the write-ahead log holds seqs "
                f"{wal.first_seq}..{wal.next_seq - 1}; records in between are lost. Refusing to start: "
                f"restore {directory} from a backup or drop the collection"
            )
        self._wal = wal
        if len(self._view.active):
            self._active_since = time.monotonic()
        log.info(
            "collection %s: recovered snapshot seq %d + log up to seq %d (%d live items)",
            spec.name,
            base_seq,
            self._applied_seq,
            self._live,
        )
        return self

    @property
    def _snapshot_dir(self) -> Path:
        return self.directory / "snapshots"

    @property
    def _wal_dir(self) -> Path:
        return self.directory / "wal"

    def close(self) -> None:
        """Stops writes, waits for a running compaction and closes the log (fsyncing it)."""
        with self._write_lock:
            if self._closed:
                return
            self._closed = True
        with self._compact_lock:
            if self._wal is not None:
                self._wal.close()

    def _new_delta(self) -> Delta:
        """An empty delta layer; an l2 collection's keeps its rows' squared norms (exact.py)."""
        return Delta(self.spec.dimension, keep_norms=self.spec.metric is Metric.L2)

    def _check_open(self) -> Wal:
        if self._closed or self._wal is None:
            raise Unavailable(f"collection {self.spec.name} is closed")
        return self._wal

    # ================================================================== writes
    def upsert(self, ids: Sequence[str], vectors: Matrix) -> tuple[int, int]:
        """Validates, logs and applies a batch; returns (seq, distinct ids). Last duplicate wins."""
        result = self.upsert_batch(prepare_batch(ids, vectors, self.spec))
        return result.seq, result.count

    def upsert_batch(self, batch: Batch, guard: Callable[[Sequence[str]], None] | None = None) -> WriteResult:
        """Logs and applies an already validated batch (see ``core.vectors.Batch``).
        InvalidArgument, with nothing logged, if a payload is not a readable item payload
        (``vsproto/payload.py``). ``guard``, when given, is called with the ids under the write
        lock before anything is logged; what it raises refuses the write (write fences)."""
        try:
            fields = decode_batch(batch.payloads, len(batch.ids))
        except CorruptionError as exc:
            raise InvalidArgument(f"payload: {exc}") from exc
        op = records.UpsertOp(batch.ids, batch.vectors, batch.payloads)
        payload = records.encode(op)
        with self._write_lock:
            wal = self._check_open()
            if guard is not None:
                guard(batch.ids)
            seq = wal.write(payload)
            self._apply(seq, op, fields)
        self._await_durable(wal, seq)
        return WriteResult(seq, len(batch))

    def delete(self, ids: Sequence[str]) -> tuple[int, int]:
        """Logs and applies a delete of the ids that exist; returns (seq or 0, count)."""
        result = self.delete_ids(ids)
        return result.seq, result.count

    def delete_ids(self, ids: Sequence[str], guard: Callable[[Sequence[str]], None] | None = None) -> WriteResult:
        """As :meth:`delete`, returning a ``WriteResult`` (seq 0 when no id existed).
        ``guard`` as in :meth:`upsert_batch` (called with every requested id, existing or not)."""
        id_list = list(dict.fromkeys(validate_ids(ids)))
        with self._write_lock:
            wal = self._check_open()
            if guard is not None:
                guard(id_list)
            view = self._view
            existing = [item for item in id_list if self._locate(item, view) is not None]
            if not existing:
                return WriteResult(0, 0)
            op = records.DeleteOp(existing)
            seq = wal.write(records.encode(op))
            self._apply(seq, op)
        self._await_durable(wal, seq)
        return WriteResult(seq, len(existing))

    def write_barrier(self) -> None:
        """Returns once every write that took the write lock before this call has been logged
        and applied: a check its guard made is then seen by every later write."""
        with self._write_lock:
            pass

    def _await_durable(self, wal: Wal, seq: int) -> None:
        if self.options.wal.fsync is FsyncPolicy.ALWAYS:
            wal.sync(seq)

    def _apply(self, seq: int, op: records.Op, fields: list[Fields | None] | None = None) -> None:
        """Applies one logged op to the layers, with the upsert's decoded payload fields (None:
        decoded here). Caller holds the write lock (or is recovering)."""
        view = self._view
        active = view.active
        graph_labels = [-1] * len(op.ids) if view.graph is None else view.graph.ids.labels_of(op.ids).tolist()
        if isinstance(op, records.UpsertOp):
            existed = legacy = 0  # ids that had a live version; change in items without payload
            for item, label in zip(op.ids, graph_labels, strict=True):
                old = self._supersede(item, seq, view, label)
                if old is not None:
                    existed += 1
                    if old == b"":
                        legacy -= 1
            active.append(op.ids, op.vectors, seq, op.payloads, fields)
            legacy += len(op.ids) if op.payloads is None else op.payloads.count(b"")
            self._live += len(op.ids) - existed
            self._legacy += legacy
        else:
            for item, label in zip(op.ids, graph_labels, strict=True):
                old = self._supersede(item, seq, view, label)
                if old is not None:
                    active.tombstone(item, seq)
                    self._live -= 1
                    if old == b"":
                        self._legacy -= 1
        if self._active_since is None:
            self._active_since = time.monotonic()
        self._applied_seq = seq  # last: readers that see this seq see the whole op

    @staticmethod
    def _supersede(item: str, seq: int, view: _View, label: int) -> bytes | None:
        """Hides the current version of ``item`` (if any) from reads at seq >= ``seq``;
        ``label`` is its label in ``view``'s graph (-1: none, or no graph).

        Returns that version's payload (b"": none), None if the id had no live version.
        """
        row = view.active.index.get(item)
        if row is not None:
            if row == TOMBSTONE:
                return None
            view.active.kill(row, seq)
            return view.active.payloads[row]
        sealed = view.sealed
        if sealed is not None:
            row = sealed.row_of(item)  # None too when a step of the running fold put it in the graph
            if row is not None:
                # The graph label (if any) was shadowed when the sealed delta took this id.
                if row == TOMBSTONE:
                    return None
                sealed.kill(row, seq)
                return sealed.payloads[row]
        graph = view.graph
        if graph is not None and label >= 0:
            graph.shadow(label, seq)
            return graph.label_payloads[label]
        return None

    # ================================================================== reads
    @staticmethod
    def _locate(item: str, view: _View) -> tuple[Delta, int] | tuple[Graph, int] | None:
        """Where the newest version of ``item`` lives (layer, row or label), None if absent."""
        for layer in (view.active, view.sealed):
            if layer is None:
                continue
            row = layer.row_of(item)
            if row is not None:
                return None if row == TOMBSTONE else (layer, row)
        if view.graph is not None:
            label = view.graph.ids.label_of(item)
            if label is not None:
                return view.graph, label
        return None

    def get(self, ids: Sequence[str]) -> tuple[list[str], Matrix, list[str]]:
        """Returns (found ids, their vectors, missing ids), in request order."""
        fetched = self.fetch(ids)
        return fetched.ids, fetched.vectors, fetched.missing

    def fetch(self, ids: Sequence[str]) -> Fetched:
        """The found ids in request order with their vectors, payloads and versions, and the
        missing ids. Each id's vector, payload and version come from one view, so from one write."""
        id_list = validate_ids(ids)
        if len(id_list) > MAX_GET_IDS:
            raise InvalidArgument(f"at most {MAX_GET_IDS} ids per Get, got {len(id_list)}")
        view = self._view
        found: list[str] = []
        payloads: list[bytes] = []
        versions: list[int] = []
        missing: list[str] = []
        matrix = np.empty((len(id_list), self.spec.dimension), dtype=np.float32)
        graph_rows: list[int] = []
        graph_labels: list[int] = []
        for item in id_list:
            where = self._locate(item, view)
            if where is None:
                missing.append(item)
                continue
            layer, position = where
            if isinstance(layer, Delta):
                matrix[len(found)] = layer.vector(position)
                payloads.append(layer.payloads[position])
                versions.append(layer.version(position))
            else:
                graph_rows.append(len(found))
                graph_labels.append(position)
                payloads.append(layer.label_payloads[position])
                versions.append(int(layer.label_seq[position]))
            found.append(item)
        if graph_labels and view.graph is not None:
            matrix[graph_rows] = view.graph.vectors(graph_labels)  # one hnswlib call for the batch
        return Fetched(found, matrix[: len(found)], missing, payloads, versions)

    def search(self, queries: Matrix, k: int, ef: int = 0, allow_ids: Sequence[str] | None = None) -> list[QueryHits]:
        """Top-k per query over graph + delta layers, nearest first; ``queries`` are checked
        and prepared for the metric first (see :meth:`search_queries`)."""
        return self.search_queries(prepare_queries(queries, self.spec), k, ef, allow_ids)

    def search_queries(
        self, queries: Queries, k: int, ef: int = 0, allow_ids: Sequence[str] | None = None
    ) -> list[QueryHits]:
        """Top-k per query over graph + delta layers, nearest first, for validated queries."""
        return self.plan_search(queries, k, ef, allow_ids=allow_ids).hits

    def plan_search(
        self,
        queries: Queries,
        k: int,
        ef: int = 0,
        *,
        allow_ids: Sequence[str] | None = None,
        filter: Filter | None = None,
        explain: bool = False,
    ) -> SearchReply:
        """Top-k per query over graph + delta layers, nearest first, among the items matching
        ``filter`` (planned per query, ``shard/planner.py``) or listed in ``allow_ids``; with
        ``SearchStats`` when ``explain``. Sees every write applied before the call.

        InvalidArgument for a bad k or ef, or for a filter together with allow_ids;
        FailedPrecondition for a filter while the collection holds items without a payload
        (``CollectionStats.legacy_items``): the shard cannot judge those."""
        if not 1 <= k <= MAX_K:
            raise InvalidArgument(f"k must be in 1..{MAX_K}, got {k}")
        if not 0 <= ef <= MAX_EF:
            raise InvalidArgument(f"ef must be in 0..{MAX_EF} (0 = collection default), got {ef}")
        if filter is not None and allow_ids:
            raise InvalidArgument("a search takes a filter or allow_ids, not both")
        started = time.perf_counter()
        ef = ef or self.spec.ef_search
        prepared = queries.vectors
        view_seq = self._applied_seq  # read before the layers (see module docstring)
        view = self._view
        view_seq = max(view_seq, view.floor)
        if allow_ids:
            allowed = validate_ids(allow_ids, "allow_ids")
            return SearchReply(self._search_allowed(prepared, k, ef, allowed, view_seq, view))
        if filter is not None and self._legacy:
            raise FailedPrecondition(
                f"collection {self.spec.name} holds {self._legacy} items written without metadata "
                "payloads; the shard cannot filter them until they are rewritten"
            )
        nq = len(prepared)
        graph = view.graph
        plan, matched, scored, candidates, widenings = planner.PLAN_EMPTY, 0, 0, 0, 0
        parts = []
        if graph is not None and graph.live:
            if filter is None:
                plan, part = planner.PLAN_GRAPH, None
            else:
                threads = min(nq, self.options.search_threads)
                outcome = planner.search_graph(
                    graph, filter, prepared, k, max(ef, k), view_seq, self.options.plan_costs, threads
                )
                plan, matched, part = outcome.plan, outcome.matched, outcome.part
                scored, candidates, widenings = outcome.scored, outcome.candidates, outcome.widenings
            if part is None:
                part = self._search_graph(prepared, k, ef, view_seq, graph)
                candidates = max(ef, k)
            parts.append(part)
        in_delta = 0
        space, threads = self.spec.metric.hnsw_space, self.options.search_threads
        for layer in (view.sealed, view.active):
            if layer is not None and layer.rows:
                part, count = planner.search_delta(layer, filter, prepared, k, view_seq, space, threads)
                parts.append(part)
                in_delta += count
        if plan == planner.PLAN_EMPTY and in_delta:
            plan = planner.PLAN_EXACT
        hits = _merge(parts, k, nq)
        if not explain:
            return SearchReply(hits)
        micros = int((time.perf_counter() - started) * 1e6)
        # unfiltered: every live item matches (graph labels superseded in a delta count once)
        total = matched + in_delta if filter is not None else self._live
        return SearchReply(hits, SearchStats(plan, total, in_delta, scored + in_delta, candidates, widenings, micros))

    def _search_graph(
        self, queries: Matrix, k: int, ef: int, view_seq: int, graph: Graph | None
    ) -> tuple[npt.NDArray[np.object_], npt.NDArray[np.float32]]:
        nq = len(queries)
        if graph is None or graph.live == 0:
            return np.empty((nq, 0), dtype=object), np.empty((nq, 0), dtype=np.float32)
        threads = min(nq, self.options.search_threads)
        shadowed = graph.shadowed
        extra = min(shadowed, max(k, 16))
        labels, dist = graph.knn(queries, k + extra, ef, threads)
        if shadowed == 0:
            return graph.ids_of(labels), dist
        valid = graph.shadow_seq[labels] > view_seq
        if shadowed > extra and labels.shape[1] < graph.live:
            short = valid.sum(axis=1) < min(k, graph.live - shadowed)
            if short.any():  # many hidden labels near these queries: ask for all of them
                labels, dist = graph.knn(queries, k + shadowed, ef, threads)
                valid = graph.shadow_seq[labels] > view_seq
        dist = np.where(valid, dist, _INF)
        return graph.ids_of(labels), dist

    def _search_delta(
        self,
        queries: Matrix,
        k: int,
        view_seq: int,
        layer: Delta,
        allowed: set[str] | None,
    ) -> tuple[npt.NDArray[np.object_], npt.NDArray[np.float32]]:
        rows = layer.rows  # before the blocks (see delta.py)
        blocks = list(layer.blocks(rows))
        if not blocks:
            return np.empty((len(queries), 0), dtype=object), np.empty((len(queries), 0), dtype=np.float32)
        shown = np.concatenate([b.visible(view_seq) for b in blocks])
        if allowed is not None:
            first = blocks[0].start
            listed = (item in allowed for item in layer.ids[first:rows])
            shown &= np.fromiter(listed, dtype=bool, count=rows - first)
        space, threads = self.spec.metric.hnsw_space, self.options.search_threads
        return planner.scan_delta(layer, blocks, shown, queries, k, space, threads)

    def _search_allowed(
        self, queries: Matrix, k: int, ef: int, allowed: list[str], view_seq: int, view: _View
    ) -> list[QueryHits]:
        graph = view.graph
        allowed_set = set(allowed)
        if len(allowed_set) > self.options.exact_allow_max and graph is not None and graph.live:
            parts = [self._search_graph_filtered(queries, k, ef, allowed_set, view_seq, graph)]
            for layer in (view.sealed, view.active):
                if layer is not None and layer.rows:
                    parts.append(self._search_delta(queries, k, view_seq, layer, allowed_set))
            return _merge(parts, k, len(queries))
        # Candidates in id order, so ties come out deterministically.
        delta_names: list[str] = []
        delta_rows: list[Matrix] = []
        graph_names: list[str] = []
        graph_labels: list[int] = []
        active_index = view.active.index
        for item in sorted(allowed_set):
            row = active_index.get(item)
            layer = view.active
            if row is None and view.sealed is not None:
                row = view.sealed.row_of(item)
                layer = view.sealed
            if row is None:
                label = graph.ids.label_of(item) if graph is not None else None
                if label is not None:
                    graph_names.append(item)
                    graph_labels.append(label)
            elif row != TOMBSTONE:
                delta_names.append(item)
                delta_rows.append(layer.vector(row))
        names = graph_names + delta_names
        if not names:
            return [QueryHits([], np.empty(0, dtype=np.float32)) for _ in range(len(queries))]
        blocks = []
        if graph is not None and graph_labels:
            blocks.append(graph.vectors(graph_labels))
        if delta_rows:
            blocks.append(np.stack(delta_rows))
        order, best = exact.search(queries, blocks, self.spec.metric.hnsw_space, k)
        name_arr = np.array(names, dtype=object)
        return _merge([(name_arr[order], best)], k, len(queries))

    def _search_graph_filtered(
        self, queries: Matrix, k: int, ef: int, allowed: set[str], view_seq: int, graph: Graph
    ) -> tuple[npt.NDArray[np.object_], npt.NDArray[np.float32]]:
        """The graph's part of an allow-list search: the listed ids' visible labels, planned as a
        filter's matches are (``planner.search_allowed``)."""
        universe = planner.graph_universe(graph, view_seq)
        labels = graph.ids.labels_of(list(allowed))
        listed = LabelSet.from_labels(labels[labels >= 0], graph.elements) & universe
        threads = min(len(queries), self.options.search_threads)
        outcome = planner.search_allowed(
            graph, listed, universe.count, queries, k, max(ef, k), self.options.plan_costs, threads
        )
        if outcome.part is None:  # every visible label is listed
            return self._search_graph(queries, k, ef, view_seq, graph)
        return outcome.part

    def scan(self, ranges: Sequence[KeyRange] = (), batch_size: int = 1024) -> Iterator[ScanBatch]:
        """Every item live at the moment of the call whose id hash falls in one of ``ranges``
        (all items when empty), in batches of at most ``batch_size``, with the applied seq of
        that moment: writes applied later are not seen. Takes no lock; writes and compaction
        go on meanwhile (the layers of the moment stay readable while this holds them)."""
        if not 1 <= batch_size <= MAX_SCAN_BATCH:
            raise InvalidArgument(f"batch_size must be in 1..{MAX_SCAN_BATCH}, got {batch_size}")
        view_seq = self._applied_seq  # before the layers (see the module docstring)
        view = self._view
        view_seq = max(view_seq, view.floor)
        layers: list[_ScanLayer] = []
        graph = view.graph
        if graph is not None and graph.live:
            labels = graph.ids.live_labels()
            labels = labels[graph.shadow_seq[labels] > view_seq]
            label_list = labels.tolist()
            payloads = [graph.label_payloads[label] for label in label_list]
            layers.append(
                (graph.ids_of(labels).tolist(), _rows_of_graph(graph, labels), payloads, graph.label_seq[labels])
            )
        for layer in (view.sealed, view.active):
            if layer is None or not layer.rows:
                continue
            rows = layer.rows  # before the blocks (see delta.py)
            blocks = list(layer.blocks(rows))
            if not blocks:
                continue
            visible = np.concatenate([b.visible(view_seq) for b in blocks])
            positions = np.flatnonzero(visible) + blocks[0].start
            position_list = positions.tolist()
            layers.append(
                (
                    [layer.ids[p] for p in position_list],
                    _rows_of_delta(layer, positions),
                    [layer.payloads[p] for p in position_list],
                    np.concatenate([b.row_seq for b in blocks])[positions - blocks[0].start],
                )
            )
        wanted = RangeSet(ranges)
        for ids, rows_of, payloads, versions in layers:
            keep = np.arange(len(ids))
            if ranges:
                keep = np.flatnonzero(wanted.contains_ids(ids))
            for lo in range(0, len(keep), batch_size):
                chunk = keep[lo : lo + batch_size]
                positions = chunk.tolist()
                yield ScanBatch(
                    [ids[i] for i in positions],
                    rows_of(chunk),
                    view_seq,
                    [payloads[i] for i in positions],
                    versions[chunk].tolist(),
                )

    # ================================================================== compaction
    def needs_compaction(self, now: float | None = None) -> bool:
        if self._compacting or self._closed:
            return False
        view = self._view
        pending = len(view.active) + (len(view.sealed) if view.sealed is not None else 0)
        if pending >= self.options.compact_delta_items or view.sealed is not None:
            return True
        since = self._active_since
        now = time.monotonic() if now is None else now
        if pending > 0 and since is not None and now - since >= self.options.compact_age_s:
            return True
        unsnapshotted = self._unsnapshotted_since
        return unsnapshotted is not None and now - unsnapshotted >= self.options.checkpoint_age_s

    def _checkpoint_due(self, graph: Graph, rows: int, now: float) -> bool:
        """Whether a background compaction that publishes ``graph``, ``rows`` rows folded since
        the newest snapshot, also snapshots it."""
        if self.spec.quantization is Quantization.INT8 or not hnsw.is_native(graph.index):
            return True  # the next fold needs the snapshot (int8 rows file; no in-memory copy)
        since = self._unsnapshotted_since
        if since is not None and now - since >= self.options.checkpoint_age_s:
            return True
        return rows >= max(self.options.checkpoint_rows, graph.elements // 4)

    def compact(self, background: bool = False) -> CompactResult:
        """Folds the delta into a new graph and publishes it, then checkpoints (``_checkpoint``:
        snapshots the published graph and truncates the log; also when there was nothing to fold
        but the graph is newer than the newest snapshot). ``background`` (the registry's compaction
        thread): checkpoints only when ``_checkpoint_due``. The result's ``snapshot_seq`` is the
        newest snapshot's.

        Safe to call from any thread; concurrent calls run one after another.
        """
        with self._compact_lock:
            with self._write_lock:
                wal = self._check_open()
                view = self._view
                if view.sealed is None and len(view.active) == 0:
                    graph = view.graph
                    if graph is None or self._unsnapshotted_since is None:
                        return CompactResult(self._newest_snapshot_seq(), False)
                    if background and not self._checkpoint_due(graph, self._unsnapshotted_rows, time.monotonic()):
                        return CompactResult(self._newest_snapshot_seq(), False)
                    checkpoint_only: Graph | None = graph
                else:
                    checkpoint_only = None
                if view.sealed is None and checkpoint_only is None:
                    self._sealed_seq = self._applied_seq
                    wal.rotate()  # the records of the sealed delta end in closed segments
                    view = _View(view.graph, view.active, self._new_delta(), view.floor)
                    self._view = view
                    self._active_since = None
                self._compacting = True
            if checkpoint_only is not None:
                try:
                    return self._checkpoint(checkpoint_only, wal)
                except Exception:
                    COMPACTION_FAILURES.inc()
                    raise
                finally:
                    self._compacting = False
            started = time.perf_counter()
            try:
                sealed = view.sealed
                assert sealed is not None
                graph = view.graph
                if graph is not None and self._unsnapshotted_since is not None and not hnsw.is_native(graph.index):
                    self._checkpoint(graph, wal)  # its fold loads its snapshot (a checkpoint failed after it)
                memtrace.mark(
                    "sealed",
                    delta_rows=sealed.rows - sealed.first,
                    graph_elements=graph.elements if graph is not None else 0,
                )
                sealed_rows = sealed.rows  # a failed attempt's steps counted none of theirs
                del view, sealed  # the fold reads the sealed rows through the view (steps drop folded blocks)
                self._mark_superseded()
                folded = self._fold(graph, self._sealed_seq, self._publish_step)
                new_graph, rebuilt = folded.graph, folded.rebuilt
                memtrace.mark("folded", graph_elements=new_graph.elements, rebuilt=rebuilt)
                if _FAULT_COMPACT_PAUSE_S:
                    time.sleep(_FAULT_COMPACT_PAUSE_S)
                self._publish(folded, None)
                with self._write_lock:
                    self._unsnapshotted_rows += sealed_rows
                    self._compactions += 1
                memtrace.mark("published")
                del graph  # the old graph and the sealed delta go with the last reader's view
                if _FAULT_COMPACT_PAUSE_S:
                    time.sleep(_FAULT_COMPACT_PAUSE_S)
                if not background or self._checkpoint_due(new_graph, self._unsnapshotted_rows, time.monotonic()):
                    self._checkpoint(new_graph, wal)
            except Exception:
                COMPACTION_FAILURES.inc()
                raise
            finally:
                self._compacting = False
            COMPACTION_SECONDS.observe(time.perf_counter() - started)
            heap.release_free_memory()
            memtrace.mark("trimmed")
            return CompactResult(self._newest_snapshot_seq(), rebuilt)

    def _publish(self, folded: _Folded, sealed: Delta | None) -> None:
        """Makes ``folded.graph`` the view's graph, with ``sealed`` as the view's sealed delta (a
        step's tail; None once the fold is done) and the seal seq as the view's ``floor`` (the
        graph shows every write up to it to every reader; a step's tail hides the rows the
        graph holds, and a reader below the seal seq would miss an id whose newest row is still
        in the tail while its older label is hidden): first hides its labels of ids written since
        the seal (``shadow`` at their first write's seq), under the write lock, so every view
        shows each id's newest version once. Under the compaction lock."""
        graph = folded.graph
        with self._write_lock:
            view = self._view
            written = view.active.first_seq
            if written:
                items = list(written)
                labels = graph.ids.labels_of(items)
                for at in np.flatnonzero(labels >= 0).tolist():
                    graph.shadow(int(labels[at]), written[items[at]])
            self._view = _View(graph, sealed, view.active, self._sealed_seq)
            if self._unsnapshotted_since is None:
                self._unsnapshotted_since = time.monotonic()
        self._track_index_graphs(folded, view.graph)

    def _publish_step(self, folded: _Folded, first: int, folded_ids: int) -> None:
        """A fold's step: publishes ``folded.graph`` (it holds the sealed delta's rows before
        ``first``, ``folded_ids`` ids) with the sealed delta from row ``first``; returns the freed
        blocks' memory to the system once the last view holding them is gone (here, if no reader
        holds one)."""
        sealed = self._view.sealed
        assert sealed is not None
        released = first // sealed.block_rows > sealed.first // sealed.block_rows
        self._publish(folded, sealed.tail(first, folded_ids))
        del sealed
        memtrace.mark("step_published", graph_elements=folded.graph.elements, first=first)
        if released:
            heap.release_free_memory()

    def _newest_snapshot_seq(self) -> int:
        return self._snapshots[0].applied_seq if self._snapshots else 0

    def _track_index_graphs(self, folded: _Folded, previous: Graph | None) -> None:
        """After publishing ``folded.graph``: records it among the graphs on its index, and the
        labels it superseded there with the graphs published before it (``previous`` among them)
        that may still return them. Under the compaction lock."""
        if not folded.shared:
            self._index_graphs, self._superseded = [weakref.ref(folded.graph)], []
            return
        older = [ref for ref in self._index_graphs if ref() is not None]
        if previous is not None and not any(ref() is previous for ref in older):
            older.append(weakref.ref(previous))
        if folded.superseded:
            self._superseded.append((older, folded.superseded))
        self._index_graphs = [*older, weakref.ref(folded.graph)]

    def _mark_superseded(self) -> None:
        """Marks deleted, in the shared index, the superseded labels no live graph may return
        any more (every graph published before the fold that superseded them is gone: readers
        hold a graph only through a view). Under the compaction lock, no fold running."""
        graph = self._view.graph
        if graph is None or not self._superseded:
            return
        waiting = []
        for older, labels in self._superseded:
            if any(ref() is not None for ref in older):
                waiting.append((older, labels))
                continue
            mark_deleted(graph.index, labels)
        self._superseded = waiting
        if not waiting:
            graph.unmarked_hidden = False  # hnswlib skips them now

    def _checkpoint(self, graph: Graph, wal: Wal) -> CompactResult:
        """Snapshots the published ``graph`` (not yet snapshotted) and truncates the log behind
        it. Under the compaction lock; searches and writes go on (no fold adds to ``graph``'s
        index meanwhile)."""
        self._mark_superseded()
        info = snapshot.write_snapshot(self._snapshot_dir, self.spec, graph)
        memtrace.mark("snapshot_written")
        graph.attach_file(info.path / snapshot.GRAPH_FILE)
        memtrace.mark("file_attached")
        with self._write_lock:
            self._snapshots.insert(0, info)
            self._unsnapshotted_rows, self._unsnapshotted_since = 0, None
        self._prune(wal)
        memtrace.mark("pruned")
        return CompactResult(info.applied_seq, False)

    def _prune(self, wal: Wal) -> None:
        """Drops snapshots beyond the retention count and log segments older than all kept."""
        kept = max(1, self.options.snapshots_kept)
        while len(self._snapshots) > kept:
            snapshot.remove(self._snapshots.pop())
        if len(self._snapshots) == kept:
            # Keep the log back to the oldest kept snapshot, so a damaged newest snapshot can
            # be replaced by the older one plus a longer replay. Until there are that many
            # snapshots, keep the whole log. Never drop what a pin keeps (``hold_wal``).
            with self._prune_lock:
                keep = self._snapshots[-1].applied_seq + 1
                floor = self.pin_floor() if self.pin_floor is not None else None
                if floor is not None:
                    keep = min(keep, floor)
                wal.truncate_before(keep)

    def hold_wal(self, from_seq: int, register: Callable[[], None]) -> None:
        """Calls ``register`` (which records a pin at ``from_seq``) while the log still holds
        ``from_seq``, atomically with respect to log truncation; OutOfRange when it does not
        (as :meth:`read_wal` decides: a record before ``from_seq`` was truncated)."""
        with self._prune_lock:
            first = self._check_open().first_seq
            if max(1, from_seq) < first:
                raise OutOfRange(
                    f"collection {self.spec.name}: records before seq {first} were compacted away "
                    f"(asked to keep from {from_seq}); first_available_seq={first}"
                )
            register()

    def _fold(self, graph: Graph | None, seal_seq: int, publish: Callable[[_Folded, int, int], None]) -> _Folded:
        """Builds the graph for ``seal_seq`` from ``graph`` + the view's sealed delta (its rows from
        its ``first``): adds to ``graph``'s index where it is shared (``shares_index``; the labels
        ``graph`` holds are left as they were), else leaves ``graph`` untouched; never touches the
        sealed rows. A shared fold publishes a graph every ``fold_step_rows`` rows or more
        (``_step_rows``) through ``publish(folded, first, folded_ids)`` (the sealed delta's rows
        before ``first``, ``folded_ids`` ids, are in that graph); it reads the sealed rows through
        the view, so blocks a step left out are freed once no reader holds an older view. An int8
        collection's new graph gets its float32 rows in a private ``.tmp-rows-*`` file under the
        snapshot directory (moved into the snapshot by ``write_snapshot``; removed here on
        failure, else by the next ``list_snapshots``)."""
        rows_out = None
        if self.spec.quantization is Quantization.INT8:
            rows_out = _RowsWriter(self._snapshot_dir / f".tmp-rows-{seal_seq:020d}-{os.getpid()}")
        try:
            return self._fold_layers(graph, seal_seq, rows_out, publish)
        except BaseException:
            if rows_out is not None:
                rows_out.discard()
            raise

    def _step_rows(self, graph: Graph) -> int:
        """Rows of the sealed delta a shared fold adds between two published graphs (0: it
        publishes once, at the end): at least ``fold_step_rows``, and a ``_FOLD_STEPS``-th of the
        graph, so the per-step copies of the graph's per-label lists stay a small part of the
        step's inserts."""
        if self.options.fold_step_rows <= 0:
            return 0
        return max(self.options.fold_step_rows, graph.elements // _FOLD_STEPS)

    def _fold_layers(
        self,
        graph: Graph | None,
        seal_seq: int,
        rows_out: _RowsWriter | None,
        publish: Callable[[_Folded, int, int], None],
    ) -> _Folded:
        sealed = self._view.sealed
        assert sealed is not None
        live_count = int(sum(int(b.visible(seal_seq).sum()) for b in sealed.blocks()))
        pending_ids = _pending_ids(sealed)
        replaced: list[int] = []
        if graph is not None:
            found = graph.ids.labels_of(list(pending_ids))
            replaced = found[found >= 0].tolist()
        elements = graph.elements if graph is not None else 0
        deleted_after = (graph.deleted if graph is not None else 0) + len(replaced)
        rebuild = (
            graph is None
            or deleted_after > self.options.rebuild_deleted_ratio * max(1, elements)
            or index_is_dirty(graph)
        )
        threads = self.options.build_threads
        quantizer: Int8Quantizer | None = None
        shared = False
        if rebuild:
            kept = np.empty(0, dtype=np.int64)
            label_payloads: list[bytes] = []
            seq_parts: list[npt.NDArray[np.int64]] = []
            if graph is not None:
                kept = graph.ids.live_labels()
                if replaced:
                    kept = kept[~np.isin(kept, replaced)]
                label_payloads = [graph.label_payloads[label] for label in kept.tolist()]
                seq_parts.append(graph.label_seq[kept])
                columns = graph.fields.columns.gather(kept)
                table = IdTable.from_ids(graph.ids_of(kept).tolist())
            else:
                columns = FieldColumns()
                table = IdTable.from_ids(())
            if rows_out is not None:  # a rebuild trains the quantizer again, on every row it will hold
                quantizer = _train_quantizer(graph, kept, sealed, seal_seq, self.spec.dimension)
            index = new_index(self.spec, len(kept) + live_count, quantizer)
            if graph is not None:
                for lo in range(0, len(kept), _BUILD_CHUNK):
                    chunk = kept[lo : lo + _BUILD_CHUNK]
                    vectors = graph.vectors(chunk)
                    index.add_items(vectors, np.arange(lo, lo + len(chunk)), num_threads=threads)
                    if rows_out is not None:
                        rows_out.write(vectors)
        else:
            assert graph is not None
            # A native float32 index is shared: the fold adds to the published graph's own index
            # while it is searched (shard/graph.py). Otherwise the fold adds to a private copy:
            # made in memory (native int8 index), else loaded from the graph's snapshot (every
            # fold checkpoints then: _checkpoint_due). The labels' ids, payloads and versions
            # come from the graph itself (copies of its lists share the objects) rather than from
            # a second decoding of the snapshot's files.
            shared = shares_index(self.spec, graph)
            if shared:
                index = graph.index
                reserve(index, graph.elements + live_count)
            elif (copied := copy_index(self.spec, graph, graph.elements + live_count)) is not None:
                index = copied
            else:
                if self._unsnapshotted_since is not None:
                    raise AssertionError("a graph without a snapshot and without a native index")
                index = snapshot.load_index(self._snapshots[0], self.spec, extra_capacity=live_count)
            quantizer = graph.quantizer
            if rows_out is not None:
                assert graph.full_rows is not None
                for lo in range(0, graph.elements, _BUILD_CHUNK):  # every label, deleted ones too
                    rows_out.write(graph.full_rows.read(lo, lo + _BUILD_CHUNK))
            memtrace.mark(
                "fold_index_shared" if shared else "fold_index_copied",
                elements=graph.elements,
                capacity=graph.elements + live_count,
            )
            table = graph.ids.evolve(replaced, ())
            label_payloads = list(graph.label_payloads)
            old_seq = graph.label_seq.copy()
            columns = graph.fields.columns.gather(np.arange(graph.elements))  # same labels
            for label in replaced:
                if not shared:  # a shared index: marked once older graphs are gone (compact)
                    index.mark_deleted(label)
                label_payloads[label] = b""
                old_seq[label] = 0
            seq_parts = [old_seq]
        memtrace.mark("fold_index_ready", rebuild=rebuild, elements=len(table), adding=live_count)
        added: list[str] = []  # ids given the labels after the table's, not yet in it
        step_rows = self._step_rows(graph) if shared and graph is not None else 0
        position, end_row, published_at, stepped = sealed.first, sealed.rows, sealed.first, False
        folded_ids = sealed.folded
        del sealed  # read through the view from here: a step's published tail lets folded blocks go
        while position < end_row:
            current = self._view.sealed
            assert current is not None
            ids, vectors, payloads, seqs, position = _live_rows(current, seal_seq, position, step_rows or _BUILD_CHUNK)
            del current
            if ids:
                folded_ids += len(ids)
                base = len(table) + len(added)
                index.add_items(vectors, np.arange(base, base + len(ids)), num_threads=threads)
                if rows_out is not None:
                    rows_out.write(vectors)
                added.extend(ids)
                label_payloads.extend(payloads)
                seq_parts.append(seqs)
                columns.append(decode_batch(payloads, len(ids)))  # logged payloads: they decode
            del vectors
            if step_rows and position < end_row and position - published_at >= step_rows:
                # never snapshotted (no checkpoint while the view holds a sealed delta); the seq of
                # the graph it extends, so it could not name a snapshot past what it holds
                table, added = table.evolve((), added), []
                step = Graph(
                    index,
                    table,
                    graph.applied_seq if graph is not None else 0,
                    list(label_payloads),
                    np.concatenate(seq_parts),
                )
                step.index_fields(columns.gather(np.arange(columns.rows)))
                self._hide_superseded(step, replaced)
                publish(_Folded(step, False, True, [] if stepped else replaced), position, folded_ids)
                published_at, stepped = position, True
        label_seq = np.concatenate(seq_parts) if seq_parts else np.zeros(0, dtype=np.int64)
        table = table.evolve((), added)
        memtrace.mark("fold_items_added", elements=len(table))
        new_graph = Graph(
            index,
            table,
            seal_seq,
            label_payloads,
            label_seq,
            quantizer=quantizer,
            full_rows=None if rows_out is None else rows_out.finish(self.spec.dimension, len(table)),
            full_rows_path=None if rows_out is None else rows_out.path,
        )
        new_graph.index_fields(columns)
        if shared:
            self._hide_superseded(new_graph, replaced)
        return _Folded(new_graph, rebuild and graph is not None, shared, replaced if shared and not stepped else [])

    def _hide_superseded(self, graph: Graph, replaced: list[int]) -> None:
        """Hides from every reader of ``graph`` (a shared fold's) the labels this fold superseded
        and those earlier folds superseded that are not yet marked deleted in the index."""
        for labels in (replaced, *(pending for _, pending in self._superseded)):
            for label in labels:
                graph.shadow(label, 0)
        graph.unmarked_hidden = bool(replaced or self._superseded)

    # ================================================================== introspection
    def stats(self) -> CollectionStats:
        view = self._view
        graph = view.graph
        wal = self._wal
        return CollectionStats(
            count=self._live,
            graph_elements=graph.elements if graph is not None else 0,
            deleted=graph.deleted if graph is not None else 0,
            delta_size=len(view.active) + (len(view.sealed) if view.sealed is not None else 0),
            wal_bytes=wal.size_bytes if wal is not None else 0,
            last_applied_seq=self._applied_seq,
            snapshot_seq=self._snapshots[0].applied_seq if self._snapshots else 0,
            compactions=self._compactions,
            compacting=self._compacting,
            legacy_items=self._legacy,
        )

    def read_wal(self, from_seq: int) -> Iterator[records.WalEntry]:
        """The logged operations from ``from_seq`` up to the last one written when called,
        decoded (whatever their segment's format). Raises OutOfRange when ``from_seq`` was
        already truncated."""
        stream = self._check_open().read_from(max(1, from_seq))
        return (records.WalEntry(r.seq, records.decode(r.payload, r.version)) for r in stream)


# A layer's live items in a scan: ids, a gather of their vectors by position, payloads, versions.
_ScanLayer = tuple[list[str], Callable[[npt.NDArray[np.intp]], Matrix], list[bytes], npt.NDArray[np.int64]]


def _rows_of_graph(graph: Graph, labels: npt.NDArray[np.int64]) -> Callable[[npt.NDArray[np.intp]], Matrix]:
    return lambda positions: graph.vectors(labels[positions])


def _rows_of_delta(layer: Delta, rows: npt.NDArray[np.intp]) -> Callable[[npt.NDArray[np.intp]], Matrix]:
    def gather(positions: npt.NDArray[np.intp]) -> Matrix:
        out = np.empty((len(positions), layer.dimension), dtype=np.float32)
        for i, row in enumerate(rows[positions].tolist()):
            out[i] = layer.vector(row)
        return out

    return gather


class _RowsWriter:
    """Appends float32 rows to a new file (an int8 graph's ``vectors.f32`` before its snapshot)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._handle = open(path, "wb")  # noqa: SIM115 (closed by finish or discard)

    def write(self, rows: Matrix) -> None:
        self._handle.write(np.ascontiguousarray(rows, dtype="<f4").data)

    def finish(self, dim: int, count: int) -> RowsFile:
        """Closes the file and opens it for reading (``count`` rows of ``dim``)."""
        self._handle.close()
        return RowsFile(self.path, dim, count)

    def discard(self) -> None:
        self._handle.close()
        self.path.unlink(missing_ok=True)


def _train_quantizer(
    graph: Graph | None, kept: npt.NDArray[np.int64], sealed: Delta, seal_seq: int, dim: int
) -> Int8Quantizer:
    """The int8 quantizer of a rebuilt graph: the per-dimension range of the rows it will hold
    (labels ``kept`` of ``graph``, then the live rows of ``sealed``)."""
    low = np.full(dim, np.inf, dtype=np.float32)
    high = np.full(dim, -np.inf, dtype=np.float32)

    def extend(rows: Matrix) -> None:
        if len(rows):
            np.minimum(low, rows.min(axis=0), out=low)
            np.maximum(high, rows.max(axis=0), out=high)

    if graph is not None:
        for lo in range(0, len(kept), _BUILD_CHUNK):
            extend(graph.vectors(kept[lo : lo + _BUILD_CHUNK]))
    for _, vectors, _, _ in _live_chunks(sealed, seal_seq):
        extend(vectors)
    if not np.isfinite(low).all():  # no rows at all
        low[:] = 0.0
        high[:] = 0.0
    return Int8Quantizer.train(low, high)


def _pending_ids(sealed: Delta) -> AbstractSet[str]:
    """The ids whose newest operation in ``sealed`` is not yet in a graph: all of them, except
    rows before ``first`` (folded by an earlier step of a fold that did not finish)."""
    if sealed.first == 0:
        return sealed.index.keys()
    return {item for item, row in sealed.index.items() if row == TOMBSTONE or row >= sealed.first}


def _live_rows(
    sealed: Delta, seal_seq: int, lo: int, max_rows: int
) -> tuple[list[str], Matrix, list[bytes], npt.NDArray[np.int64], int]:
    """The rows of ``sealed`` from ``lo`` (at most ``max_rows``, within one block) that were live
    at ``seal_seq``, with their payloads and versions, and the row after the last one looked at
    (a vector view when every row is live)."""
    block_end = (lo // sealed.block_rows + 1) * sealed.block_rows
    hi = min(lo + max_rows, block_end, sealed.rows)
    span = sealed.span(lo, hi)
    visible = span.visible(seal_seq)
    if visible.all():
        return sealed.ids[lo:hi], span.vectors, sealed.payloads[lo:hi], span.row_seq.copy(), hi
    rows = (np.flatnonzero(visible) + lo).tolist()
    return (
        [sealed.ids[r] for r in rows],
        span.vectors[visible],
        [sealed.payloads[r] for r in rows],
        span.row_seq[visible],
        hi,
    )


def _live_chunks(
    sealed: Delta, seal_seq: int
) -> Iterator[tuple[list[str], Matrix, list[bytes], npt.NDArray[np.int64]]]:
    """The rows of a sealed delta (from its ``first``) that were live at ``seal_seq``, block by
    block (``_live_rows``)."""
    position = sealed.first
    while position < sealed.rows:
        ids, vectors, payloads, seqs, position = _live_rows(sealed, seal_seq, position, sealed.block_rows)
        if ids:
            yield ids, vectors, payloads, seqs


def _merge(parts: list[tuple[npt.NDArray[np.object_], npt.NDArray[np.float32]]], k: int, nq: int) -> list[QueryHits]:
    """Merges per-layer candidates into top-k per query. Each part's rows are sorted
    ascending; hidden candidates have distance inf and are dropped."""
    parts = [p for p in parts if p[1].shape[1]]
    if not parts:
        return [QueryHits([], np.empty(0, dtype=np.float32)) for _ in range(nq)]
    if len(parts) == 1:
        names, dist = parts[0]  # already sorted: no merge needed
    else:
        names = np.concatenate([p[0] for p in parts], axis=1)
        dist = np.concatenate([p[1] for p in parts], axis=1)
        order = np.argsort(dist, axis=1, kind="stable")[:, :k]
        dist = np.take_along_axis(dist, order, axis=1)
        names = np.take_along_axis(names, order, axis=1)
    finite = np.isfinite(dist)
    if finite.all():
        return [QueryHits(names[row, :k].tolist(), dist[row, :k]) for row in range(nq)]
    hits = []
    for row in range(nq):
        keep = finite[row]
        hits.append(QueryHits(names[row][keep][:k].tolist(), dist[row][keep][:k]))
    return hits
