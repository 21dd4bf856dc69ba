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
from pathlib import Path

import grpc

from cli import table
from cli.common import CliError, Connection, rpc_error
from vsproto.v1 import search_service_pb2 as pb
from vsproto.v1 import types_pb2

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


def tags_filter(tags: list[str]) -> pb.Filter | None:
    """Items carrying every tag of ``tags`` (None: no filter)."""
    conditions = [pb.Filter(condition=pb.Condition(field="tags", eq=pb.AttributeValue(string_value=t))) for t in tags]
    if not conditions:
        return None
    return conditions[0] if len(conditions) == 1 else pb.Filter(all_of=pb.FilterList(filters=conditions))


def plan_name(plan: int) -> str:
    """``SEARCH_PLAN_FILTERED_GRAPH`` -> ``filtered-graph``."""
    return pb.SearchPlan.Name(plan).removeprefix("SEARCH_PLAN_").lower().replace("_", "-")


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
    try:
        described = conn.search.DescribeCollection(pb.DescribeCollectionRequest(collection=collection), timeout=30)
        if image is not None:
            try:
                data = image.read_bytes()
            except OSError as exc:
                raise CliError(f"{image}: cannot read: {exc.strerror or exc}") from None
            reply = conn.search.SearchByImage(
                pb.SearchByImageRequest(
                    collection=collection, images=[data], k=k, filter=where, include_metadata=True, explain=explain
                ),
                timeout=60,
            )
        else:
            reply = conn.search.SearchByText(
                pb.SearchByTextRequest(
                    collection=collection, texts=[text or ""], k=k, filter=where, include_metadata=True, explain=explain
                ),
                timeout=60,
            )
    except grpc.RpcError as exc:
        raise rpc_error(exc, f"search {collection!r}") from None
    cosine = described.spec.metric == types_pb2.METRIC_COSINE
    rows = [
        Row(rank, hit.id, hit.distance, 1.0 - hit.distance if cosine else None, hit.metadata.uri)
        for rank, hit in enumerate(reply.results[0].hits, start=1)
    ]
    plans = None
    if explain:
        plans = [ShardPlan(s.shard_id, plan_name(s.plan), s.matched, s.scored, s.micros) for s in reply.explain.shards]
        if not plans and reply.explain.plan:  # planned by the server (legacy-sql): no shard entries
            plans = [ShardPlan("server", plan_name(reply.explain.plan), reply.explain.matched, 0, 0)]
    return Answer(rows, reply.partial, list(reply.failed_shards), plans)


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
