"""Domain types of the shard interface: what goes in and comes out of ``ShardApi`` calls.

Plain frozen dataclasses over numpy arrays; no protobuf. Both implementations of the
interface (in-process and over gRPC) produce exactly these.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from core.keyranges import KeyRange as KeyRange
from core.vectors import Matrix


@dataclass(frozen=True)
class QueryHits:
    """One query's results, nearest first: ``ids[i]`` is at ``distances[i]`` (lower is closer)."""

    ids: list[str]
    distances: npt.NDArray[np.float32]


@dataclass(frozen=True)
class SearchStats:
    """How one shard answered a search (docs/filtered-search.md §6): its graph ``plan``
    (``shard.planner.PLANS``), the items matching the filter (all layers; ``matched_in_delta``
    of them in delta layers), the rows scored exactly plus graph candidates taken (``scored``),
    the largest graph candidate list asked (``candidates``), widenings, and the time taken."""

    plan: str
    matched: int
    matched_in_delta: int
    scored: int
    candidates: int
    widenings: int
    micros: int


@dataclass(frozen=True)
class SearchReply:
    """A shard's answer to a search: one ``QueryHits`` per query, and its ``SearchStats`` when
    they were asked for (``explain``)."""

    hits: list[QueryHits]
    stats: SearchStats | None = None


@dataclass(frozen=True)
class WriteResult:
    """A logged write: its WAL sequence number (0 when nothing was logged) and how many
    distinct ids it wrote (upsert) or found and deleted (delete)."""

    seq: int
    count: int


@dataclass(frozen=True)
class Fetched:
    """Vectors of the found ids (row i is ``ids[i]``, request order) and the missing ids."""

    ids: list[str]
    vectors: Matrix
    missing: list[str]
    # payloads[i] is ids[i]'s payload (b"": none), read at the same moment as its vector;
    # both implementations always give one per found id.
    payloads: list[bytes] = field(default_factory=list)
    # versions[i] is ids[i]'s version: the seq of the shard log record that wrote the item
    # (0: unknown, an item last written before versions were kept); one per found id.
    versions: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class CollectionStats:
    count: int
    graph_elements: int
    deleted: int
    delta_size: int
    wal_bytes: int
    last_applied_seq: int
    snapshot_seq: int
    compactions: int
    compacting: bool
    # live items written without a payload (before payloads existed): the shard cannot filter them
    legacy_items: int = 0


@dataclass(frozen=True)
class CompactResult:
    snapshot_seq: int
    rebuilt: bool


@dataclass(frozen=True)
class ScanBatch:
    """Live items streamed by a scan, with the applied seq its point-in-time view was taken at."""

    ids: list[str]
    vectors: Matrix
    applied_seq: int
    # payloads[i] is ids[i]'s payload (b"": none).
    payloads: list[bytes] = field(default_factory=list)
    # versions[i] is ids[i]'s version (see Fetched.versions).
    versions: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class ControlState:
    """A shard's rebalancing controls (``shard.control``), as of one moment: the oldest ring
    version (``min_epoch``) whose handles it still serves (0: all), the write fences by key
    (arcs of the id-hash ring whose ids clients may no longer write here), and the WAL pins by
    key (collection -> the first seq its log must keep)."""

    min_epoch: int
    fences: dict[str, list[KeyRange]] = field(default_factory=dict)
    pins: dict[str, dict[str, int]] = field(default_factory=dict)
