"""Domain types of the public API's reads: what a search asks for and what it returns.

Built from protobuf once, at the edge (``server/convert.py``); the engine sees only these.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from core.filters import Filter
from core.items import ItemMeta
from core.vectors import Matrix
from router.merge import Hit
from shard.types import SearchStats


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
    explain: bool = False


PLAN_LEGACY_SQL = "legacy-sql"
"""The collection holds items the shards cannot filter (written before payloads): the server
planned the filter on its SQL index (docs/filtered-search.md §9)."""


@dataclass(frozen=True)
class SearchExplain:
    """How a search was answered: the ``plan`` every shard took (``shard.planner.PLANS``),
    ``PLAN_LEGACY_SQL``, or "" when the shards took different ones; the items matching the filter
    over the shards that answered; each answering shard's ``SearchStats``."""

    plan: str
    matched: int
    shards: dict[str, SearchStats] = field(default_factory=dict)


@dataclass
class SearchResult:
    """One hit list per query row, nearest first; ``failed`` names shards that did not
    answer (a partial result); metadata and vectors of the hits when they were asked for;
    ``explain`` when it was asked for."""

    hits: list[list[Hit]]
    failed: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, ItemMeta] = field(default_factory=dict)
    vectors: dict[str, Matrix] = field(default_factory=dict)
    explain: SearchExplain | None = None


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
