"""CLIP embedding: which runtime inside Triton's python backend, and how Triton batches.

Part ``runtime`` (in process, no Triton): items/s of the text and image towers under torch and
under onnxruntime (1 thread and the default pool), at batch 1, 8 and 32, on an idle CPU and with
one core kept busy by another process (what the towers meet inside Triton, next to the server,
the decoding and each other).

Part ``triton``: a real tritonserver (clipmodel.triton_process) serving the exported towers;
items/s and p50/p99 latency at 1, 8 and 32 concurrent clients (one item per request, each
client a thread with its own gRPC client) for dynamic batching off and several queue delays,
and for 1 and 2 model instances; the average batch is inference_count / execution_count from
Triton's statistics.

    .venv/bin/python bench/clip_runtime.py [--weights HF_DIR] [--parts runtime,triton] [--seconds 2]

Without ``--weights`` the small random CLIP (clipmodel.random) is used. Prints a markdown report
(bench/results/clip-runtime.md records one run).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from clipmodel import export, random, tokenizer, vocab
from clipmodel.triton_process import TritonProcess
from testkit.clipdata import pictures

CAPTIONS = [
    "a photo of a cat",
    "a red bicycle leaning against a brick wall",
    "two dogs playing in the snow",
    "an astronaut on a horse",
    "a bowl of coffee on a wooden table",
    "a rocket on the launch pad at night",
    "a motorcycle parked by the sea",
    "a city street in the rain",
]


@contextlib.contextmanager
def busy_core() -> Iterator[None]:
    """Another process spinning on one core for the duration."""
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.2)
        yield
    finally:
        burner.kill()
        burner.wait()


def rate(fn: Callable[[], int], seconds: float) -> float:
    """Items per second of ``fn`` (which returns the items it did), after one warm-up call."""
    fn()
    done, began = 0, time.perf_counter()
    while time.perf_counter() - began < seconds:
        done += fn()
    return done / (time.perf_counter() - began)


def runtime_part(weights: Path, repo: Path, seconds: float) -> list[str]:
    import onnxruntime as ort
    import torch

    model = export.load(weights)
    text_tower, image_tower = export.towers(model)
    tok = tokenizer.ClipTokenizer(vocab.path())
    rng = np.random.default_rng(0)
    lines = [
        "| tower | batch | CPU | torch 1 thread | torch 2 threads | onnxruntime 1 thread | onnxruntime 2 threads |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    sessions = {}
    for threads in (1, 2):
        for name in ("clip_text", "clip_image"):
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            sessions[name, threads] = ort.InferenceSession(str(repo / name / "1" / "model.onnx"), options)
    for name, tower, key in (("clip_text", text_tower, "input_ids"), ("clip_image", image_tower, "pixel_values")):
        for batch in (1, 8, 32):
            if name == "clip_text":
                inputs = tok.encode_batch([CAPTIONS[i % len(CAPTIONS)] for i in range(batch)])
            else:
                inputs = rng.standard_normal((batch, 3, 224, 224)).astype(np.float32)
            tensor = torch.from_numpy(inputs)

            def run_torch(threads: int, tower: Any = tower, tensor: Any = tensor, batch: int = batch) -> int:
                torch.set_num_threads(threads)
                with torch.inference_mode():
                    tower(tensor)
                return batch

            def run_ort(
                threads: int, name: str = name, key: str = key, inputs: Any = inputs, batch: int = batch
            ) -> int:
                sessions[name, threads].run(None, {key: inputs})
                return batch

            for cpu in ("idle", "1 core busy"):
                with busy_core() if cpu != "idle" else contextlib.nullcontext():
                    cells = [
                        rate(lambda: run_torch(1), seconds),
                        rate(lambda: run_torch(2), seconds),
                        rate(lambda: run_ort(1), seconds),
                        rate(lambda: run_ort(2), seconds),
                    ]
                lines.append(f"| {name} | {batch} | {cpu} | " + " | ".join(f"{c:,.0f}" for c in cells) + " |")
    return lines


def load(url: str, model: str, items: list[bytes], clients: int, seconds: float) -> tuple[float, float, float, float]:
    """items/s, p50 ms, p99 ms and average batch of ``clients`` threads sending one item each."""
    import tritonclient.grpc as grpcclient

    name = "TEXT" if model == "clip_text" else "IMAGE"
    stats_client = grpcclient.InferenceServerClient(url)

    def counts() -> tuple[int, int]:
        s = stats_client.get_inference_statistics(model, as_json=True)["model_stats"][0]
        return int(s.get("inference_count", 0)), int(s.get("execution_count", 0))

    latencies: list[float] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client(index: int) -> None:
        c = grpcclient.InferenceServerClient(url)
        mine: list[float] = []
        i = index
        while not stop.is_set():
            tensor = grpcclient.InferInput(name, [1, 1], "BYTES")
            tensor.set_data_from_numpy(np.array([[items[i % len(items)]]], dtype=object))
            began = time.perf_counter()
            c.infer(model, [tensor])
            mine.append(time.perf_counter() - began)
            i += clients
        with lock:
            latencies.extend(mine)

    warm = threading.Thread(target=client, args=(0,))
    warm.start()
    time.sleep(0.3)
    stop.set()
    warm.join()
    latencies.clear()
    stop.clear()
    inf0, exe0 = counts()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    began = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began
    inf1, exe1 = counts()
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return len(latencies) / elapsed, statistics.median(ordered) * 1e3, p99 * 1e3, (inf1 - inf0) / max(1, exe1 - exe0)


def triton_part(repo: Path, seconds: float, delays: list[int] | None = None) -> list[str]:
    texts = [c.encode() for c in CAPTIONS]
    images = pictures(32, seed=7)
    base = export.ServingOptions()
    settings: list[tuple[str, export.ServingOptions]] = [
        (
            "no dynamic batching, 1 text / 1 image instance",
            replace(base, queue_delay_us=None, text_instances=1, image_instances=1),
        ),
        ("delay 0 us, 1 / 1", replace(base, queue_delay_us=0, text_instances=1, image_instances=1)),
        ("delay 500 us, 1 / 1", replace(base, queue_delay_us=500, text_instances=1, image_instances=1)),
        ("delay 2000 us, 1 / 1", replace(base, queue_delay_us=2000, text_instances=1, image_instances=1)),
        ("delay 5000 us, 1 / 1", replace(base, queue_delay_us=5000, text_instances=1, image_instances=1)),
        ("delay 2000 us, 1 / 2", replace(base, queue_delay_us=2000, text_instances=1, image_instances=2)),
        ("delay 2000 us, 2 / 2", replace(base, queue_delay_us=2000, text_instances=2, image_instances=2)),
        ("no dynamic batching, 1 / 2", replace(base, queue_delay_us=None, text_instances=1, image_instances=2)),
    ]
    if delays is not None:  # only a sweep of the queue delay, at the default instance counts
        settings = [("no dynamic batching", replace(base, queue_delay_us=None))]
        settings += [(f"delay {d} us", replace(base, queue_delay_us=d)) for d in delays]
    lines = [
        "| setting | tower | clients | items/s | p50 ms | p99 ms | avg batch |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, options in settings:
        export.write_configs(repo, options)
        with TritonProcess(repo) as server:
            server.start()
            for model, items in (("clip_text", texts), ("clip_image", images)):
                for clients in (1, 8, 32):
                    ips, p50, p99, batch = load(server.grpc_url, model, items, clients, seconds)
                    lines.append(
                        f"| {label} | {model} | {clients} | {ips:,.0f} | {p50:.2f} | {p99:.2f} | {batch:.1f} |"
                    )
                    print(lines[-1], file=sys.stderr, flush=True)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, help="Hugging Face CLIP directory (default: the random CLIP)")
    parser.add_argument("--parts", default="runtime,triton")
    parser.add_argument("--seconds", type=float, default=2.0, help="measuring time per cell")
    parser.add_argument("--delays", help="comma-separated queue delays (us): sweep only these (triton part)")
    args = parser.parse_args()
    parts = args.parts.split(",")
    with tempfile.TemporaryDirectory(prefix="clip-bench-") as tmp:
        weights = args.weights or random.save(Path(tmp) / "weights")
        repo = Path(tmp) / "repo"
        identity = export.export(weights, repo)
        print(f"model {identity.id}; {os.cpu_count()} CPUs; {time.strftime('%Y-%m-%d')}\n")
        if "runtime" in parts:
            print("\n".join(runtime_part(weights, repo, args.seconds)) + "\n", flush=True)
        if "triton" in parts:
            delays = [int(d) for d in args.delays.split(",")] if args.delays else None
            print("\n".join(triton_part(repo, args.seconds, delays)), flush=True)


if __name__ == "__main__":
    main()
