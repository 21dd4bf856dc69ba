"""Exported Triton model repositories, cached: ``prepare_model_repo("random" | HF_DIR)`` exports
once into the user cache (``clipmodel.vocab.cache_dir()/models``), keyed by the weights files and
the export code, and returns the repository; concurrent callers export once (a file lock).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parent.parent
RANDOM = "random"
# What an exported repository is made of besides the weights: a change here re-exports.
_EXPORT_SOURCES = ("clipmodel", "triton_models")


def _files(root: Path, suffixes: tuple[str, ...] = ()) -> list[Path]:
    """Files under ``root`` (sorted; only ``suffixes`` when given; no __pycache__)."""
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and (not suffixes or p.suffix in suffixes)
    )


def model_repo_key(clip: str) -> str:
    """The cache key of the repository exported from ``clip`` ("random" or a weights directory):
    changes when a weights file changes (name, size or mtime: weights are too big to hash at
    every start) or the export code does (the content of clipmodel/ and triton_models/)."""
    digest = hashlib.sha256()
    if clip == RANDOM:
        digest.update(b"random-seed-0\n")
    else:
        weights = Path(clip).resolve()
        digest.update(f"{weights}\n".encode())
        for path in _files(weights):
            stat = path.stat()
            digest.update(f"{path.relative_to(weights)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    for source in _EXPORT_SOURCES:
        for path in _files(REPO / source, (".py", ".in", ".txt")):
            digest.update(f"{path.relative_to(REPO)}\n".encode() + hashlib.sha256(path.read_bytes()).digest())
    name = "clip-random" if clip == RANDOM else f"clip-{Path(clip).resolve().name}"
    return f"{name}-{digest.hexdigest()[:16]}"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (created), so concurrent clusters export once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def prepare_model_repo(clip: str, cache: Path | None = None) -> Path:
    """The Triton model repository for ``clip`` ("random": the seeded small random CLIP; else a
    local Hugging Face-format CLIP directory), exported into ``cache`` (default
    ``clipmodel.vocab.cache_dir()/models``) unless a complete export is there already.

    Complete means ``identity.json`` at the top, which ``clipmodel.export.export`` writes last.
    Raises FileNotFoundError for a weights directory that does not exist; export errors pass.
    """
    from clipmodel import vocab
    from clipmodel.identity import FILENAME

    if clip != RANDOM and not (Path(clip) / "config.json").is_file():
        raise FileNotFoundError(
            f"--clip {clip}: not a Hugging Face CLIP directory (no config.json); "
            f"use 'random' or a local directory such as a copy of openai/clip-vit-base-patch32"
        )
    base = cache if cache is not None else vocab.cache_dir() / "models"
    repo = base / model_repo_key(clip)
    if (repo / FILENAME).is_file():
        return repo
    with _locked(base / f".{repo.name}.lock"):
        if (repo / FILENAME).is_file():
            return repo
        from clipmodel import export, random

        if repo.exists():
            shutil.rmtree(repo)  # an interrupted export
        staging = base / f".{repo.name}.work-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        try:
            started = time.monotonic()
            if clip == RANDOM:
                log.info("building the random CLIP and exporting it to %s", repo)
                weights = random.save(staging / "weights", seed=0)
            else:
                log.info("exporting the CLIP weights in %s to %s", clip, repo)
                weights = Path(clip)
            export.export(weights, repo)
            log.info("model repository ready in %.1f s", time.monotonic() - started)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return repo
