"""Issue #19 item 1: the single-node server's memory against raw hnswlib on the same data.

    .venv/bin/python bench/memory.py                  # 100k x 384 -> bench/results/memory.{md,json}
    .venv/bin/python bench/memory.py --n 100000 --dim 512
    .venv/bin/python bench/memory.py --quick          # 20k x 384, a short idle wait (tests of the script)

One run, the same seeded synthetic rows (``testkit.datasets.embedding_like``, unit rows) for both:

(a) raw hnswlib in a child process of its own: ``Index(space="ip")``, ``init_index(n, M=16,
    ef_construction=200)`` (bench/harness.py's constants), ``add_items`` over chunks of 10,000 rows
    read from a file into one reused buffer (so the process never holds the whole data set, like
    the server, which receives it over the wire). Its ``VmHWM`` is its peak, its ``VmRSS`` after
    the build, the buffer freed, its steady state.
(b) our single-node server (``python -m server --local-shard``, started as
    ``testkit.serverproc.SingleNodeProcess`` starts it, default flags): the collection created
    with the same parameters, the rows upserted in requests of 1,000 from 4 client threads (as
    bench/ours.py does), then ``Compact(wait=true)``, then ``--idle-s`` seconds of nothing.

A sampler reads the server's ``/proc/<pid>/status`` every 50 ms: peak ``VmRSS`` while loading
(background compactions included: the shard folds every --compact-delta-items rows), while the final compaction
runs, and the steady ``VmRSS`` at the end of the idle wait; ``VmHWM`` at the end of each phase
catches a peak between two samples. ``/proc/<pid>/smaps_rollup`` at the end of each phase splits
anonymous from file-backed memory. With the trace on (default; ``--no-trace`` turns it off) the
server runs with ``VS_MEMORY_TRACE`` (``shard/memtrace.py``): every compaction logs its RSS at
each step (sealed delta, private graph copy, items added, snapshot written, published, old graph
freed), and the sampled peak between two steps is attributed to the later one.

``--server-env KEY=VALUE`` (repeatable) runs the server with extra environment (e.g.
``VS_MALLOC_ARENAS=0``), and ``--server-root DIR`` from another source tree (a ``git worktree`` of
an older commit, with its stubs and native module), for before/after rows; the run records both. Outputs: ``--out DIR``
(default ``bench/results``) ``memory.json`` (every sample and trace line) and ``memory.md``: the
part between ``<!-- run -->`` and ``<!-- /run -->`` is rewritten, the rest (the history of
changes) is kept.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from bench.harness import HNSW_EF_CONSTRUCTION, HNSW_M

REPO = Path(__file__).resolve().parent.parent
RAW_CHUNK = 10_000
INGEST_BATCH = 1000
INGEST_THREADS = 4
COMPACT_TIMEOUT_S = 3600.0  # a 1M-row Compact(wait) folds for 8-10 min on 2 cores; the client default is 600 s
COLLECTION = "memory"
SEED = 7
PHASES = ("started", "load", "compact", "idle")
_STATUS = ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem")
_ROLLUP = ("Rss", "Pss_Anon", "Pss_File", "Anonymous", "AnonHugePages", "Private_Clean", "Private_Dirty")


def mib(kib: float) -> float:
    return round(kib / 1024, 1)


def status(pid: int | str) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                key, _, rest = line.partition(":")
                if key in _STATUS:
                    out[key] = int(rest.split()[0])
    except (OSError, ValueError):
        return {}
    return out


def rollup(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            for line in handle:
                key, _, rest = line.partition(":")
                if key in _ROLLUP:
                    out[key] = int(rest.split()[0])
    except (OSError, ValueError):
        return {}
    return out


def top_mappings(pid: int, count: int = 8) -> list[dict[str, Any]]:
    """The ``count`` mappings of a process with the most resident memory (``/proc/<pid>/smaps``):
    what each is (a file, ``[heap]``, or anonymous), its size and its RSS in MiB."""
    found: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    try:
        with open(f"/proc/{pid}/smaps") as handle:
            for line in handle:
                head = line.split()
                if head and "-" in head[0] and ":" not in head[0]:
                    lo, hi = (int(x, 16) for x in head[0].split("-"))
                    current = {"what": head[5] if len(head) > 5 else "[anon]", "size_mib": mib((hi - lo) / 1024)}
                    found.append(current)
                elif head and head[0] == "Rss:" and current is not None:
                    current["rss_mib"] = mib(int(head[1]))
    except OSError:
        return []
    return sorted(found, key=lambda m: -m.get("rss_mib", 0))[:count]


def make_data(n: int, dim: int) -> np.ndarray:
    from testkit.datasets import embedding_like, unit_rows

    return unit_rows(embedding_like(n, dim, SEED))


# ---------------------------------------------------------------------------- (a) raw hnswlib
def raw_child(path: Path, n: int, dim: int, threads: int) -> None:
    """Builds raw hnswlib over the rows in ``path`` (float32, row-major); prints its figures."""
    import hnswlib

    before = status("self")
    index = hnswlib.Index(space="ip", dim=dim)
    index.init_index(max_elements=n, M=HNSW_M, ef_construction=HNSW_EF_CONSTRUCTION)
    buffer = np.empty((RAW_CHUNK, dim), dtype=np.float32)
    started = time.perf_counter()
    with open(path, "rb") as handle:
        for lo in range(0, n, RAW_CHUNK):
            rows = min(RAW_CHUNK, n - lo)
            view = buffer[:rows]
            handle.readinto(view.data.cast("B"))
            index.add_items(view, np.arange(lo, lo + rows), num_threads=threads)
    build_s = time.perf_counter() - started
    del view, buffer  # the steady state is the index alone (the peak includes the chunk buffer)
    after = status("self")
    size = index.index_file_size() if hasattr(index, "index_file_size") else 0
    print(
        json.dumps(
            {
                "before_index": before,
                "after_build": after,
                "rollup": rollup(os.getpid()),
                "build_s": round(build_s, 1),
                "index_file_bytes": size,
                "hnswlib": getattr(hnswlib, "__version__", "?"),
            }
        )
    )


def run_raw(path: Path, n: int, dim: int, threads: int) -> dict[str, Any]:
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--raw-child",
            str(path),
            "--n",
            str(n),
            "--dim",
            str(dim),
            "--threads",
            str(threads),
        ],
        check=True,
        capture_output=True,
        text=True,
        cwd=REPO,
    ).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    result["peak_mib"] = mib(result["after_build"]["VmHWM"])
    result["steady_mib"] = mib(result["after_build"]["VmRSS"])
    result["baseline_mib"] = mib(result["before_index"]["VmRSS"])
    return result


# ---------------------------------------------------------------------------- (b) our server
class Sampler:
    """Samples one process's status every ``period`` s, tagged with the current phase."""

    def __init__(self, pid: int, period: float = 0.05) -> None:
        self.pid = pid
        self.period = period
        self.phase = "started"
        self.samples: list[tuple[float, str, int, int, int]] = []  # t, phase, VmRSS, RssAnon, RssFile
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.period)

    def sample(self) -> dict[str, int]:
        st = status(self.pid)
        if st:
            self.samples.append(
                (time.time(), self.phase, st.get("VmRSS", 0), st.get("RssAnon", 0), st.get("RssFile", 0))
            )
        return st

    def peak(self, phase: str) -> int:
        return max((s[2] for s in self.samples if s[1] == phase), default=0)

    def peak_between(self, t0: float, t1: float) -> int:
        return max((s[2] for s in self.samples if t0 < s[0] <= t1), default=0)


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def run_server(
    data: np.ndarray, workdir: Path, idle_s: float, trace: bool, env: dict[str, str], root: Path = REPO
) -> dict[str, Any]:
    from vectorsearch_client import Client

    from testkit.serverproc import SingleNodeProcess

    n, dim = data.shape
    trace_path = workdir / "memtrace.jsonl"
    saved = dict(os.environ)
    os.environ.update(env)
    if trace:
        os.environ["VS_MEMORY_TRACE"] = str(trace_path)
    else:
        os.environ.pop("VS_MEMORY_TRACE", None)
    proc = SingleNodeProcess(workdir / "single", root=root)
    try:
        address = proc.start()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    assert proc.proc is not None
    pid = proc.proc.pid
    client = Client(address, timeout=600.0)
    phases: dict[str, dict[str, Any]] = {}
    times: dict[str, float] = {}
    try:
        client.wait_ready(60)
        with Sampler(pid) as sampler:
            time.sleep(1.0)

            def end_phase(name: str) -> None:
                st = sampler.sample()
                phases[name] = {
                    "peak_sampled_mib": mib(sampler.peak(name)),
                    "vmhwm_at_end_mib": mib(st.get("VmHWM", 0)),
                    "rss_at_end_mib": mib(st.get("VmRSS", 0)),
                    "rollup_at_end_mib": {k: mib(v) for k, v in rollup(pid).items()},
                }

            end_phase("started")
            client.create_collection(
                COLLECTION, dim, metric="inner_product", m=HNSW_M, ef_construction=HNSW_EF_CONSTRUCTION
            )

            def upsert(lo: int) -> int:
                ids = [str(i) for i in range(lo, min(n, lo + INGEST_BATCH))]
                return client.upsert(COLLECTION, ids, data[lo : lo + INGEST_BATCH])

            sampler.phase = "load"
            started = time.perf_counter()
            with ThreadPoolExecutor(INGEST_THREADS) as pool:
                acked = sum(pool.map(upsert, range(0, n, INGEST_BATCH)))
            times["load_s"] = round(time.perf_counter() - started, 1)
            end_phase("load")
            sampler.phase = "compact"
            started = time.perf_counter()
            compacted = client.compact(COLLECTION, wait=True, timeout=COMPACT_TIMEOUT_S)
            times["compact_s"] = round(time.perf_counter() - started, 1)
            end_phase("compact")
            in_graphs = sum(s.graph_elements for s in compacted)
            if acked != n or in_graphs != n:
                raise RuntimeError(f"acked {acked}, in graphs {in_graphs} of {n}")
            sampler.phase = "idle"
            time.sleep(idle_s)
            end_phase("idle")
            tail = [s[2] for s in sampler.samples if s[1] == "idle" and s[0] >= sampler.samples[-1][0] - 2.0]
            steady = {
                "rss_mib": mib(status(pid).get("VmRSS", 0)),
                "median_last_2s_mib": mib(float(np.median(tail))),
                "top_mappings": top_mappings(pid),
            }
            samples = sampler.samples
        disk = {"snapshots_mib": mib(du(workdir / "single" / "shard") / 1024)}
    finally:
        client.close()
        proc.stop()
    trace_lines = []
    if trace and trace_path.exists():
        trace_lines = [json.loads(line) for line in trace_path.read_text().splitlines() if line.strip()]
    return {
        "pid_env": env,
        "trace": trace,
        "phases": phases,
        "steady": steady,
        "times": times,
        "disk": disk,
        "samples": [[round(t, 3), p, r, a, f] for t, p, r, a, f in samples],
        "memtrace": trace_lines,
    }


