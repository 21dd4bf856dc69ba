"""Fingerprint of the .proto sources, shared by the stub builder and the import-time check."""

from __future__ import annotations

import hashlib
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO_ROOT / "proto"
OUT_PACKAGE = REPO_ROOT / "vectorsearch"
STAMP = OUT_PACKAGE / "STAMP"
BUILD_HINT = "run `python -m vsproto.build` from the repository root (or `bash scripts/setup.sh`)"


class StaleStubsError(ImportError):
    """The generated stubs are missing or were built from other .proto files."""


def proto_files() -> list[Path]:
    return sorted(PROTO_ROOT.rglob("*.proto"))


def fingerprint() -> str:
    digest = hashlib.sha256()
    for path in proto_files():
        digest.update(str(path.relative_to(PROTO_ROOT)).encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


def ensure_fresh() -> None:
    """In a checkout, the stubs must exist and match ``proto/``; in an installed package (no
    ``proto/`` beside it) they were built with it, so only their presence is checked."""
    if not STAMP.exists():
        raise StaleStubsError(f"gRPC stubs are missing: {BUILD_HINT}")
    if PROTO_ROOT.is_dir() and STAMP.read_text().strip() != fingerprint():
        raise StaleStubsError(f"gRPC stubs are stale (proto/ changed since they were built): {BUILD_HINT}")
