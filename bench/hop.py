"""Issue #19 items 6 and 2: where a search's time goes on the request path, per shape.

Starts one of our shapes (``single``: ``python -m server --local-shard``; ``1-shard`` /
``3-shards``: ``python -m server.cluster --shards N``) from each of ``--roots`` (default this
checkout; several: a same-run A/B, passes alternating the trees and their order per round),
loads the first ``--n`` rows of a ``bench/datasets.py`` set through the Python SDK (batched
upserts, ``Compact(wait)``), then runs ``--rounds`` rounds of a single-client pass and a
``--clients``-thread pass (one SDK ``Client``, one channel, as ``bench/ours.py``) at ``--ef``,
``--queries`` queries each. Prints, per tree, QPS per pass and the median, and the CPU
milliseconds per query of the client (this process, the SDK), the server and each shard process
(``/proc/PID/stat``, all threads, gRPC's included), as JSON.

``--py-spy DIR`` records every server and shard process during one extra loaded pass per
concurrency (``py-spy record --gil``: only samples of the thread holding the GIL, so the figures
are the Python work that serializes requests) and writes, per process, the functions with the
most inclusive and self samples (``DIR/<shape>-<tree index>-<clients>c-<process>.txt``); profiled passes
are not in the QPS figures.

    python bench/hop.py --data bench/data/synthetic-20000x384 --shapes single,1-shard,3-shards
    python bench/hop.py --shapes 1-shard --py-spy bench/data/hop-prof
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vectorsearch_client import Client

from testkit.clusterproc import ClusterProcess
from testkit.procutil import REPO
from testkit.serverproc import SingleNodeProcess

COLLECTION = "hop"
K = 10
BATCH = 1000


def start(shape: str, workdir: Path, root: Path, extra: list[str]) -> tuple[Any, str]:
    """The running shape and its public address."""
    if shape == "single":
        node = SingleNodeProcess(workdir, *extra, root=root)
        return node, node.start()
    shards = {"1-shard": 1, "3-shards": 3}[shape]
    cluster = ClusterProcess(workdir / "cluster", *extra, shards=shards, root=root)
    cluster.start()
    return cluster, cluster.address


def descendants(pid: int) -> dict[str, int]:
    """Every process under ``pid`` (and itself) that runs our server or a shard, by a short name."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found: dict[str, int] = {}
    todo = [pid]
    while todo:
        current = todo.pop()
        todo += children.get(current, [])
        try:
            argv = (Path("/proc") / str(current) / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"shard" in argv and b"-m" in argv:
            found[f"shard{sum(1 for n in found if n.startswith('shard'))}"] = current
        elif b"-m" in argv and any(a in (b"server", b"server.cluster") for a in argv):
            found["server"] = current
    return found


def summarize(raw: Path, top: int = 25) -> str:
    """Inclusive and self sample counts per function of a ``py-spy -f raw`` file."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = [f.split(" (")[0] + " " + f.rsplit("/", 1)[-1].split(":")[0].rstrip(")") for f in stack.split(";")]
        frames = [f for f in frames if not f.startswith("process ") and not f.startswith("thread ")]
        if not frames:
            continue
        total += count
        for frame in set(frames):
            inclusive[frame] += count
        own[frames[-1]] += count
    lines = [f"{total} samples holding the GIL"]
    lines += ["", "inclusive:"] + [f"{c / total:6.1%} {f}" for f, c in inclusive.most_common(top)]
    lines += ["", "self:"] + [f"{c / total:6.1%} {f}" for f, c in own.most_common(top)]
    return "\n".join(lines) + "\n"


def cpu_s(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds (user + system, all threads) used so far by each process, and by this one."""
    tick = os.sysconf("SC_CLK_TCK")
    used = {"client": sum(os.times()[:2])}
    for name, pid in pids.items():
        fields = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
        used[name] = (int(fields[11]) + int(fields[12])) / tick
    return used


def run_pass(client: Client, queries: np.ndarray, ef: int, clients: int) -> float:
    """QPS of one pass: every query once, shared by ``clients`` threads."""

    def one(i: int) -> None:
        hits = client.search(COLLECTION, queries[i], k=K, ef=ef, include_metadata=False)
        if hits.partial:
            raise RuntimeError(f"partial result: {hits.failed_shards}")

    if clients == 1:
        start = time.perf_counter()
        for i in range(len(queries)):
            one(i)
        return len(queries) / (time.perf_counter() - start)
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(clients * 10)))  # warm every thread
        start = time.perf_counter()
        list(pool.map(one, range(len(queries))))
        return len(queries) / (time.perf_counter() - start)


def spy(pids: dict[str, int], seconds: float, out: Path, tag: str) -> list[tuple[subprocess.Popen[bytes], Path]]:
    exe = Path(sys.executable).with_name("py-spy")
    out.mkdir(parents=True, exist_ok=True)
    procs = []
    for name, pid in pids.items():
        raw = out / f"{tag}-{name}.raw"
        cmd = [str(exe), "record", "-p", str(pid), "-d", str(int(seconds)), "-r", "250", "--gil"]
        cmd += ["--nonblocking", "-f", "raw", "-o", str(raw)]
        procs.append((subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT), raw))
    return procs