def fold_table(server: dict[str, Any]) -> list[dict[str, Any]]:
    """Each compaction's steps: RSS at the step and the sampled peak since the previous step."""
    samples = server["samples"]
    start = samples[0][0] if samples else 0.0
    rows = []
    previous = None
    for line in server["memtrace"]:
        peak = max((s[2] for s in samples if previous is not None and previous < s[0] <= line["t"]), default=0)
        rows.append(
            {
                "t_s": round(line["t"] - start, 2),
                "step": line["step"],
                "rss_mib": mib(line.get("VmRSS", 0)),
                "anon_mib": mib(line.get("RssAnon", 0)),
                "file_mib": mib(line.get("RssFile", 0)),
                "peak_since_previous_mib": mib(peak),
                "figures": {
                    k: v for k, v in line.items() if k not in ("t", "step", "VmRSS", "VmHWM", "RssAnon", "RssFile")
                },
            }
        )
        previous = line["t"]
    return rows


# ---------------------------------------------------------------------------- report
def summary(raw: dict[str, Any], server: dict[str, Any]) -> dict[str, Any]:
    phases = server["phases"]
    load_peak = max(phases["load"]["peak_sampled_mib"], phases["load"]["vmhwm_at_end_mib"])
    compact_peak = max(phases["compact"]["peak_sampled_mib"], phases["compact"]["vmhwm_at_end_mib"])
    steady = server["steady"]["median_last_2s_mib"]
    return {
        "raw_peak_mib": raw["peak_mib"],
        "raw_steady_mib": raw["steady_mib"],
        "server_idle_start_mib": phases["started"]["rss_at_end_mib"],
        "server_peak_load_mib": load_peak,
        "server_peak_compact_mib": phase_peak(phases["compact"]),
        "server_peak_mib": max(load_peak, compact_peak),
        "server_steady_mib": steady,
        "peak_ratio": round(max(load_peak, compact_peak) / raw["peak_mib"], 2),
        "steady_ratio": round(steady / raw["steady_mib"], 2),
    }


