"""A shard's Prometheus metrics (issue #17): collection gauges read at scrape time, WAL fsync and
compaction timings updated where they happen, and the recall probe.

``ShardCollector`` reads ``Collection.stats()`` of every collection when scraped, so the write
and search paths keep no extra bookkeeping. ``RecallProbe`` (off by default; the shard flag
``--recall-probe-interval-s``) samples stored vectors of each collection, searches them as the
shard serves searches (graph plus delta) and exactly (a full scan of the same items), and exports
recall@k per collection, so a recall that degrades shows before users notice.

This module imports nothing of ``shard.collection`` or ``shard.registry`` at run time (``wal``
and ``collection`` import it).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from core.vectors import Queries
from shard import exact

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from shard.collection import Collection

log = logging.getLogger(__name__)

WAL_FSYNC_SECONDS = Histogram(
    "vs_wal_fsync_duration_seconds",
    "write-ahead log fdatasync latency (one per group commit)",
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
)
COMPACTION_SECONDS = Histogram(
    "vs_compaction_duration_seconds",
    "compactions that folded a delta: fold, snapshot and publish",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
)
COMPACTION_FAILURES = Counter("vs_compaction_failures", "compactions that raised (the delta stays searchable)")
RECALL = Gauge("vs_recall_at_k", "recall@k of the last probe: ANN search against exact search", ["collection", "k"])
RECALL_PROBES = Counter("vs_recall_probes", "recall probes that measured a collection", ["collection"])
RECALL_PROBE_SECONDS = Gauge(
    "vs_recall_probe_duration_seconds", "how long the last probe of a collection took", ["collection"]
)

# (metric name, help, CollectionStats attribute) of the gauges read at scrape time
_GAUGES = (
    ("vs_collection_items", "live items", "count"),
    ("vs_collection_delta_items", "ids in the delta (not yet folded into the graph)", "delta_size"),
    ("vs_collection_graph_elements", "elements of the HNSW graph, deleted ones included", "graph_elements"),
    ("vs_collection_graph_deleted", "deleted (tombstoned) elements of the graph", "deleted"),
    ("vs_collection_wal_bytes", "bytes of write-ahead log kept", "wal_bytes"),
    ("vs_collection_last_applied_seq", "seq of the last applied write", "last_applied_seq"),
    ("vs_collection_snapshot_seq", "applied seq of the newest snapshot", "snapshot_seq"),
)


class ShardCollector(Collector):
    """Per-collection gauges of the collections ``collections()`` returns, read when scraped."""

    def __init__(self, collections: Callable[[], Iterable[Collection]]) -> None:
        self._collections = collections

    def collect(self) -> Iterator[Metric]:
        gauges = {name: GaugeMetricFamily(name, doc, labels=["collection"]) for name, doc, _ in _GAUGES}
        compactions = CounterMetricFamily("vs_compactions", "compactions that folded a delta", labels=["collection"])
        for collection in self._collections():
            try:
                stats = collection.stats()
            except Exception:  # closed or dropped meanwhile
                continue
            name = collection.spec.name
            for metric, _, attribute in _GAUGES:
                gauges[metric].add_metric([name], float(getattr(stats, attribute)))
            compactions.add_metric([name], float(stats.compactions))
        yield from gauges.values()
        yield compactions


def probe_recall(collection: Collection, samples: int, k: int, rng: random.Random) -> float | None:
    """recall@k of ``samples`` stored vectors of ``collection`` used as queries: the share of
    the exact top-k (by a full scan) that the served search (graph plus delta) returns, a hit at
    the k-th exact distance counting as found (ties). None when the collection is empty."""
    count = collection.stats().count
    if count == 0:
        return None
    k = min(k, count)
    wanted = set(rng.sample(range(count), min(samples, count)))
    picked: list[npt.NDArray[np.float32]] = []
    position = 0
    for batch in collection.scan(batch_size=8192):
        for i in range(len(batch.ids)):
            if position + i in wanted:
                picked.append(batch.vectors[i])
        position += len(batch.ids)
    if not picked:
        return None
    queries = np.ascontiguousarray(np.stack(picked), dtype=np.float32)
    space = collection.spec.metric.hnsw_space
    # exact top-k over one consistent scan, merged batch by batch
    best_d = np.full((len(queries), 0), np.inf, dtype=np.float32)
    best_ids = np.empty((len(queries), 0), dtype=object)
    for batch in collection.scan(batch_size=8192):
        order, dist = exact.search(queries, batch.vectors, space, k)
        names = np.array(batch.ids, dtype=object)[order]
        all_d = np.concatenate([best_d, dist], axis=1)
        all_ids = np.concatenate([best_ids, names], axis=1)
        keep = np.argsort(all_d, axis=1, kind="stable")[:, :k]
        best_d = np.take_along_axis(all_d, keep, axis=1)
        best_ids = np.take_along_axis(all_ids, keep, axis=1)
    served = collection.plan_search(Queries(queries), k).hits
    found = 0
    total = 0
    for row, hits in enumerate(served):
        truth = set(best_ids[row].tolist())
        kth = float(best_d[row, -1])
        tolerance = 1e-5 * max(abs(kth), 1.0)
        total += len(truth)
        found += min(
            len(truth),
            sum(
                1
                for item, d in zip(hits.ids, hits.distances.tolist(), strict=True)
                if item in truth or d <= kth + tolerance
            ),
        )
    return found / total if total else None


class RecallProbe:
    """Every ``interval_s``, :func:`probe_recall` of each collection ``collections()`` returns,
    exported as ``vs_recall_at_k{collection, k}``. A daemon thread; :meth:`stop` ends it."""

    def __init__(
        self, collections: Callable[[], Iterable[Collection]], interval_s: float, samples: int = 64, k: int = 10
    ) -> None:
        self._collections = collections
        self._interval_s = interval_s
        self._samples = samples
        self._k = k
        self._stop = threading.Event()
        self._rng = random.Random()
        self._thread = threading.Thread(target=self._loop, name="recall-probe", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def run_once(self) -> None:
        for collection in list(self._collections()):
            if self._stop.is_set():
                return
            name = collection.spec.name
            started = time.perf_counter()
            try:
                recall = probe_recall(collection, self._samples, self._k, self._rng)
            except Exception:  # dropped or closed meanwhile, or a bug: keep probing the others
                log.warning("recall probe of %s failed", name, exc_info=True)
                continue
            if recall is not None:
                RECALL.labels(name, str(self._k)).set(recall)
                RECALL_PROBE_SECONDS.labels(name).set(time.perf_counter() - started)
                RECALL_PROBES.labels(name).inc()
                log.debug("recall@%d of %s: %.4f", self._k, name, recall)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.run_once()
