"""End-to-end image ingestion (issue #14, "Benchmark"): images/s of ``vsearch index DIR`` against the
image tower's own throughput on the same Triton, in one run. Target: e2e >= 0.8x the tower.

    .venv/bin/python bench/clip_ingest_e2e.py [--images 1500] [--rounds 2] [--tower-seconds 10]
                                              [--jobs 4] [--batch 32] [--out bench/results]

What one run does:

1. Waits (at most ``--max-wait-s``) until the 1-minute load average is <= ``--max-load`` (the
   machine is shared), then writes ``--images`` distinct generated 640x480 JPEG files
   (``testkit.clipdata``, quality 90) into a temporary folder.
2. The small random CLIP (``clipmodel.random``, seed 0) exported with the default
   ``ServingOptions`` (what ``vsearch up`` / ``server.cluster --clip random`` serve) and started in
   one ``clipmodel.triton_process.TritonProcess``; then ``python -m server.cluster --shards 1
   --triton-url URL --embedding-cache off`` against that Triton (so every image reaches it).
3. Per round: **tower**: 32 threads sharing one ``server.embedding.TritonEmbedder`` (cache off)
   send the same files' bytes straight to Triton, one image per call, for ``--tower-seconds``
   after 1 s of warm-up: images/s. **e2e**: ``python -m cli --address ADDR index DIR
   --collection bench-<round> --progress off --jobs J --batch B`` (a new collection each round, so
   every file is new): images/s as the CLI prints it ("new images/s": its own timer, from the first
   request to the last answer) and by wall clock around the whole command (interpreter start
   included). Ratio = e2e / tower of the same round; rounds are pooled (total images / total time).
4. For each phase: CPU seconds of Triton (tritonserver + python-backend stubs), of the cluster (server
   + shard), of the CLI and of this process, of the machine (``/proc/stat``: what is left is other
   work), Triton's average batch; load average before and after.

Outputs ``OUT/clip-ingest-e2e.json`` and ``OUT/clip-ingest-e2e.md`` (its "Interpretation" section
is written by hand after a run; a rerun leaves a placeholder).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import machine  # noqa: E402
from bench.clip_embedding import group_cpu_s, machine_busy_s, triton_counters  # noqa: E402

CLIENTS = 32
# clipmodel/preprocess.py before JPEG draft decoding (the "before" of bench/results/clip-preprocess.md)
BEFORE_COMMIT = "3f99e70"
CALL_TIMEOUT_S = 30.0
DONE = re.compile(r"done: (\d+) new, (\d+) already indexed, (\d+) failed of (\d+) files in ([\d.]+) s")


def wait_for_quiet(max_load: float, max_wait_s: float) -> tuple[list[float], float]:
    """Waits until the 1-minute load average is <= ``max_load`` (or ``max_wait_s`` passed);
    returns the load then and the seconds waited."""
    began = time.monotonic()
    while os.getloadavg()[0] > max_load and time.monotonic() - began < max_wait_s:
        print(f"load {machine.loadavg()} > {max_load}: waiting", file=sys.stderr, flush=True)
        time.sleep(15)
    return machine.loadavg(), time.monotonic() - began


def write_images(directory: Path, count: int, seed: int) -> list[bytes]:
    from testkit.clipdata import encode, picture

    directory.mkdir(parents=True)
    images = []
    for i in range(count):
        data = encode(picture(seed * 1_000_003 + i, (640, 480)), "JPEG")
        (directory / f"img-{i:05d}.jpg").write_bytes(data)
        images.append(data)
    return images


class Meter:
    """CPU seconds of Triton, the cluster, the children this process waited for, this process and
    the machine, and Triton's clip_image counters, between ``start()`` and ``stop()``."""

    def __init__(self, triton_pgid: int, cluster_pgid: int, stats_client: Any) -> None:
        self.triton_pgid, self.cluster_pgid, self.client = triton_pgid, cluster_pgid, stats_client

    def _read(self) -> dict[str, Any]:
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return {
            "wall": time.perf_counter(),
            "triton": sum(group_cpu_s(self.triton_pgid)),
            "cluster": sum(group_cpu_s(self.cluster_pgid)),
            "cli": children.ru_utime + children.ru_stime,
            "bench": time.process_time(),
            "machine": machine_busy_s(),
            "counters": triton_counters(self.client, "clip_image"),
            "load": machine.loadavg(),
        }

    def start(self) -> None:
        self.began = self._read()

    def stop(self) -> dict[str, Any]:
        end, began = self._read(), self.began
        seconds = end["wall"] - began["wall"]
        inferences = end["counters"]["inferences"] - began["counters"]["inferences"]
        executions = end["counters"]["executions"] - began["counters"]["executions"]
        out: dict[str, Any] = {
            "seconds": seconds,
            "load_before": began["load"],
            "load_after": end["load"],
            "triton_inferences": inferences,
            "avg_batch": inferences / executions if executions else 0.0,
        }
        for key in ("triton", "cluster", "cli", "bench", "machine"):
            out[f"cpu_{key}_s"] = end[key] - began[key]
        return out