def phase_peak(phase: dict[str, Any]) -> float:
    """The sampled peak within the phase (VmHWM is process-wide, so it cannot split phases)."""
    return float(phase["peak_sampled_mib"])


def markdown(result: dict[str, Any]) -> str:
    raw, server, s = result["raw"], result["server"], result["summary"]
    n, dim = result["n"], result["dim"]
    lines = [
        f"Command: `{result['command']}` ({result['when']}, {result['machine']}, load average "
        f"{result['loadavg_before']} before; commit {result['commit']}).",
        "",
        f"{n:,} x {dim} seeded synthetic unit rows, HNSW M={HNSW_M}, ef_construction={HNSW_EF_CONSTRUCTION}, "
        "inner product, both sides. Server extra environment: "
        + (", ".join(f"`{k}={v}`" for k, v in server["pid_env"].items()) or "none")
        + ".",
        "",
        "| process | peak RSS MiB | x raw | steady RSS MiB | x raw |",
        "| --- | ---: | ---: | ---: | ---: |",
        f"| raw hnswlib, in process (its interpreter alone: {raw['baseline_mib']} MiB; index file "
        f"{mib(raw['index_file_bytes'] / 1024)} MiB; build {raw['build_s']} s) | {raw['peak_mib']} | 1.00 | "
        f"{raw['steady_mib']} | 1.00 |",
        f"| ours, single node (idle before loading: {s['server_idle_start_mib']} MiB) | {s['server_peak_mib']} | "
        f"**{s['peak_ratio']}** | {s['server_steady_mib']} | **{s['steady_ratio']}** |",
        "",
        "Targets: peak <= 2x, steady <= 1.3x raw hnswlib. Peak = max of the 50 ms samples of VmRSS and "
        "VmHWM at the end of the phase; steady = median VmRSS over the last 2 s of the idle wait.",
        "",
        "| server phase | seconds | peak VmRSS sampled | x raw peak | VmRSS at end | anonymous | file-backed |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    seconds = {"load": server["times"].get("load_s", ""), "compact": server["times"].get("compact_s", "")}
    for name in PHASES:
        phase = server["phases"][name]
        roll = phase["rollup_at_end_mib"]
        lines.append(
            f"| {name} | {seconds.get(name, '')} | {phase['peak_sampled_mib']} | "
            f"{round(phase['peak_sampled_mib'] / raw['peak_mib'], 2)} | {phase['rss_at_end_mib']} | "
            f"{roll.get('Anonymous', '')} | {round(roll.get('Rss', 0) - roll.get('Anonymous', 0), 1)} |"
        )
    lines += [
        "",
        "The server's largest mappings when steady (`/proc/<pid>/smaps`): "
        + "; ".join(
            f"{m['what']} {m.get('rss_mib', 0)} of {m['size_mib']} MiB" for m in server["steady"]["top_mappings"]
        )
        + ".",
    ]
    folds = result["folds"]
    if folds:
        lines += [
            "",
            "Every compaction's steps (`VS_MEMORY_TRACE`): RSS at the step, and the sampled peak since the "
            "step before (attributed to this step).",
            "",
            "| t s | step | VmRSS | anon | file | peak since previous | figures |",
            "| ---: | --- | ---: | ---: | ---: | ---: | --- |",
        ]
        for row in folds:
            figures = ", ".join(f"{k}={v}" for k, v in row["figures"].items())
            lines.append(
                f"| {row['t_s']} | {row['step']} | {row['rss_mib']} | {row['anon_mib']} | {row['file_mib']} | "
                f"{row['peak_since_previous_mib']} | {figures} |"
            )
    return "\n".join(lines)


def write_outputs(result: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "memory.json").write_text(json.dumps(result, indent=1) + "\n")
    md_path = out / "memory.md"
    body = f"<!-- run -->\n{markdown(result)}\n<!-- /run -->"
    if md_path.exists() and "<!-- run -->" in md_path.read_text():
        text = re.sub(r"<!-- run -->.*?<!-- /run -->", lambda _: body, md_path.read_text(), flags=re.S)
    else:
        text = f"# Memory: single-node server vs raw hnswlib (issue #19 item 1)\n\n## Latest run\n\n{body}\n"
    md_path.write_text(text)


def git_commit(root: Path = REPO) -> str:
    """The server tree's commit (``+dirty`` with uncommitted changes)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True)
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except OSError:
        return "?"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--quick", action="store_true", help="20k rows, 3 s idle (a test of the script)")
    p.add_argument("--idle-s", type=float, default=10.0)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="raw hnswlib's add_items threads")
    p.add_argument("--no-trace", action="store_true")
    p.add_argument("--server-env", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    p.add_argument(
        "--server-root",
        type=Path,
        default=REPO,
        help="the source tree the server runs from (e.g. a worktree of an older commit, for before/after rows)",
    )
    p.add_argument("--raw-child", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.raw_child is not None:
        raw_child(args.raw_child, args.n, args.dim, args.threads)
        return
    if args.quick:
        args.n, args.idle_s = 20_000, 3.0
    env = dict(item.split("=", 1) for item in args.server_env)
    loadavg = os.getloadavg()
    data = make_data(args.n, args.dim)
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        workdir = Path(tmp)
        rows = workdir / "base.f32"
        data.tofile(rows)
        raw = run_raw(rows, args.n, args.dim, args.threads)
        rows.unlink()
        server = run_server(data, workdir, args.idle_s, not args.no_trace, env, args.server_root.resolve())
        shutil.rmtree(workdir / "single", ignore_errors=True)
    result: dict[str, Any] = {
        "command": " ".join(["python bench/memory.py", *sys.argv[1:]]),
        "when": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{os.cpu_count()} cores, {platform.machine()}",
        "loadavg_before": [round(x, 2) for x in loadavg],
        "commit": git_commit(args.server_root.resolve()),
        "n": args.n,
        "dim": args.dim,
        "raw": raw,
        "server": server,
    }
    result["summary"] = summary(raw, server)
    result["folds"] = fold_table(server)
    write_outputs(result, args.out)
    print(json.dumps(result["summary"], indent=1))


if __name__ == "__main__":
    main()
