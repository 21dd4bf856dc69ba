"""CLIP embedding through Triton as the server uses it (issue #14, "Benchmark"): items/s and
latency of the text and image towers at 1, 8 and 32 concurrent clients, Triton's dynamic batching
on and off, against the same ONNX towers called in this process, all in one run.

    .venv/bin/python bench/clip_embedding.py [--weights HF_DIR] [--quick]

What one run does, in this order:

1. Weights: ``--weights`` (a local Hugging Face CLIP directory) or the small random CLIP of
   ``clipmodel.random`` (seed 0). ``clipmodel.export`` writes the model repository once with the
   default ``ServingOptions`` ("batching on": dynamic batching, the exported queue delay and
   instance counts); a copy gets the same options with ``queue_delay_us=None`` ("batching off":
   no ``dynamic_batching`` block, so Triton runs every request alone). Nothing else differs.
2. In process (no Triton running): the exported ``model.onnx`` of each tower in an onnxruntime
   session configured as the python backend configures it (``intra_op_threads`` of the options,
   one inter-op thread, sequential, no spinning), at batch 1, 8, 32 and 64: items/s and latency
   per call, once with the work a Triton instance does per item (tokenise, or decode + resize +
   crop + normalise) and once for the model alone (inputs prepared beforehand). One thread.
3. Triton (``clipmodel.triton_process``), one setting at a time, alternating the order per round
   (on/off, then off/on, ...). Clients are threads sharing one ``server.embedding.TritonEmbedder``
   with the cache off (``make_cache("off")``: every call reaches Triton), each calling
   ``embed_texts([text])`` or ``embed_images([jpeg])``: one item per call, the next call when the
   answer is back. Per cell: a warm-up at the same concurrency, then ``--seconds`` of measurement;
   items/s = calls / wall time from the common start to the last thread's end; p50 / p99 / max of
   the call latencies; calls slower than 400 ms (Triton 2.51's python backend has been seen to
   stall ~500 ms under bursts); Triton's average batch = delta inference_count / delta
   execution_count, and the mean time a request spent inside Triton (its queue, and the rest)
   from Triton's statistics; CPU used during the cell, in cores: the client process(es)
   (``time.process_time``), tritonserver and its python-backend stubs (``/proc``, its process
   group) and the whole machine (``/proc/stat``: what is left over is other work). With
   ``--procs 2,4`` (the default) the largest concurrency is also run by 2 and by 4 client
   processes (``--worker``, each with its own embedder and an equal share of the threads), to
   tell a limit of the Python client (one GIL) from a limit of Triton. Rounds are pooled: items/s = all calls /
   all measured time, percentiles over all calls, batch from the summed counters.
4. Targets (issue #14): batching on >= 2x the items/s of batching off at 32 clients, per tower;
   batching on p50 at 1 client <= 1.1x batching off's.

Outputs: ``OUT/clip-embedding.json`` (every cell of every round, the pooled figures, machine and
load) and ``OUT/clip-embedding.md`` (tables and targets; its "Interpretation" section is written
by hand after a run: a rerun leaves a placeholder). ``OUT`` is ``bench/results`` by default,
``bench/data/clip-embedding-quick`` with ``--quick`` (1 round, short cells: < 60 s).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import IO, Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import machine  # noqa: E402
from clipmodel import export  # noqa: E402

TOWERS = ("text", "image")
MODEL = {"text": "clip_text", "image": "clip_image"}
SETTING_LABEL = {"on": "batching on", "off": "batching off"}
STALL_S = 0.4
HISTOGRAM_MS = (1, 2, 5, 10, 20, 50, 100, 200, 300, 400, 500, 600, 800, 1000)
CALL_TIMEOUT_S = 30.0
PROTOCOL = "@@ "  # prefix of a worker's protocol lines on stdout (anything else there is ignored)

SUBJECTS = [
    "a cat",
    "two dogs",
    "a red bicycle",
    "an astronaut",
    "a bowl of coffee",
    "a rocket",
    "a motorcycle",
    "an old lighthouse",
]
PLACES = [
    "on a wooden table",
    "in the snow",
    "by a brick wall",
    "at night",
    "near the sea",
    "in a busy city street in the rain",
    "on the launch pad",
    "in a field of sunflowers under a blue sky",
]


def texts() -> list[str]:
    """64 distinct captions of 3 to 13 words."""
    return [f"a photo of {s} {p}" for s in SUBJECTS for p in PLACES]


# -- CPU accounting --------------------------------------------------------------------------


def group_cpu_s(pgid: int) -> tuple[float, float]:
    """CPU seconds (user + system) so far of process ``pgid`` itself and of the other processes
    of its process group (tritonserver and its python-backend stubs)."""
    tick = os.sysconf("SC_CLK_TCK")
    own = others = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) != pgid:
            continue
        seconds = (int(fields[11]) + int(fields[12])) / tick
        if int(entry) == pgid:
            own += seconds
        else:
            others += seconds
    return own, others


def machine_busy_s() -> float:
    """CPU seconds the whole machine has been busy (every process, ours and others'), from /proc/stat."""
    with open("/proc/stat") as fh:
        values = [int(v) for v in fh.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (sum(values[:8]) - idle) / os.sysconf("SC_CLK_TCK")


COUNTERS = ("success", "queue", "compute_input", "compute_infer", "compute_output")


def triton_counters(client: Any, model: str) -> dict[str, int]:
    """Triton's statistics of ``model``: inference and execution counts, and the request count and
    nanoseconds of each phase (success = the whole request inside Triton)."""
    stats = client.get_inference_statistics(model, as_json=True)["model_stats"]
    out = {"inferences": 0, "executions": 0, **{f"{k}_count": 0 for k in COUNTERS}, **{f"{k}_ns": 0 for k in COUNTERS}}
    for s in stats:
        out["inferences"] += int(s.get("inference_count", 0))
        out["executions"] += int(s.get("execution_count", 0))
        phases = s.get("inference_stats", {})
        for k in COUNTERS:
            out[f"{k}_count"] += int(phases.get(k, {}).get("count", 0))
            out[f"{k}_ns"] += int(phases.get(k, {}).get("ns", 0))
    return out


# -- the load: client threads, in this process or in a worker ---------------------------------


def make_call(embedder: Any, kind: str, items: Sequence[Any]) -> Callable[[int], bool]:
    """One embedding of item ``i % len(items)`` through the embedder; True if it succeeded."""
    from core.errors import DomainError

    if kind == "text":

        def call_text(i: int) -> bool:
            try:
                embedder.embed_texts([items[i % len(items)]], timeout=CALL_TIMEOUT_S)
            except DomainError:
                return False
            return True

        return call_text

    def call_image(i: int) -> bool:
        result = embedder.embed_images([items[i % len(items)]], timeout=CALL_TIMEOUT_S)[0]
        return not isinstance(result, DomainError)

    return call_image


def drive(
    call: Callable[[int], bool], clients: int, warm_s: float, seconds: float, between: Callable[[], None]
) -> dict:
    """``clients`` threads calling ``call`` back to back: ``warm_s`` of warm-up, then ``between()``
    (in this thread, while the clients wait), then ``seconds`` of measurement."""
    barrier = threading.Barrier(clients + 1)
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    end = [0.0]
    failures: list[BaseException] = []

    def client(k: int) -> None:
        i = k * 7919
        try:
            warm_end = time.perf_counter() + warm_s
            while time.perf_counter() < warm_end:
                call(i)
                i += 1
            barrier.wait()
            barrier.wait()
            mine = latencies[k]
            while True:
                began = time.perf_counter()
                if began >= end[0]:
                    break
                ok = call(i)
                mine.append(time.perf_counter() - began)
                errors[k] += not ok
                i += 1
        except threading.BrokenBarrierError:
            pass
        except BaseException as e:
            failures.append(e)
            barrier.abort()

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(clients)]
    for t in threads:
        t.start()
    cpu0, began = time.process_time(), time.perf_counter()
    try:
        barrier.wait()
        between()
        cpu0 = time.process_time()
        began = time.perf_counter()
        end[0] = began + seconds
        barrier.wait()
    except threading.BrokenBarrierError:
        pass
    for t in threads:
        t.join()
    if failures:
        raise failures[0]
    elapsed = time.perf_counter() - began
    return {
        "latencies_s": [x for mine in latencies for x in mine],
        "elapsed_s": elapsed,
        "client_cpu_s": time.process_time() - cpu0,
        "errors": sum(errors),
    }


def load_inputs(directory: Path) -> dict[str, list[Any]]:
    images = [p.read_bytes() for p in sorted((directory / "images").glob("*.jpg"))]
    return {"text": json.loads((directory / "texts.json").read_text()), "image": images}


def worker(url: str, inputs: Path) -> None:
    """``--worker``: reads commands (JSON lines) on stdin; for each, warms up, says ``ready``,
    waits for a line (go), measures, and writes the result as one JSON line."""
    from server.embedding import TritonEmbedder, make_cache

    items = load_inputs(inputs)
    embedder = TritonEmbedder(url, cache=make_cache("off"))
    out = sys.stdout

    def say(text: str) -> None:
        out.write(PROTOCOL + text + "\n")
        out.flush()

    def ready() -> None:
        say("ready")
        sys.stdin.readline()

    say("up")
    while True:
        line = sys.stdin.readline()
        if not line or not line.strip():
            break
        command = json.loads(line)
        call = make_call(embedder, command["kind"], items[command["kind"]])
        result = drive(call, command["clients"], command["warm_s"], command["seconds"], ready)
        say(json.dumps(result))
    embedder.close()


class Workers:
    """``count`` client processes (``--worker``) against one Triton."""

    def __init__(self, count: int, url: str, inputs: Path) -> None:
        self.procs = [
            subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--worker", url, "--inputs", str(inputs)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                cwd=ROOT,
            )
            for _ in range(count)
        ]
        for p in self.procs:
            self._expect(p, "up")

    @staticmethod
    def _read(p: subprocess.Popen[str]) -> str:
        assert p.stdout is not None
        while True:
            line = p.stdout.readline()
            if not line:
                raise RuntimeError(f"client worker {p.pid} exited ({p.poll()})")
            if line.startswith(PROTOCOL):
                return line[len(PROTOCOL) :].strip()

    def _expect(self, p: subprocess.Popen[str], word: str) -> None:
        got = self._read(p)
        if got != word:
            raise RuntimeError(f"client worker {p.pid} said {got[:200]!r}, expected {word!r}")

    @staticmethod
    def _send(p: subprocess.Popen[str], line: str) -> None:
        stdin: IO[str] | None = p.stdin
        assert stdin is not None
        stdin.write(line + "\n")
        stdin.flush()

    def run(self, kind: str, clients: int, warm_s: float, seconds: float, between: Callable[[], None]) -> dict:
        shares = [clients // len(self.procs) + (k < clients % len(self.procs)) for k in range(len(self.procs))]
        for p, share in zip(self.procs, shares, strict=True):
            self._send(p, json.dumps({"kind": kind, "clients": share, "warm_s": warm_s, "seconds": seconds}))
        for p in self.procs:
            self._expect(p, "ready")
        between()
        for p in self.procs:
            self._send(p, "go")
        results = [json.loads(self._read(p)) for p in self.procs]
        return {
            "latencies_s": [x for r in results for x in r["latencies_s"]],
            "elapsed_s": max(r["elapsed_s"] for r in results),
            "client_cpu_s": sum(r["client_cpu_s"] for r in results),
            "errors": sum(r["errors"] for r in results),
        }

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None and p.stdin is not None:
                p.stdin.write("\n")
                p.stdin.close()
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


# -- one Triton cell --------------------------------------------------------------------------


@dataclass
class Cell:
    """One measurement: ``setting`` (on/off), ``tower``, ``clients`` threads in ``procs``
    client processes (0: the benchmark process itself), ``round``."""

    setting: str
    tower: str
    clients: int
    procs: int
    round: int
    calls: int = 0
    errors: int = 0
    elapsed_s: float = 0.0
    items_s: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    stalls: int = 0
    inferences: int = 0
    executions: int = 0
    avg_batch: float = 0.0
    client_cpu_s: float = 0.0
    server_cpu_s: float = 0.0
    stubs_cpu_s: float = 0.0
    machine_cpu_s: float = 0.0
    mean_ms: float = 0.0
    triton: dict[str, int] = field(default_factory=dict)
    triton_request_ms: float = 0.0
    triton_queue_ms: float = 0.0
    triton_compute_ms: float = 0.0
    histogram: dict[str, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list, repr=False)

    def key(self) -> tuple[str, str, int, int]:
        return (self.setting, self.tower, self.clients, self.procs)


def summarise(cell: Cell) -> Cell:
    lat = np.asarray(cell.latencies_ms) if cell.latencies_ms else np.zeros(1)
    cell.calls = len(cell.latencies_ms)
    cell.items_s = cell.calls / cell.elapsed_s if cell.elapsed_s > 0 else 0.0
    cell.p50_ms = float(np.percentile(lat, 50))
    cell.p99_ms = float(np.percentile(lat, 99))
    cell.max_ms = float(lat.max())
    cell.mean_ms = float(lat.mean())
    edges = [0.0, *HISTOGRAM_MS, float("inf")]
    counts, _ = np.histogram(np.asarray(cell.latencies_ms), bins=edges)
    cell.histogram = {f"<{hi:g} ms": int(n) for hi, n in zip(edges[1:], counts, strict=True) if n}
    t = cell.triton
    if t.get("success_count"):
        n = t["success_count"]
        cell.triton_request_ms = t["success_ns"] / n / 1e6
        cell.triton_queue_ms = t["queue_ns"] / n / 1e6
        cell.triton_compute_ms = (t["compute_input_ns"] + t["compute_infer_ns"] + t["compute_output_ns"]) / n / 1e6
    cell.stalls = int((lat >= STALL_S * 1e3).sum()) if cell.latencies_ms else 0
    cell.avg_batch = cell.inferences / cell.executions if cell.executions else 0.0
    return cell


def measure(
    cell: Cell,
    stats_client: Any,
    pgid: int,
    run: Callable[[Callable[[], None]], dict],
) -> Cell:
    """Runs ``run(between)`` and fills ``cell`` with its figures and Triton's counters."""
    model = MODEL[cell.tower]
    before: dict[str, Any] = {}

    def between() -> None:
        before["stats"] = triton_counters(stats_client, model)
        before["cpu"] = group_cpu_s(pgid)
        before["machine"] = machine_busy_s()

    result = run(between)
    after_machine = machine_busy_s()
    after_stats = triton_counters(stats_client, model)
    after_cpu = group_cpu_s(pgid)
    cell.latencies_ms = [x * 1e3 for x in result["latencies_s"]]
    cell.elapsed_s = result["elapsed_s"]
    cell.errors = result["errors"]
    cell.client_cpu_s = result["client_cpu_s"]
    cell.triton = {k: v - before["stats"][k] for k, v in after_stats.items()}
    cell.inferences = cell.triton["inferences"]
    cell.executions = cell.triton["executions"]
    cell.machine_cpu_s = after_machine - before["machine"]
    cell.server_cpu_s = after_cpu[0] - before["cpu"][0]
    cell.stubs_cpu_s = after_cpu[1] - before["cpu"][1]
    return summarise(cell)


def pool(cells: list[Cell]) -> Cell:
    """The rounds of one cell together: all calls over all measured time, counters summed."""
    first = cells[0]
    pooled = Cell(first.setting, first.tower, first.clients, first.procs, round=-1)
    for c in cells:
        pooled.latencies_ms.extend(c.latencies_ms)
        pooled.elapsed_s += c.elapsed_s
        pooled.errors += c.errors
        pooled.inferences += c.inferences
        pooled.executions += c.executions
        pooled.client_cpu_s += c.client_cpu_s
        pooled.server_cpu_s += c.server_cpu_s
        pooled.stubs_cpu_s += c.stubs_cpu_s
        pooled.machine_cpu_s += c.machine_cpu_s
        for k, v in c.triton.items():
            pooled.triton[k] = pooled.triton.get(k, 0) + v
    return summarise(pooled)


def triton_setting(
    setting: str,
    repo: Path,
    workdir: Path,
    inputs: Path,
    items: dict[str, list[Any]],
    args: argparse.Namespace,
    round_no: int,
) -> tuple[list[Cell], dict]:
    import tritonclient.grpc as grpcclient

    from clipmodel.triton_process import TritonProcess
    from server.embedding import TritonEmbedder, make_cache

    cells: list[Cell] = []
    info: dict[str, Any] = {"setting": setting, "round": round_no, "load_before": machine.loadavg()}
    with TritonProcess(repo, workdir) as server:
        server.start()
        info["ready_s"] = round(server.start_seconds, 2)
        pgid = server.pid
        embedder = TritonEmbedder(server.grpc_url, cache=make_cache("off"))
        stats_client = grpcclient.InferenceServerClient(server.grpc_url)
        pools = {n: Workers(n, server.grpc_url, inputs) for n in args.procs}
        try:
            for tower in TOWERS:
                call = make_call(embedder, tower, items[tower])
                for clients in args.clients:
                    cell = Cell(setting, tower, clients, 0, round_no)

                    def in_threads(between: Callable[[], None], clients: int = clients, call: Any = call) -> dict:
                        return drive(call, clients, args.warm_s, args.seconds, between)

                    cells.append(measure(cell, stats_client, pgid, in_threads))
                    print(line_of(cells[-1]), file=sys.stderr, flush=True)
                top = max(args.clients)
                for n, workers in pools.items():
                    cell = Cell(setting, tower, top, n, round_no)

                    def in_procs(
                        between: Callable[[], None], tower: str = tower, top: int = top, workers: Workers = workers
                    ) -> dict:
                        return workers.run(tower, top, args.warm_s, args.seconds, between)

                    cells.append(measure(cell, stats_client, pgid, in_procs))
                    print(line_of(cells[-1]), file=sys.stderr, flush=True)
        finally:
            for workers in pools.values():
                workers.close()
            stats_client.close()
            embedder.close()
    info["load_after"] = machine.loadavg()
    return cells, info


def line_of(c: Cell) -> str:
    who = f"{c.clients} threads" if not c.procs else f"{c.clients} threads in {c.procs} processes"
    return (
        f"round {c.round} {SETTING_LABEL[c.setting]:>12} {c.tower:>5} {who:>26}: {c.items_s:8,.0f} items/s "
        f"p50 {c.p50_ms:7.2f} p99 {c.p99_ms:7.2f} max {c.max_ms:7.1f} ms  batch {c.avg_batch:4.1f}  "
        f"cpu client {c.client_cpu_s / max(c.elapsed_s, 1e-9):.2f} triton "
        f"{(c.server_cpu_s + c.stubs_cpu_s) / max(c.elapsed_s, 1e-9):.2f} machine "
        f"{c.machine_cpu_s / max(c.elapsed_s, 1e-9):.2f}  in Triton {c.triton_request_ms:.2f} ms "
        f"(queue {c.triton_queue_ms:.2f})  errors {c.errors}"
    )


# -- in process ---------------------------------------------------------------------------------


def in_process(
    repo: Path, options: export.ServingOptions, items: dict[str, list[Any]], args: argparse.Namespace
) -> list[dict]:
    """items/s and p50 per call of the exported ONNX towers in this process, batch by batch."""
    import onnxruntime as ort

    from clipmodel import preprocess, tokenizer, vocab
    from clipmodel.identity import ModelIdentity

    size = ModelIdentity.read(repo).image_size
    tok = tokenizer.ClipTokenizer(vocab.path())

    def session(name: str) -> Any:
        so = ort.SessionOptions()
        so.intra_op_num_threads = options.intra_op_threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return ort.InferenceSession(str(repo / name / "1" / "model.onnx"), so, providers=["CPUExecutionProvider"])

    sessions = {tower: session(MODEL[tower]) for tower in TOWERS}
    pixels = [preprocess.preprocess(data, size) for data in items["image"]]
    rows: list[dict] = []
    for tower in TOWERS:
        sess = sessions[tower]
        source = items[tower]
        for batch in args.batches:
            picks = [
                [(start + j) % len(source) for j in range(batch)] for start in range(0, len(source) * batch, batch)
            ]
            full: Callable[[int], None]
            bare: Callable[[int], None]
            if tower == "text":
                ids = [tok.encode_batch([source[i] for i in pick]) for pick in picks]

                def full_text(k: int, picks: Any = picks, sess: Any = sess) -> None:
                    sess.run(None, {"input_ids": tok.encode_batch([items["text"][i] for i in picks[k]])})

                def bare_text(k: int, ids: Any = ids, sess: Any = sess) -> None:
                    sess.run(None, {"input_ids": ids[k]})

                full, bare = full_text, bare_text
            else:
                stacked = [np.stack([pixels[i] for i in pick]) for pick in picks]

                def full_image(k: int, picks: Any = picks, sess: Any = sess) -> None:
                    batch_pixels = [preprocess.preprocess(items["image"][i], size) for i in picks[k]]
                    sess.run(None, {"pixel_values": np.stack(batch_pixels)})

                def bare_image(k: int, stacked: Any = stacked, sess: Any = sess) -> None:
                    sess.run(None, {"pixel_values": stacked[k]})

                full, bare = full_image, bare_image

            row: dict[str, Any] = {"tower": tower, "batch": batch}
            for label, fn in (("full", full), ("model", bare)):
                fn(0)
                times: list[float] = []
                began = time.perf_counter()
                k = 0
                while time.perf_counter() - began < args.inproc_seconds or len(times) < 3:
                    t = time.perf_counter()
                    fn(k % len(picks))
                    times.append(time.perf_counter() - t)
                    k += 1
                row[f"{label}_items_s"] = batch * len(times) / sum(times)
                row[f"{label}_p50_ms"] = float(np.median(times)) * 1e3
            rows.append(row)
            print(
                f"in process {tower:>5} batch {batch:>3}: {row['full_items_s']:9,.0f} items/s "
                f"(model alone {row['model_items_s']:9,.0f}), p50 {row['full_p50_ms']:.2f} ms per call",
                file=sys.stderr,
                flush=True,
            )
    return rows


# -- report -------------------------------------------------------------------------------------


def targets(
    pooled: dict[tuple[str, str, int, int], Cell], rounds: list[list[Cell]], top: int, procs: list[int]
) -> list[dict]:
    out: list[dict] = []
    for tower in TOWERS:
        for p in [0, *procs]:
            on, off = pooled.get(("on", tower, top, p)), pooled.get(("off", tower, top, p))
            if on is None or off is None:
                continue
            per_round = []
            for cells in rounds:
                by = {c.key(): c for c in cells}
                a, b = by.get(("on", tower, top, p)), by.get(("off", tower, top, p))
                if a is not None and b is not None and b.items_s > 0:
                    per_round.append(round(a.items_s / b.items_s, 2))
            who = f"{top} clients" + (f" ({p} client processes)" if p else " (threads of one process)")
            ratio = on.items_s / off.items_s if off.items_s else 0.0
            out.append(
                {
                    "target": f"{tower}: items/s on / off at {who}",
                    "goal": ">= 2.0",
                    "measured": round(ratio, 2),
                    "per_round": per_round,
                    "met": ratio >= 2.0,
                    "primary": p == 0,
                }
            )
        on1, off1 = pooled.get(("on", tower, 1, 0)), pooled.get(("off", tower, 1, 0))
        if on1 is not None and off1 is not None:
            ratio = on1.p50_ms / off1.p50_ms if off1.p50_ms else 0.0
            per_round = []
            for cells in rounds:
                by = {c.key(): c for c in cells}
                a, b = by.get(("on", tower, 1, 0)), by.get(("off", tower, 1, 0))
                if a is not None and b is not None and b.p50_ms > 0:
                    per_round.append(round(a.p50_ms / b.p50_ms, 2))
            out.append(
                {
                    "target": f"{tower}: p50 latency on / off at 1 client",
                    "goal": "<= 1.1",
                    "measured": round(ratio, 2),
                    "per_round": per_round,
                    "met": ratio <= 1.1,
                    "primary": True,
                    "p99": f"{on1.p99_ms:.2f} / {off1.p99_ms:.2f} ms",
                }
            )
    return out


def cores(seconds: float, elapsed: float) -> str:
    return f"{seconds / elapsed:.2f}" if elapsed > 0 else "-"


def markdown(result: dict, pooled: list[Cell]) -> str:
    meta = result["meta"]
    lines = [
        "# CLIP embedding through Triton: dynamic batching on and off, and in process (issue #14)",
        "",
        f"Command: `{meta['command']}`",
        "",
        f"- Date: {meta['date']}; commit {meta['commit']}; {meta['cpus']} CPUs ({meta['cpu_model']}); "
        f"total run {meta['total_s']:.0f} s",
        f"- Load average (1/5/15 min) at start {meta['load_start']}, at end {meta['load_end']}; "
        "per Triton setting: "
        + "; ".join(
            f"r{s['round']} {s['setting']} {s['load_before']} -> {s['load_after']}" for s in result["settings"]
        ),
        f"- Model: `{meta['identity']}` ({meta['weights']})",
        f"- Serving options (batching on): {meta['options']}; batching off: the same with no `dynamic_batching`",
        f"- Clients: threads sharing one `TritonEmbedder` (cache off, one item per call); "
        f"{meta['rounds']} round(s) of {meta['seconds']} s per cell after {meta['warm_s']} s of warm-up, pooled; "
        "CPU in cores = CPU seconds / measured seconds (client: the benchmark process, or the sum of the "
        "client processes; Triton: tritonserver + its python-backend stubs)",
        "",
        "## Triton, one item per call",
        "",
        "| setting | tower | clients | items/s | p50 ms | p99 ms | max ms | calls >= 400 ms | avg batch "
        "| mean ms: client / in Triton (queued) | CPU cores: client / Triton / machine | errors |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for c in pooled:
        who = f"{c.clients}" + (f" ({c.procs} processes)" if c.procs else "")
        lines.append(
            f"| {SETTING_LABEL[c.setting]} | {c.tower} | {who} | {c.items_s:,.0f} | {c.p50_ms:.2f} | {c.p99_ms:.2f} "
            f"| {c.max_ms:.1f} | {c.stalls} of {c.calls:,} | {c.avg_batch:.1f} "
            f"| {c.mean_ms:.2f} / {c.triton_request_ms:.2f} ({c.triton_queue_ms:.2f}) "
            f"| {cores(c.client_cpu_s, c.elapsed_s)} / {cores(c.server_cpu_s + c.stubs_cpu_s, c.elapsed_s)} "
            f"/ {cores(c.machine_cpu_s, c.elapsed_s)} | {c.errors} |"
        )
    lines += [
        "",
        "## In process: the same ONNX towers, one onnxruntime session, one thread",
        "",
        '"with preprocessing": what a Triton instance does per item too (tokenise; decode + resize + crop + '
        'normalise the JPEG); "model alone": inputs prepared beforehand.',
        "",
        "| tower | batch | items/s with preprocessing | p50 ms per call | items/s model alone |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for r in result["in_process"]:
        lines.append(
            f"| {r['tower']} | {r['batch']} | {r['full_items_s']:,.0f} | {r['full_p50_ms']:.2f} "
            f"| {r['model_items_s']:,.0f} |"
        )
    for tower in TOWERS:
        rows = [r for r in result["in_process"] if r["tower"] == tower]
        if rows:
            best = max(rows, key=lambda r: r["full_items_s"])
            one = next((r for r in rows if r["batch"] == 1), rows[0])
            lines.append("")
            lines.append(
                f"- {tower}: batch 1 {one['full_items_s']:,.0f} items/s, best batch {best['batch']} "
                f"{best['full_items_s']:,.0f} items/s (model alone: {one['model_items_s']:,.0f} -> "
                f"{max(r['model_items_s'] for r in rows):,.0f})"
            )
    lines += [
        "",
        "## Targets (issue #14)",
        "",
        "| target | goal | measured | per round | met |",
        "| --- | --- | ---: | --- | --- |",
    ]
    for t in result["targets"]:
        extra = f" (p99 on / off {t['p99']})" if "p99" in t else ""
        note = "" if t["primary"] else " (diagnostic)"
        lines.append(
            f"| {t['target']}{note} | {t['goal']} | {t['measured']:.2f}{extra} | "
            f"{', '.join(str(x) for x in t['per_round'])} | {'yes' if t['met'] else 'no'} |"
        )
    lines += ["", "## Interpretation", "", "(written by hand after a run)", ""]
    return "\n".join(lines)


# -- main ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--weights", type=Path, help="local Hugging Face CLIP directory (default: the random CLIP)")
    parser.add_argument("--quick", action="store_true", help="1 round of short cells (< 60 s)")
    parser.add_argument("--rounds", type=int, help="rounds of both settings, order alternating (default 2; quick 1)")
    parser.add_argument("--seconds", type=float, help="measured seconds per cell (default 3; quick 0.8)")
    parser.add_argument("--warm-s", type=float, help="warm-up seconds per cell (default 0.5; quick 0.25)")
    parser.add_argument("--clients", default="1,8,32", help="concurrent clients (threads), comma-separated")
    parser.add_argument(
        "--procs",
        help="client process counts for the largest concurrency, comma-separated (default 2,4; quick 2; 0: none)",
    )
    parser.add_argument("--batches", default="1,8,32,64", help="in-process batch sizes")
    parser.add_argument("--inproc-seconds", type=float, help="seconds per in-process figure (default 1; quick 0.3)")
    parser.add_argument("--out", type=Path, help="output directory (default bench/results; quick bench/data/...)")
    parser.add_argument("--worker", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--inputs", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, args.inputs)
        return
    quick = args.quick
    args.rounds = args.rounds or (1 if quick else 2)
    args.seconds = args.seconds or (0.8 if quick else 3.0)
    args.warm_s = args.warm_s if args.warm_s is not None else (0.25 if quick else 0.5)
    args.inproc_seconds = args.inproc_seconds or (0.3 if quick else 1.0)
    args.clients = [int(x) for x in args.clients.split(",")]
    args.batches = [int(x) for x in args.batches.split(",")]
    procs = args.procs if args.procs is not None else ("2" if quick else "2,4")
    args.procs = [int(x) for x in procs.split(",") if x.strip() and int(x) > 0]
    out = args.out or (ROOT / "bench" / "data" / "clip-embedding-quick" if quick else ROOT / "bench" / "results")

    from clipmodel import random
    from testkit.clipdata import pictures

    began = time.monotonic()
    load_start = machine.loadavg()
    print(f"load average {load_start}", file=sys.stderr, flush=True)
    if load_start[0] > 1.5:
        print("warning: 1-minute load average above 1.5: other work shares the CPU", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="clip-embedding-") as tmp_name:
        tmp = Path(tmp_name)
        weights = args.weights or random.save(tmp / "weights", seed=0)
        options = export.ServingOptions()
        repos = {"on": tmp / "repo-on", "off": tmp / "repo-off"}
        identity = export.export(weights, repos["on"], options)
        shutil.copytree(repos["on"], repos["off"])
        export.write_configs(repos["off"], replace(options, queue_delay_us=None))
        inputs = tmp / "inputs"
        (inputs / "images").mkdir(parents=True)
        (inputs / "texts.json").write_text(json.dumps(texts()))
        for i, data in enumerate(pictures(32, seed=7)):
            (inputs / "images" / f"{i:03d}.jpg").write_bytes(data)
        items = load_inputs(inputs)
        print(f"model {identity.id}; exported in {time.monotonic() - began:.1f} s", file=sys.stderr, flush=True)

        inproc = in_process(repos["on"], options, items, args)

        rounds: list[list[Cell]] = []
        settings: list[dict] = []
        for r in range(args.rounds):
            cells: list[Cell] = []
            for setting in ("on", "off") if r % 2 == 0 else ("off", "on"):
                got, info = triton_setting(
                    setting, repos[setting], tmp / f"triton-{setting}-{r}", inputs, items, args, r
                )
                cells += got
                settings.append(info)
            rounds.append(cells)

    groups: dict[tuple[str, str, int, int], list[Cell]] = {}
    for cells in rounds:
        for c in cells:
            groups.setdefault(c.key(), []).append(c)
    order = {"on": 0, "off": 1}
    pooled_list = sorted(
        (pool(cs) for cs in groups.values()),
        key=lambda c: (TOWERS.index(c.tower), order[c.setting], c.clients, c.procs),
    )
    pooled = {c.key(): c for c in pooled_list}
    command = " ".join([".venv/bin/python", "bench/clip_embedding.py", *(argv if argv is not None else sys.argv[1:])])

    def plain(c: Cell) -> dict:
        d = asdict(c)
        d.pop("latencies_ms")
        return d

    result: dict[str, Any] = {
        "meta": {
            "command": command,
            "date": time.strftime("%Y-%m-%d %H:%M %Z"),
            "commit": machine.git_commit(ROOT),
            "cpus": os.cpu_count(),
            "cpu_model": machine.cpu_model(),
            "load_start": load_start,
            "load_end": machine.loadavg(),
            "identity": identity.id,
            "weights": str(args.weights) if args.weights else "random CLIP, clipmodel.random seed 0",
            "options": asdict(options),
            "rounds": args.rounds,
            "seconds": args.seconds,
            "warm_s": args.warm_s,
            "clients": args.clients,
            "procs": args.procs,
            "versions": {
                d: machine.pkg_version(d) for d in ("nvidia-pytriton", "tritonclient", "onnxruntime", "grpcio")
            },
            "total_s": time.monotonic() - began,
        },
        "settings": settings,
        "in_process": inproc,
        "cells": [plain(c) for cells in rounds for c in cells],
        "pooled": [plain(c) for c in pooled_list],
        "targets": targets(pooled, rounds, max(args.clients), args.procs),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "clip-embedding.json").write_text(json.dumps(result, indent=1) + "\n")
    report = markdown(result, pooled_list)
    (out / "clip-embedding.md").write_text(report)
    print(report)
    print(f"wrote {out / 'clip-embedding.md'} and .json in {result['meta']['total_s']:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
