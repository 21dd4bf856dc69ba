"""Where CLIP's BPE vocabulary comes from: ``bpe_simple_vocab_16e6.txt.gz`` (OpenAI CLIP, MIT
licence), read out of a pinned ``open_clip_torch`` wheel from PyPI and checked by sha256.

The file is not committed (1.3 MB of binary); ``python -m clipmodel.vocab`` (run by
``scripts/setup.sh``) downloads the wheel with ``pip download --no-deps`` (the package is never
installed or imported) and puts the file in the cache directory; ``path()`` returns it or raises
with that command in the message. The export copies it into the model repository, so Triton never
needs the cache.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

FILENAME = "bpe_simple_vocab_16e6.txt.gz"
SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
WHEEL_REQUIREMENT = "open_clip_torch==3.3.0"
WHEEL_MEMBER = "open_clip/" + FILENAME


class VocabMissingError(RuntimeError):
    """The vocabulary is not in the cache (or is not the pinned file)."""


def cache_dir() -> Path:
    """``$VS_CACHE_DIR``, else ``$XDG_CACHE_HOME/vectorsearch``, else ``~/.cache/vectorsearch``."""
    if os.environ.get("VS_CACHE_DIR"):
        return Path(os.environ["VS_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "vectorsearch"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def path() -> Path:
    """The cached vocabulary file, verified. Raises VocabMissingError with the fix."""
    target = cache_dir() / "clip" / FILENAME
    if not target.is_file():
        raise VocabMissingError(f"CLIP BPE vocabulary not found at {target}: run `python -m clipmodel.vocab`")
    if sha256_file(target) != SHA256:
        raise VocabMissingError(f"{target} is not the pinned CLIP vocabulary: run `python -m clipmodel.vocab`")
    return target


def fetch() -> Path:
    """Ensures the cached vocabulary is the pinned file; downloads it if missing or different."""
    target = cache_dir() / "clip" / FILENAME
    if target.is_file() and sha256_file(target) == SHA256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", tmp, WHEEL_REQUIREMENT],
            check=True,
        )
        wheels = list(Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            raise VocabMissingError(f"pip download {WHEEL_REQUIREMENT} gave {wheels}, expected one wheel")
        data = zipfile.ZipFile(wheels[0]).read(WHEEL_MEMBER)
    if hashlib.sha256(data).hexdigest() != SHA256:
        raise VocabMissingError(f"{WHEEL_MEMBER} in {WHEEL_REQUIREMENT} does not have sha256 {SHA256}")
    partial = target.with_suffix(".partial")
    partial.write_bytes(data)
    partial.replace(target)
    return target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.parse_args(argv)
    print(fetch())


if __name__ == "__main__":
    main()
