"""Domain types of the public API's reads: what a search asks for and what it returns.

Built from protobuf once, at the edge (``server/convert.py``); the engine sees only these.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from core.filters import Filter
from core.items import ItemMeta
from core.vectors import Matrix
from router.merge import Hit


@dataclass(frozen=True)
class VectorTarget:
    """Search near each row of ``vectors`` (one result list per row)."""

    vectors: Matrix


@dataclass(frozen=True)
class ItemTarget:
    """Search near the stored vector of ``item_id``; the item itself is left out."""

    item_id: str


@dataclass(frozen=True)
class TextTarget:
    """Search near each text, embedded by the collection's model (``server/media.py``)."""

    texts: list[str]


@dataclass(frozen=True)
class ImageTarget:
    """Search near each encoded image, embedded by the collection's model."""

    images: list[bytes]


Target = VectorTarget | ItemTarget | TextTarget | ImageTarget


@dataclass(frozen=True)
class SearchQuery:
    collection: str
    target: Target
    k: int = 10
    ef: int = 0
    filter: Filter | None = None
    include_metadata: bool = False
    include_vectors: bool = False
    require_all_shards: bool = False


@dataclass
class SearchResult:
    """One hit list per query row, nearest first; ``failed`` names shards that did not
    answer (a partial result); metadata and vectors of the hits when they were asked for;
    ``strategy`` says how a filter was applied (graph, allow-list, post-filter, ...)."""

    hits: list[list[Hit]]
    failed: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, ItemMeta] = field(default_factory=dict)
    vectors: dict[str, Matrix] = field(default_factory=dict)
    strategy: str = "graph"


@dataclass(frozen=True)
class ShardHealth:
    """A shard of the topology as probed now: its item count per collection, or why it
    could not be reached."""

    shard_id: str
    address: str
    weight: float
    healthy: bool
    collection_counts: dict[str, int]
    error: str = ""
