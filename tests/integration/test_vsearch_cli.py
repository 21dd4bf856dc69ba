"""The ``vsearch`` console script end to end, with real processes: ``vsearch up`` (shards, the
server and a real tritonserver serving the random CLIP), then ``index`` of a folder of generated
pictures with one corrupt file, resumed runs, ``search`` by image and by text, ``status``, and
the one-line error when no server answers. Every command runs as the installed console script
from a directory outside the checkout."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from testkit.clipdata import pictures
from testkit.procutil import REPO, read_tail, tree_env

VSEARCH = Path(sys.executable).parent / "vsearch"
IMAGES = 40


@dataclass
class Up:
    address: str
    env: dict[str, str]
    cwd: Path
    photos: Path
    state: dict[str, object]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def vsearch(up: Up, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(VSEARCH), *args], cwd=up.cwd, env=up.env, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    assert VSEARCH.is_file(), f"{VSEARCH} is missing: bash scripts/setup.sh installs the console script"
    root = tmp_path_factory.mktemp("vsearch")
    photos = root / "photos"
    photos.mkdir()
    for i, data in enumerate(pictures(IMAGES, seed=11, size=(320, 240))):
        (photos / f"p{i:03d}.jpg").write_bytes(data)
    (photos / "broken.jpg").write_bytes(pictures(1, seed=12)[0][:300])  # a truncated JPEG
    address = f"127.0.0.1:{free_port()}"
    env = dict(tree_env(REPO), VSEARCH_HOME=str(root / "home"), VSEARCH_ADDRESS=address)
    log_path = root / "up.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(VSEARCH), "up", "--shards", "2"],
            cwd=root,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    state_file = root / "home" / "up.json"
    try:
        deadline = time.monotonic() + 240
        while not state_file.exists():
            assert proc.poll() is None, f"vsearch up exited with {proc.returncode}:\n{read_tail(log_path, 6000)}"
            assert time.monotonic() < deadline, f"vsearch up not serving in time:\n{read_tail(log_path, 6000)}"
            time.sleep(0.1)
        state = json.loads(state_file.read_text())
        assert state["address"] == address
        output = read_tail(log_path, 20000)
        assert f"serving on {address}" in output and "NO MEANING" in output  # the random model is announced
        yield Up(address, env, root, photos, state)
    finally:
        proc.send_signal(signal.SIGINT)  # what Ctrl-C does
        try:
            assert proc.wait(timeout=60) == 0, read_tail(log_path, 6000)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    assert not state_file.exists()  # removed on a clean stop


def test_index_is_resumable_and_a_corrupt_file_fails_alone(up: Up) -> None:
    first = vsearch(up, "index", str(up.photos / "p00*.jpg"), "--progress", "off")
    assert first.returncode == 0, first.stderr
    assert "done: 10 new, 0 already indexed, 0 failed of 10 files" in first.stdout

    started = time.monotonic()
    rest = vsearch(up, "index", str(up.photos), "--batch", "8", "--progress", "on")
    assert rest.returncode == 1, rest.stdout + rest.stderr  # one file failed
    assert f"done: {IMAGES - 10} new, 10 already indexed, 1 failed of {IMAGES + 1} files" in rest.stdout
    failed = [line for line in rest.stderr.splitlines() if line.startswith("failed: ")]
    assert len(failed) == 1 and "broken.jpg: INVALID_ARGUMENT" in failed[0], rest.stderr
    assert "img/s" in rest.stderr  # the progress bar with its rate
    assert time.monotonic() - started < 30

    again = vsearch(up, "index", str(up.photos), "--progress", "off")
    assert again.returncode == 1
    assert f"done: 0 new, {IMAGES} already indexed, 1 failed of {IMAGES + 1} files" in again.stdout


def test_search_by_image_finds_the_image_first_and_by_text_prints_a_table(up: Up) -> None:
    vsearch(up, "index", str(up.photos), "--progress", "off")
    target = up.photos / "p017.jpg"
    reply = vsearch(up, "search", "--image", str(target), "-k", "5", "--json")
    assert reply.returncode == 0, reply.stderr
    rows = json.loads(reply.stdout)["rows"]
    assert len(rows) == 5 and rows[0]["uri"] == target.resolve().as_uri() and rows[0]["distance"] < 1e-4

    table = vsearch(up, "search", "--image", str(target), "-k", "3")
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["rank", "score", "distance", "id", "uri"], table.stdout
    assert lines[2].split()[0] == "1" and lines[2].endswith(target.resolve().as_uri())

    text = vsearch(up, "search", "a red bicycle leaning against a brick wall", "-k", "4")
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0].split() == ["rank", "score", "distance", "id", "uri"] and len(lines) == 2 + 4
    assert all(line.split()[-1].startswith("file://") for line in lines[2:])


def test_status_shows_counts_model_and_shards(up: Up) -> None:
    vsearch(up, "index", str(up.photos), "--progress", "off")
    shown = vsearch(up, "status")
    assert shown.returncode == 0, shown.stderr
    assert "2/2 shards healthy" in shown.stdout and str(up.state["embedding_model"]) in shown.stdout
    status = json.loads(vsearch(up, "status", "--json").stdout)
    (images,) = [c for c in status["collections"] if c["name"] == "images"]
    assert images["count"] == IMAGES and images["dimension"] == up.state["dimension"]
    assert images["embedding_model"] == up.state["embedding_model"]
    assert sum(s["items"] for s in status["shards"]) == IMAGES and all(s["healthy"] for s in status["shards"])


def test_errors_are_one_line_with_a_non_zero_exit(up: Up) -> None:
    nobody = f"127.0.0.1:{free_port()}"
    for args in (("status",), ("search", "x"), ("index", str(up.photos))):
        reply = vsearch(up, "--address", nobody, *args)
        assert reply.returncode == 2 and reply.stdout == ""
        assert reply.stderr.strip().splitlines() == [
            f"vsearch: cannot reach a vectorsearch server at {nobody} "
            "(start one with `vsearch up`, or set --address / VSEARCH_ADDRESS; if it serves TLS, pass --tls-ca)"
        ]
    missing = vsearch(up, "search", "x", "--collection", "nope")
    assert missing.returncode == 2 and missing.stderr.startswith("vsearch: search 'nope': NOT_FOUND")
    nothing = vsearch(up, "index", str(up.cwd / "no-such-dir"))
    assert nothing.returncode == 2 and "no such file" in nothing.stderr


def test_search_by_tag_with_explain(up: Up) -> None:
    tagged = vsearch(
        up, "index", str(up.photos / "p01*.jpg"), "--collection", "tagged", "--tag", "red", "--progress", "off"
    )
    assert tagged.returncode == 0, tagged.stderr
    plain = vsearch(up, "index", str(up.photos / "p02*.jpg"), "--collection", "tagged", "--progress", "off")
    assert plain.returncode == 0, plain.stderr
    target = up.photos / "p021.jpg"  # untagged: the filter must keep it out
    reply = vsearch(
        up, "search", "--image", str(target), "--collection", "tagged", "--tag", "red", "--explain", "--json"
    )
    assert reply.returncode == 0, reply.stderr
    answer = json.loads(reply.stdout)
    assert len(answer["rows"]) == 10 and all("/p01" in row["uri"] for row in answer["rows"])
    assert sum(p["matched"] for p in answer["explain"]) == 10 and {p["plan"] for p in answer["explain"]} == {"exact"}
    shown = vsearch(
        up, "search", "--image", str(target), "--collection", "tagged", "--tag", "red", "--tag", "blue", "--explain"
    )
    assert shown.returncode == 0, shown.stderr
    assert "no results" in shown.stdout and "empty" in shown.stdout  # no image has both tags: nothing compared
