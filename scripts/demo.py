"""The main job: the product on a fresh machine, end to end.

Run through ``bash scripts/demo.sh``. Starts ``python -m server.cluster --clip random`` (3 shard
processes, the public gRPC server with metadata in SQLite, and NVIDIA Triton serving CLIP) in a
temporary directory, removed at the end (or ``--data-dir``, kept); indexes the real sample photographs that ship inside
the scikit-image wheel plus generated pictures (``testkit.clipdata``) with ``vsearch index``;
answers a text query and an image query with ``vsearch search`` (the image must find itself
first); shows that indexing again skips everything; kills a shard with SIGKILL to show a partial
answer that names it; restarts the cluster on the same data and shows every item is back; stops
everything.

The model is the small random CLIP unless ``--weights HF_DIR`` (or ``$VS_CLIP_WEIGHTS``) names a
local Hugging Face-format CLIP such as openai/clip-vit-base-patch32: with random weights the
results carry no meaning (an image still finds itself, since it is embedded the same way twice).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vectorsearch_client import Client

from clipmodel.identity import ModelIdentity
from core.items import content_id
from server.cluster import MODEL_FILE
from testkit.clipdata import pictures
from testkit.clusterproc import ClusterProcess
from testkit.procutil import REPO, tree_env

# Photographs with an obvious subject, in skimage/data of the scikit-image wheel.
SAMPLES = (
    "astronaut.png",
    "chelsea.png",  # a cat
    "coffee.png",
    "rocket.jpg",
    "motorcycle_left.png",
    "camera.png",  # a cameraman
    "coins.png",
    "moon.png",
    "horse.png",
    "hubble_deep_field.jpg",
    "brick.png",
    "grass.png",
    "gravel.png",
    "retina.jpg",
    "page.png",
    "clock_motion.png",
    "ihc.png",
)
QUERY_IMAGE = "sample-chelsea.png"
QUERY_TEXT = "a cat with striped fur"
RANDOM_NOTE = (
    "NOTE: this demo runs a RANDOMLY INITIALISED CLIP, so the text results below carry NO MEANING "
    "(an image still finds itself first). For real results: python -m clipmodel.export is run for you by "
    "`bash scripts/demo.sh --weights /path/to/clip-vit-base-patch32` (a local Hugging Face-format directory)."
)


def write_photos(out: Path, generated: int) -> list[Path]:
    """The sample photographs (as shipped) and ``generated`` pictures, written into ``out``."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("scikit-image is not installed: bash scripts/demo.sh installs it (pip extra 'demo')")
    data = Path(next(iter(spec.submodule_search_locations))) / "data"
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in SAMPLES:
        target = out / f"sample-{name}"
        target.write_bytes((data / name).read_bytes())
        paths.append(target)
    for start in range(0, generated, 500):
        count = min(500, generated - start)
        for i, image in enumerate(pictures(count, seed=1000 + start, size=(320, 240))):
            target = out / f"generated-{start + i:05d}.jpg"
            target.write_bytes(image)
            paths.append(target)
    return paths


def vsearch(address: str, *args: str, capture: bool = False) -> subprocess.CompletedProcess[str]:
    """Runs the ``vsearch`` command line (``python -m cli``) against ``address``."""
    return subprocess.run(
        [sys.executable, "-m", "cli", "--address", address, *args],
        cwd=REPO,
        env=tree_env(REPO),
        text=True,
        capture_output=capture,
        check=False,
    )


def step(title: str) -> None:
    print(f"\n=== {title}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--images", type=int, default=3000, help="pictures in all (samples + generated)")
    parser.add_argument("--weights", type=Path, default=os.environ.get("VS_CLIP_WEIGHTS") or None)
    args = parser.parse_args()
    began = time.monotonic()
    root = args.data_dir or Path(tempfile.mkdtemp(prefix="vs-demo-"))
    photos = root / "photos"
    written: list[Path] = []
    writer = threading.Thread(
        target=lambda: written.extend(write_photos(photos, max(0, args.images - len(SAMPLES)))), daemon=True
    )
    writer.start()  # while the cluster and Triton start
    model = str(args.weights.resolve()) if args.weights else "random"
    if model == "random":
        print(RANDOM_NOTE, flush=True)
    step(f"starting the cluster: 3 shards, the server, Triton with CLIP ({model})")
    cluster = ClusterProcess(root / "cluster", "--clip", model, shards=3)
    cluster.start(timeout=900)
    try:
        identity = ModelIdentity.from_json((cluster.data_dir / MODEL_FILE).read_text())
        print(f"cluster up in {time.monotonic() - began:.1f} s: public API on {cluster.address}, data in {root}")
        print(f"model {identity.id} ({identity.dim}-d)")
        writer.join()
        print(f"{len(written)} pictures in {photos}: {len(SAMPLES)} sample photographs + generated ones")

        step(f"vsearch index {photos}")
        started = time.monotonic()
        indexed = vsearch(cluster.address, "index", str(photos), "--dim", str(identity.dim))
        index_seconds = time.monotonic() - started
        step("vsearch index again: everything is indexed already (resumable)")
        again = vsearch(cluster.address, "index", str(photos), "--progress", "off", capture=True)
        print(again.stdout.strip())

        step(f"vsearch search {QUERY_TEXT!r}")
        if model == "random":
            print("(random weights: this ranking carries no meaning)")
        text = vsearch(cluster.address, "search", QUERY_TEXT, "-k", "5")
        query = photos / QUERY_IMAGE
        step(f"vsearch search --image {query}")
        image = vsearch(cluster.address, "search", "--image", str(query), "-k", "5")
        found = vsearch(cluster.address, "search", "--image", str(query), "-k", "1", "--json", capture=True)
        first = json.loads(found.stdout)["rows"][0]["uri"] if found.returncode == 0 else ""
        finds_itself = first == query.resolve().as_uri()
        print(f"the query image finds itself first: {finds_itself}")
        step("vsearch status")
        vsearch(cluster.address, "status")

        step("kill -9 one shard, search, restart the cluster on the same data")
        query_bytes = query.read_bytes()
        with Client(cluster.address, timeout=30) as client:
            os.kill(cluster.shard_pid(1), signal.SIGKILL)
            time.sleep(0.2)
            partial = client.search("images", image=query_bytes, k=3)
        print(f"killed shard-1 with SIGKILL: partial={partial.partial}, failed shards {partial.failed_shards}")
        cluster.stop()
        cluster.start(timeout=900)
        with Client(cluster.address, timeout=30) as client:
            count = client.describe_collection("images").count
            back = client.search("images", image=query_bytes, k=3)[0]
        expected = content_id(query_bytes)
        print(f"restarted the cluster: {count} items; the query image finds itself first: {back.id == expected}")

        ok = (
            indexed.returncode == 0
            and "0 new" in again.stdout
            and text.returncode == 0
            and image.returncode == 0
            and finds_itself
            and partial.partial
            and count == len(written)
            and back.id == expected
        )
        step(f"indexing took {index_seconds:.1f} s; the whole demo {time.monotonic() - began:.1f} s")
        if model == "random":
            print(RANDOM_NOTE)
        print("demo OK" if ok else "demo FAILED")
        return 0 if ok else 1
    finally:
        cluster.stop()
        if args.data_dir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
