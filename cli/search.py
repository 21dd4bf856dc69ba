"""``vsearch search "text"`` / ``vsearch search --image FILE``: the k nearest items as a table
(rank, score, distance, id, uri) or JSON; ``--tag`` keeps the images with every tag given,
``--explain`` adds how each shard searched (plan, items matched, vectors scored, time).

Contract: one query per call; the collection must have been built with the model the server
serves (else the server's FAILED_PRECONDITION is reported). ``score`` is the cosine similarity
(1 - distance) for cosine collections, blank otherwise; lower distance is closer. A partial
answer (a shard did not reply) is flagged under the table.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from functools import reduce
from operator import and_
from pathlib import Path

from vectorsearch_client import F, Filter, SearchExplain, VectorSearchError

from cli import table
from cli.common import CliError, Connection, call_error

ID_WIDTH = 20


@dataclass(frozen=True)
class Row:
    rank: int
    id: str
    distance: float
    score: float | None
    uri: str


@dataclass(frozen=True)
class ShardPlan:
    shard_id: str
    plan: str
    matched: int
    scored: int
    micros: int


@dataclass(frozen=True)
class Answer:
    rows: list[Row]
    partial: bool
    failed_shards: list[str]
    explain: list[ShardPlan] | None = None


def tags_filter(tags: list[str]) -> Filter | None:
    """Items carrying every tag of ``tags`` (None: no filter)."""
    return reduce(and_, (F.tag(t) for t in tags)) if tags else None


def plan_name(plan: str) -> str:
    """The SDK's ``filtered_graph`` -> ``filtered-graph``."""
    return plan.replace("_", "-")


def shard_plans(explain: SearchExplain | None) -> list[ShardPlan]:
    if explain is None:
        return []
    plans = [ShardPlan(s.shard_id, plan_name(s.plan), s.matched, s.scored, s.micros) for s in explain.shards]
    if not plans and explain.plan != "unspecified":  # planned by the server (legacy-sql): no shard entries
        plans = [ShardPlan("server", plan_name(explain.plan), explain.matched, 0, 0)]
    return plans


def search(
    conn: Connection,
    collection: str,
    k: int,
    text: str | None = None,
    image: Path | None = None,
    tags: list[str] | None = None,
    explain: bool = False,
) -> Answer:
    """Searches ``collection`` by ``text`` or by the image file ``image`` (exactly one), among
    the items with every tag of ``tags``."""
    if (text is None) == (image is None):
        raise CliError("search needs a text or --image FILE (not both)")
    where = tags_filter(tags or [])
    client = conn.client
    try:
        described = client.describe_collection(collection, timeout=30)
        data: bytes | None = None
        if image is not None:
            try:
                data = image.read_bytes()
            except OSError as exc:
                raise CliError(f"{image}: cannot read: {exc.strerror or exc}") from None
        hits = client.search(
            collection,
            text=text if data is None else None,
            image=data,
            k=k,
            filter=where,
            include_metadata=True,
            explain=explain,
            timeout=60,
        )
    except VectorSearchError as exc:
        raise call_error(exc, f"search {collection!r}") from None
    cosine = described.metric == "cosine"
    rows = [
        Row(
            rank, hit.id, hit.distance, 1.0 - hit.distance if cosine else None, hit.metadata.uri if hit.metadata else ""
        )
        for rank, hit in enumerate(hits, start=1)
    ]
    plans = shard_plans(hits.explain) if explain else None
    return Answer(rows, hits.partial, hits.failed_shards, plans)


def short_id(item_id: str, width: int = ID_WIDTH) -> str:
    return item_id if len(item_id) <= width else item_id[: width - 1] + "…"


def format_table(answer: Answer, wide: bool = False) -> str:
    if not answer.rows:
        text = "no results"
    else:
        text = table.render(
            ["rank", "score", "distance", "id", "uri"],
            [
                [
                    r.rank,
                    "" if r.score is None else f"{r.score:.4f}",
                    f"{r.distance:.4f}",
                    r.id if wide else short_id(r.id),
                    r.uri,
                ]
                for r in answer.rows
            ],
            right=[True, True, True, False, False],
        )
    if answer.partial:
        text += f"\n(partial: no answer from {', '.join(answer.failed_shards)})"
    if answer.explain is not None:
        text += "\n\n" + table.render(
            ["shard", "plan", "matched", "scored", "µs"],
            [[p.shard_id, p.plan, p.matched, p.scored, p.micros] for p in answer.explain],
            right=[False, False, True, True, True],
        )
    return text


def format_json(answer: Answer) -> str:
    return json.dumps(asdict(answer), indent=2)