def tower(embedder: Any, images: list[bytes], seconds: float, meter: Meter) -> dict[str, Any]:
    """Images/s of CLIENTS threads embedding one image per call straight through Triton."""
    from core.errors import DomainError

    counts = [0] * CLIENTS
    errors = [0] * CLIENTS
    stop = threading.Event()
    measuring = threading.Event()

    def client(k: int) -> None:
        i = k
        while not stop.is_set():
            result = embedder.embed_images([images[i % len(images)]], timeout=CALL_TIMEOUT_S)[0]
            if measuring.is_set():
                counts[k] += 1
                errors[k] += isinstance(result, DomainError)
            i += CLIENTS

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(CLIENTS)]
    for t in threads:
        t.start()
    time.sleep(1.0)  # warm-up
    meter.start()
    measuring.set()
    time.sleep(seconds)
    measuring.clear()
    out = meter.stop()
    stop.set()
    for t in threads:
        t.join()
    out["images"] = sum(counts)
    out["errors"] = sum(errors)
    out["images_s"] = out["images"] / out["seconds"]
    return out


def index(address: str, directory: Path, collection: str, args: argparse.Namespace, meter: Meter) -> dict[str, Any]:
    command = [
        sys.executable, "-m", "cli", "--address", address, "index", str(directory),
        "--collection", collection, "--progress", "off", "--jobs", str(args.jobs), "--batch", str(args.batch),
    ]  # fmt: skip
    meter.start()
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=3600)
    out = meter.stop()
    match = DONE.search(proc.stdout)
    if proc.returncode != 0 or match is None:
        raise RuntimeError(f"vsearch index failed ({proc.returncode}): {proc.stdout[-2000:]} {proc.stderr[-2000:]}")
    new, skipped, failed, files, cli_seconds = (float(g) for g in match.groups())
    out.update(
        {
            "new": int(new),
            "skipped": int(skipped),
            "failed": int(failed),
            "files": int(files),
            "cli_seconds": cli_seconds,
            "images_s": new / cli_seconds,
            "wall_images_s": new / out["seconds"],
            "cli_line": match.group(0),
        }
    )
    return out


def start_cluster(workdir: Path, triton_url: str) -> tuple[subprocess.Popen[bytes], str]:
    ready = workdir / "ready"
    log = open(workdir / "cluster.log", "wb")  # noqa: SIM115 (kept open for the child's lifetime)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "server.cluster",
            "--shards",
            "1",
            "--data-dir",
            str(workdir / "cluster"),
            "--listen",
            "127.0.0.1:0",
            "--ready-file",
            str(ready),
            "--triton-url",
            triton_url,
            "--embedding-cache",
            "off",
            "--log-level",
            "WARNING",
        ],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"the cluster did not start: {(workdir / 'cluster.log').read_text()[-3000:]}")
        time.sleep(0.1)
    return proc, ready.read_text().strip()


