"""Single-node shape: the public server owns its shard in-process (``--local-shard``), with no
second gRPC hop. Same API and results as the distributed shape; acknowledged writes survive
a SIGKILL of the server process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from vectorsearch_client import Client, F, InvalidArgument

from testkit.datasets import data_and_queries
from testkit.procutil import wait_for_ready_file
from testkit.truth import exact_top_k, recall_at_k

REPO = Path(__file__).resolve().parents[2]
DIM = 16


def start(data: Path) -> tuple[subprocess.Popen[bytes], str]:
    ready = data / "ready"
    ready.unlink(missing_ok=True)
    data.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "server",
        "--local-shard",
        str(data / "shard"),
        "--database-url",
        f"sqlite:///{data / 'meta.db'}",
        "--listen",
        "127.0.0.1:0",
        "--ready-file",
        str(ready),
    ]
    with open(data / "server.log", "ab") as log:
        proc = subprocess.Popen(
            command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1")
        )
    log_tail = (data / "server.log").read_text
    return proc, wait_for_ready_file(proc, ready, 60, "server", log_tail)


def test_single_node_serves_the_api_and_survives_sigkill(tmp_path: Path) -> None:
    proc, address = start(tmp_path)
    try:
        client = Client(address, timeout=30.0)
        assert client.create_collection("c", DIM, metric="cosine")
        data, queries = data_and_queries(3000, 50, DIM, seed=31)
        ids = [f"s{i}" for i in range(3000)]
        tags = [["odd" if i % 2 else "even", *(["rare"] if i % 1000 == 7 else [])] for i in range(3000)]
        for lo in range(0, 3000, 500):
            client.upsert("c", ids[lo : lo + 500], data[lo : lo + 500], [{"tags": t} for t in tags[lo : lo + 500]])
        found = client.search_batch("c", queries, k=10)
        assert not any(hits.partial for hits in found)
        truth = exact_top_k(data, queries, 10, "cosine")
        assert recall_at_k(truth, [[h.id for h in hits] for hits in found], ids) >= 0.95
        odd = client.search_batch("c", queries[:5], k=5, filter=F.tag("odd"))
        assert all(int(h.id[1:]) % 2 for hits in odd for h in hits)
        rare = client.search_batch("c", queries[:5], k=5, filter=F.tag("rare"))
        assert [sorted(h.id for h in hits) for hits in rare] == [["s1007", "s2007", "s7"]] * 5
        absent = client.search_batch("c", queries[:2], k=5, filter=F.tag("absent"))
        assert [len(hits) for hits in absent] == [0, 0]
        status = client.cluster_status()
        assert [(s.shard_id, s.healthy, s.collection_counts["c"]) for s in status.shards] == [("local-0", True, 3000)]
        assert status.shards[0].address.startswith("local:")
        compacted = client.compact("c", wait=True)
        assert [(s.shard_id, s.count, s.graph_elements, s.delta_size) for s in compacted] == [
            ("local-0", 3000, 3000, 0)
        ]
        with pytest.raises(InvalidArgument):
            client.search("c", queries[0, :3], k=5)
        client.close()
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc, address = start(tmp_path)
        with Client(address, timeout=30.0) as client:
            assert client.describe_collection("c").count == 3000
            got = client.get("c", ["s0", "s2999"])
            assert [i.id for i in got.items] == ["s0", "s2999"] and got.items[1].metadata.tags == ["odd"]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