class Running:
    """One shape started from one source tree, loaded, with its SDK client."""

    def __init__(self, shape: str, root: Path, workdir: Path, base: np.ndarray, extra: list[str]) -> None:
        self.system, address = start(shape, workdir, root, extra)
        self.pids = descendants(self.system.proc.pid)
        self.client = Client(address, timeout=60)
        self.client.wait_ready(60)
        self.client.create_collection(COLLECTION, base.shape[1], metric="inner_product", m=16, ef_construction=200)
        with ThreadPoolExecutor(4) as pool:
            list(
                pool.map(
                    lambda lo: self.client.upsert(
                        COLLECTION,
                        [str(i) for i in range(lo, min(len(base), lo + BATCH))],
                        np.asarray(base[lo : lo + BATCH]),
                    ),
                    range(0, len(base), BATCH),
                )
            )
        self.client.compact(COLLECTION, wait=True)

    def close(self) -> None:
        self.client.close()
        self.system.stop()


def run_shape(shape: str, args: argparse.Namespace) -> dict[str, Any]:
    """Every root's system of ``shape``, loaded, then passes alternating the roots per round."""
    base = np.load(args.data / "base.npy", mmap_mode="r")[: args.n]
    queries = np.ascontiguousarray(np.load(args.data / "queries.npy")[: args.queries], dtype=np.float32)
    result: dict[str, Any] = {"shape": shape, "n": len(base), "ef": args.ef, "roots": args.roots}
    with tempfile.TemporaryDirectory(prefix=f"bench-hop-{shape}-") as tmp:
        systems: list[Running] = []
        try:
            for i, variant in enumerate(args.roots):
                root, *flags = variant.split("@")
                systems.append(Running(shape, Path(root).resolve(), Path(tmp) / str(i), base, args.server_arg + flags))
            for system in systems:
                run_pass(system.client, queries[: min(200, len(queries))], args.ef, 1)  # warm-up
            qps: list[dict[str, list[float]]] = [{"1": [], str(args.clients): []} for _ in systems]
            cpu: list[dict[str, list[dict[str, float]]]] = [{"1": [], str(args.clients): []} for _ in systems]
            for r in range(args.rounds):
                order = list(range(len(systems)))
                if r % 2:
                    order.reverse()
                for clients in (1, args.clients):
                    for i in order:
                        before = cpu_s(systems[i].pids)
                        qps[i][str(clients)].append(round(run_pass(systems[i].client, queries, args.ef, clients), 1))
                        after = cpu_s(systems[i].pids)
                        per_query_ms = {p: round(1000 * (after[p] - before[p]) / len(queries), 3) for p in after}
                        cpu[i][str(clients)].append(per_query_ms)
            result["qps"] = qps
            result["median_qps"] = [{c: statistics.median(v) for c, v in q.items()} for q in qps]
            result["cpu_ms_per_query"] = [
                {c: {p: statistics.median(r[p] for r in rows) for p in rows[0]} for c, rows in per.items()}
                for per in cpu
            ]
            if args.py_spy:
                for i, system in enumerate(systems):
                    for clients in (1, args.clients):
                        tag = f"{shape}-{i}-{clients}c"
                        spies = spy(system.pids, args.spy_s, args.py_spy, tag)
                        stop = time.monotonic() + args.spy_s + 1
                        while time.monotonic() < stop:
                            run_pass(system.client, queries, args.ef, clients)
                        for proc, raw in spies:
                            proc.wait(timeout=60)
                            if raw.exists():
                                raw.with_suffix(".txt").write_text(summarize(raw))
        finally:
            for system in systems:
                system.close()
    print(json.dumps(result), file=sys.stderr)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=REPO / "bench" / "data" / "synthetic-20000x384")
    p.add_argument("--n", type=int, default=20000)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--ef", type=int, default=64)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--shapes", default="single,1-shard,3-shards")
    p.add_argument(
        "--roots",
        type=lambda text: text.split(","),
        default=[str(REPO)],
        help="comma-separated source trees to run the servers from (same-run A/B: passes alternate); "
        "TREE@FLAG@FLAG... adds server flags to that one (e.g. /wt@--shard-search-coalesce=0)",
    )
    p.add_argument("--server-arg", action="append", default=[], help="an extra server flag (repeatable)")
    p.add_argument("--py-spy", type=Path, default=None, help="profile one extra pass per concurrency into DIR")
    p.add_argument("--spy-s", type=float, default=8.0)
    args = p.parse_args()
    results = [run_shape(shape, args) for shape in args.shapes.split(",")]
    print(json.dumps({"command": " ".join(sys.argv), "load": os.getloadavg(), "results": results}, indent=1))


if __name__ == "__main__":
    main()