def stop_cluster(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def pool(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Rounds pooled: total images / total seconds, per phase; and the ratios."""
    tower_rate = sum(r["tower"]["images"] for r in rows) / sum(r["tower"]["seconds"] for r in rows)
    e2e_rate = sum(r["e2e"]["new"] for r in rows) / sum(r["e2e"]["cli_seconds"] for r in rows)
    wall_rate = sum(r["e2e"]["new"] for r in rows) / sum(r["e2e"]["seconds"] for r in rows)
    return {
        "tower_images_s": tower_rate,
        "e2e_images_s": e2e_rate,
        "e2e_wall_images_s": wall_rate,
        "ratio": e2e_rate / tower_rate,
        "wall_ratio": wall_rate / tower_rate,
        "per_round": [r["ratio"] for r in rows],
        "wall_per_round": [r["wall_ratio"] for r in rows],
    }


def cores(row: dict[str, Any]) -> str:
    s = row["seconds"]
    return " / ".join(f"{row[f'cpu_{k}_s'] / s:.2f}" for k in ("triton", "cluster", "cli", "bench", "machine"))


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# End-to-end image ingestion: `vsearch index` against the image tower (issue #14)",
        "",
        f"Command: `{result['command']}`",
        "",
        f"- Date: {result['date']}; commit {result['commit']}; {result['cpus']} CPUs ({result['cpu']}); "
        f"total run {result['total_s']:.0f} s",
        f"- Load average (1/5/15 min, `uptime`): at start {result['load_start']} (waited {result['waited_s']:.0f} s "
        f"for the 1-minute load to be <= {result['max_load']}), at end {result['load_end']}",
        f"- Model: `{result['model']}` (random CLIP, seed 0), default `ServingOptions` {result['serving']}",
        f"- Images: {result['images']} distinct generated 640x480 JPEG files (quality 90, mean "
        f"{result['mean_bytes'] / 1024:.0f} KiB); the same files' bytes feed both measurements",
        f"- Tower: {CLIENTS} threads sharing one `TritonEmbedder` (cache off), one image per call, "
        f"{result['tower_seconds']} s per round after 1 s of warm-up",
        f"- e2e: `python -m cli --address ADDR index DIR --collection bench-<round> --progress off --jobs "
        f"{result['jobs']} --batch {result['batch']}` against `python -m server.cluster --shards 1 --triton-url "
        "URL --embedding-cache off` (the same Triton); images/s as the CLI prints it (its own timer) and by wall "
        "clock around the command",
        "",
        f"- Preprocessing in the image model: **after** = `clipmodel/preprocess.py` of this tree (JPEG draft "
        f"decoding, ...); **before** = the same file as of commit {result['compare_before'] or '-'} (full-size "
        "decode): a second Triton and cluster with that one file replaced, measured alternately in the same "
        "rounds (both idle while the other is measured)",
        "",
        "| round | preprocessing | phase | images | seconds | images/s | avg batch | "
        "CPU cores: Triton / cluster / CLI / bench / machine | load before -> after |",
        "| ---: | --- | --- | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for r in result["rounds"]:
        for label in [k for k in ("after", "before") if k in r]:
            t, e = r[label]["tower"], r[label]["e2e"]
            lines.append(
                f"| {r['round']} | {label} | tower | {t['images']:,} | {t['seconds']:.1f} | {t['images_s']:,.0f} | "
                f"{t['avg_batch']:.1f} | {cores(t)} | {t['load_before']} -> {t['load_after']} |"
            )
            lines.append(
                f"| {r['round']} | {label} | e2e `vsearch index` | {e['new']:,} | {e['cli_seconds']:.1f} "
                f"(wall {e['seconds']:.1f}) | {e['images_s']:,.0f} (wall {e['wall_images_s']:,.0f}) | "
                f"{e['avg_batch']:.1f} | {cores(e)} | {e['load_before']} -> {e['load_after']} |"
            )
    lines += [
        "",
        "Pooled over the rounds (images / seconds):",
        "",
        "| preprocessing | tower images/s | e2e images/s (CLI) | e2e / tower (goal >= 0.8) | per round | met "
        "| e2e / tower by wall clock (interpreter start included) |",
        "| --- | ---: | ---: | ---: | --- | --- | ---: |",
    ]
    for label, p in result["pooled"].items():
        lines.append(
            f"| {label} | {p['tower_images_s']:,.0f} | {p['e2e_images_s']:,.0f} | {p['ratio']:.2f} | "
            f"{', '.join(f'{x:.2f}' for x in p['per_round'])} | {'yes' if p['ratio'] >= 0.8 else 'no'} | "
            f"{p['wall_ratio']:.2f} ({', '.join(f'{x:.2f}' for x in p['wall_per_round'])}) |"
        )
    if "before" in result["pooled"]:
        a, b = result["pooled"]["after"], result["pooled"]["before"]
        lines.append(
            f"\nafter / before: tower {a['tower_images_s'] / b['tower_images_s']:.2f}x, "
            f"e2e {a['e2e_images_s'] / b['e2e_images_s']:.2f}x"
        )
    lines += [
        "",
        "## Interpretation",
        "",
        "(Written by hand after a run; a rerun leaves this placeholder.)",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1500)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--tower-seconds", type=float, default=10.0)
    parser.add_argument("--jobs", type=int, default=4, help="vsearch index --jobs (its default: 4)")
    parser.add_argument("--batch", type=int, default=32, help="vsearch index --batch (its default: 32)")
    parser.add_argument("--max-load", type=float, default=1.5, help="wait for a 1-minute load at most this")
    parser.add_argument("--max-wait-s", type=float, default=600.0)
    parser.add_argument(
        "--compare-before",
        default=BEFORE_COMMIT,
        metavar="COMMIT",
        help="also serve the image model with clipmodel/preprocess.py as of COMMIT (a second Triton and "
        "cluster, measured alternately in the same rounds); '' for none",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    command = " ".join([".venv/bin/python bench/clip_ingest_e2e.py", *(sys.argv[1:] if argv is None else argv)])

    import tritonclient.grpc as grpcclient

    from clipmodel import export
    from clipmodel import random as random_clip
    from clipmodel.triton_process import TritonProcess
    from server.embedding import TritonEmbedder, make_cache

    began = time.time()
    load_start, waited = wait_for_quiet(args.max_load, args.max_wait_s)
    result: dict[str, Any] = {
        "command": command,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "commit": machine.git_commit(ROOT),
        "cpus": len(os.sched_getaffinity(0)),
        "cpu": machine.cpu_model(),
        "load_start": load_start,
        "waited_s": waited,
        "max_load": args.max_load,
        "images": args.images,
        "tower_seconds": args.tower_seconds,
        "jobs": args.jobs,
        "batch": args.batch,
        "compare_before": args.compare_before,
        "rounds": [],
    }
    tmp = Path(tempfile.mkdtemp(prefix="clip-ingest-e2e-"))
    try:
        images = write_images(tmp / "images", args.images, seed=int(began) % 1000)
        result["mean_bytes"] = sum(map(len, images)) / len(images)
        options = export.ServingOptions()
        result["serving"] = dataclasses.asdict(options)
        identity = export.export(random_clip.save(tmp / "weights"), tmp / "repo", options)
        result["model"] = identity.id
        repos = {"after": tmp / "repo"}
        if args.compare_before:
            repos["before"] = tmp / "repo-before"
            shutil.copytree(repos["after"], repos["before"])
            old = subprocess.run(
                ["git", "show", f"{args.compare_before}:clipmodel/preprocess.py"],
                cwd=ROOT, capture_output=True, text=True, check=True,
            ).stdout  # fmt: skip
            (repos["before"] / "clip_image" / "1" / "vs_clip_preprocess.py").write_text(old)
        with contextlib.ExitStack() as stack:
            setups: dict[str, dict[str, Any]] = {}
            for label, repo in repos.items():
                triton = stack.enter_context(TritonProcess(repo, tmp / f"triton-{label}"))
                triton.start()
                (tmp / label).mkdir()
                cluster, address = start_cluster(tmp / label, triton.grpc_url)
                stack.callback(stop_cluster, cluster)
                setups[label] = {
                    "address": address,
                    "embedder": TritonEmbedder(triton.grpc_url, cache=make_cache("off")),
                    "meter": Meter(triton.pid, cluster.pid, grpcclient.InferenceServerClient(triton.grpc_url)),
                }
            for r in range(args.rounds):
                order = list(setups) if r % 2 == 0 else list(reversed(setups))
                row: dict[str, Any] = {"round": r}
                for label in order:
                    setup = setups[label]
                    t = tower(setup["embedder"], images, args.tower_seconds, setup["meter"])
                    e = index(setup["address"], tmp / "images", f"bench-{r}", args, setup["meter"])
                    row[label] = {
                        "tower": t,
                        "e2e": e,
                        "ratio": e["images_s"] / t["images_s"],
                        "wall_ratio": e["wall_images_s"] / t["images_s"],
                    }
                    print(
                        f"round {r} {label}: tower {t['images_s']:.0f} images/s, e2e {e['images_s']:.0f} "
                        f"(wall {e['wall_images_s']:.0f}), ratio {row[label]['ratio']:.2f}; load {machine.loadavg()}",
                        file=sys.stderr,
                        flush=True,
                    )
                result["rounds"].append(row)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result["pooled"] = {label: pool([row[label] for row in result["rounds"]]) for label in repos}
    result["load_end"] = machine.loadavg()
    result["total_s"] = time.time() - began
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "clip-ingest-e2e.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "clip-ingest-e2e.md").write_text(markdown(result))
    print(f"wrote {args.out / 'clip-ingest-e2e.md'}", file=sys.stderr)


if __name__ == "__main__":
    main()
