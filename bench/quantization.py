"""Issue #19 item 1: int8 scalar quantization against float32 on the same rows, one run.

    .venv/bin/python bench/datasets.py synthetic --n 100000 --dim 384
    .venv/bin/python bench/quantization.py            # 100k x 384 -> bench/results/quantization.{md,json}
    .venv/bin/python bench/quantization.py --quick    # the first 20k rows, 200 queries (tests of the script)

Three single-node servers (``python -m server --local-shard``, as ``testkit.serverproc`` starts
it, default flags) on the same seeded synthetic unit rows (``bench/data/synthetic-NxDIM``, built
by ``bench/datasets.py``), created with the same HNSW parameters (M=16, ef_construction=200,
inner product) and differing only in ``quantization``: "none", "int8" (re-scoring rows read with
``pread``, the default) and "int8" run with ``VS_INT8_ROWS=mmap`` (rows from a read-only map).
Each is loaded in turn (requests of 1,000 rows from 4 client threads, then
``Compact(wait=true)``, then ``--idle-s`` of nothing) while a sampler reads its
``/proc/<pid>/status`` every 50 ms: peak ``VmRSS`` over load and compaction, and steady
``VmRSS`` / ``RssAnon`` / ``RssFile`` after the idle wait. All then stay up and are searched by
one client thread (``Client.search``, k=10, the same ``--ef``), in ``--rounds`` rounds over the
queries, the order of the servers reversed every round, so machine noise hits all alike: QPS is
the median round, recall@10 is against the set's exact top-10. The RSS is read again after the
searches (with the map, the pages of ``vectors.f32`` that re-scoring touched count as
``RssFile``). Ratios are to float32 within this run. Outputs: ``--out DIR`` (default
``bench/results``) ``quantization.json`` and ``quantization.md`` (``--quick``:
``quantization-quick.*``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from bench.datasets import DATA, load_data
from bench.harness import HNSW_EF_CONSTRUCTION, HNSW_M
from bench.memory import Sampler, du, git_commit, mib, status

COLLECTION = "quant"
INGEST_BATCH = 1000
INGEST_THREADS = 4
SYSTEMS = ("none", "int8", "int8-mmap")  # name: quantization[-rows mode]


def load_server(data: np.ndarray, workdir: Path, system: str, idle_s: float) -> dict[str, Any]:
    """Starts a server (``system``: a quantization, with ``-mmap`` run with ``VS_INT8_ROWS=mmap``),
    loads ``data`` into a collection, compacts, idles. Returns the live process, its client and
    the memory of each phase (MiB)."""
    from vectorsearch_client import Client

    from testkit.serverproc import SingleNodeProcess

    quantization, _, rows_mode = system.partition("-")
    proc = SingleNodeProcess(workdir / system)
    saved = os.environ.get("VS_INT8_ROWS")
    os.environ["VS_INT8_ROWS"] = rows_mode or "pread"
    try:
        address = proc.start()
    finally:
        if saved is None:
            os.environ.pop("VS_INT8_ROWS", None)
        else:
            os.environ["VS_INT8_ROWS"] = saved
    assert proc.proc is not None
    pid = proc.proc.pid
    client = Client(address, timeout=600.0)
    client.wait_ready(60)
    n, dim = data.shape
    with Sampler(pid) as sampler:
        time.sleep(0.5)
        started_rss = sampler.sample().get("VmRSS", 0)
        client.create_collection(
            COLLECTION,
            dim,
            metric="inner_product",
            m=HNSW_M,
            ef_construction=HNSW_EF_CONSTRUCTION,
            quantization=quantization,
        )

        def upsert(lo: int) -> int:
            ids = [str(i) for i in range(lo, min(n, lo + INGEST_BATCH))]
            return client.upsert(COLLECTION, ids, data[lo : lo + INGEST_BATCH])

        sampler.phase = "load"
        t0 = time.perf_counter()
        with ThreadPoolExecutor(INGEST_THREADS) as pool:
            acked = sum(pool.map(upsert, range(0, n, INGEST_BATCH)))
        load_s = time.perf_counter() - t0
        sampler.phase = "compact"
        t0 = time.perf_counter()
        compacted = client.compact(COLLECTION, wait=True)
        compact_s = time.perf_counter() - t0
        if acked != n or sum(s.graph_elements for s in compacted) != n:
            raise RuntimeError(f"{system}: acked {acked} of {n}, graphs hold fewer")
        sampler.phase = "idle"
        time.sleep(idle_s)
        st = sampler.sample()
        peak = max(sampler.peak("load"), sampler.peak("compact"), st.get("VmHWM", 0))
    return {
        "proc": proc,
        "client": client,
        "pid": pid,
        "started_mib": mib(started_rss),
        "peak_mib": mib(peak),
        "steady_mib": mib(st.get("VmRSS", 0)),
        "steady_anon_mib": mib(st.get("RssAnon", 0)),
        "steady_file_mib": mib(st.get("RssFile", 0)),
        "load_s": round(load_s, 1),
        "compact_s": round(compact_s, 1),
        "disk_mib": mib(du(workdir / system) / 1024),
    }


def search_round(client: Any, queries: np.ndarray, k: int, ef: int) -> tuple[float, list[list[int]]]:
    """One pass over the queries, one at a time: (QPS, the returned row numbers per query)."""
    found = []
    t0 = time.perf_counter()
    for query in queries:
        hits = client.search(COLLECTION, query, k=k, ef=ef, include_metadata=False)
        found.append([int(h.id) for h in hits])
    return len(queries) / (time.perf_counter() - t0), found


def recall_at(found: list[list[int]], truth: np.ndarray, k: int) -> float:
    return float(np.mean([len(set(f[:k]) & set(t[:k].tolist())) / k for f, t in zip(found, truth, strict=True)]))


def run(args: argparse.Namespace) -> dict[str, Any]:
    data, queries, truth, truth_note = load_data(args.data, args.n, args.queries)
    n, dim = data.shape
    result: dict[str, Any] = {
        "command": "python bench/quantization.py " + shlex.join(sys.argv[1:]),
        "commit": git_commit(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores",
        "data": {"path": str(args.data), "n": n, "dim": dim, "queries": len(queries), "truth": truth_note},
        "params": {"m": HNSW_M, "ef_construction": HNSW_EF_CONSTRUCTION, "ef": args.ef, "k": 10},
    }
    systems: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="vs-quant-") as tmp:
        try:
            for quantization in SYSTEMS:
                systems[quantization] = load_server(data, Path(tmp), quantization, args.idle_s)
                print(
                    f"quantization: {quantization} loaded",
                    {k: v for k, v in systems[quantization].items() if k not in ("proc", "client")},
                    flush=True,
                )
            qps: dict[str, list[float]] = {q: [] for q in SYSTEMS}
            for name in SYSTEMS:  # warm-up: a tenth of the queries each
                search_round(systems[name]["client"], queries[: max(1, len(queries) // 10)], 10, args.ef)
            for round_ in range(args.rounds):
                order = SYSTEMS if round_ % 2 == 0 else SYSTEMS[::-1]
                for name in order:
                    rate, found = search_round(systems[name]["client"], queries, 10, args.ef)
                    qps[name].append(rate)
                    systems[name]["recall_at_10"] = round(recall_at(found, truth, 10), 4)
            for name in SYSTEMS:
                s = systems[name]
                st = status(s["pid"])
                s["after_search_mib"] = mib(st.get("VmRSS", 0))
                s["after_search_anon_mib"] = mib(st.get("RssAnon", 0))
                s["after_search_file_mib"] = mib(st.get("RssFile", 0))
                s["qps_rounds"] = [round(q, 1) for q in qps[name]]
                s["qps"] = round(statistics.median(qps[name]), 1)
        finally:
            for s in systems.values():
                s.pop("client").close()
                s.pop("proc").stop()
    result["systems"] = systems
    f = systems["none"]
    result["ratios_over_float32"] = {
        name: {
            "steady_rss": round(q["steady_mib"] / f["steady_mib"], 3),
            "steady_rss_above_start": round(
                (q["steady_mib"] - q["started_mib"]) / (f["steady_mib"] - f["started_mib"]), 3
            ),
            "steady_anon": round(q["steady_anon_mib"] / f["steady_anon_mib"], 3),
            "peak_rss": round(q["peak_mib"] / f["peak_mib"], 3),
            "rss_after_search": round(q["after_search_mib"] / f["after_search_mib"], 3),
            "qps": round(q["qps"] / f["qps"], 3),
            "recall_at_10": round(q["recall_at_10"] / f["recall_at_10"], 4),
            "disk": round(q["disk_mib"] / f["disk_mib"], 3),
        }
        for name, q in systems.items()
        if name != "none"
    }
    return result


TITLES = {"none": "float32", "int8": "int8 (pread rows)", "int8-mmap": "int8 (mmap rows)"}
ROWS = [
    ("RSS when started (MiB)", "started_mib"),
    ("peak RSS, load + compaction (MiB)", "peak_mib"),
    ("steady RSS after compaction (MiB)", "steady_mib"),
    ("  of which anonymous (MiB)", "steady_anon_mib"),
    ("  of which file-backed (MiB)", "steady_file_mib"),
    ("RSS after the searches (MiB)", "after_search_mib"),
    ("  of which anonymous (MiB)", "after_search_anon_mib"),
    ("  of which file-backed (MiB)", "after_search_file_mib"),
    ("data directory on disk (MiB)", "disk_mib"),
    ("load s / compaction s", None),
    ("QPS, one client (median round)", "qps"),
    ("QPS rounds", "qps_rounds"),
    ("recall@10", "recall_at_10"),
]


def markdown(result: dict[str, Any]) -> str:
    systems = result["systems"]
    d, p = result["data"], result["params"]
    lines = [
        "# int8 scalar quantization vs float32 (issue #19 item 1)",
        "",
        f"Command: `{result['command']}` ({result['date']}, {result['machine']}; commit {result['commit']}).",
        "",
        f"{d['n']:,} x {d['dim']} seeded synthetic unit rows ({d['path']}), {d['queries']} held-out queries, "
        f"recall against {d['truth']}. All collections: inner product, M={p['m']}, "
        f"ef_construction={p['ef_construction']}; searched at ef={p['ef']}, k={p['k']}, one query per call, "
        "one client thread, the servers' order reversed every round (bench/quantization.py's docstring).",
        "",
        "| | " + " | ".join(TITLES[name] for name in systems) + " |",
        "|---|" + "---|" * len(systems),
    ]
    for label, key in ROWS:
        if key is None:
            cells = [f"{s['load_s']} / {s['compact_s']}" for s in systems.values()]
        else:
            cells = [str(s[key]) for s in systems.values()]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    ratios = result["ratios_over_float32"]
    names = list(ratios)
    lines += ["", "Ratios to float32 in this run:", "", "| | " + " | ".join(TITLES[n] for n in names) + " |"]
    lines.append("|---|" + "---|" * len(names))
    for key in ratios[names[0]]:
        lines.append(f"| {key} | " + " | ".join(str(ratios[n][key]) for n in names) + " |")
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA / "synthetic-100000x384")
    parser.add_argument("--n", type=int, default=None, help="the first n rows (default: all)")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--ef", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--idle-s", type=float, default=5.0)
    parser.add_argument("--quick", action="store_true", help="the first 20,000 rows, 200 queries, 2 rounds")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()
    if args.quick:
        args.n, args.queries, args.rounds, args.idle_s = args.n or 20_000, 200, 2, 2.0
    result = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    name = "quantization-quick" if args.quick else "quantization"
    (args.out / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / f"{name}.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
