#!/usr/bin/env bash
# Creates .venv (Python 3.11) with the project, its dev tools and the CLIP/Triton extra, and
# builds the gRPC stubs. Idempotent and quick when nothing changed: re-installs only when
# pyproject.toml changes (or the pinned tritonserver wheel is not the installed one).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
"$PYTHON" - <<'PY'
import sys
if sys.version_info[:2] != (3, 11):
    raise SystemExit(f"Python 3.11 is required, found {sys.version.split()[0]} (set PYTHON=/path/to/python3.11)")
PY

if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv" >&2
    "$PYTHON" -m venv .venv
fi
stamp=".venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$stamp" ]; then
    echo "setup: installing dependencies (hnswlib builds from source the first time, about 90 s)" >&2
    .venv/bin/python -m pip install --quiet --upgrade pip wheel
    # One command for both: the server package depends on the SDK (clients/python), not on PyPI.
    .venv/bin/python -m pip install --quiet -e ".[dev,clip]" -e ./clients/python
    rm -f .venv/.installed-*
    touch "$stamp"
fi
# tritonserver (python backend only) ships in the nvidia-pytriton wheel; --no-deps because its
# dependencies would downgrade protobuf below what grpcio-tools needs (pyproject.toml, extra clip).
pytriton_want=0.7.0
pytriton_have=$(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("nvidia-pytriton"))' 2>/dev/null || true)
if [ "$pytriton_have" != "$pytriton_want" ]; then
    echo "setup: installing nvidia-pytriton $pytriton_want (tritonserver)" >&2
    .venv/bin/python -m pip install --quiet --no-deps "nvidia-pytriton==$pytriton_want"
fi
# CLIP's BPE vocabulary, into the user cache (checked by sha256; downloaded once).
.venv/bin/python -m clipmodel.vocab >/dev/null
.venv/bin/python -m vsproto.build
# The Python SDK (clients/python), editable; its build hook regenerates its own stubs from proto/.
.venv/bin/python -m pip install --quiet --no-build-isolation -e clients/python
# shard._vsnative (docs/filtered-search.md §7): hnswlib 0.8.0's headers from its sha256-pinned
# sdist + shard/native/vsnative.cpp, compiled once (skipped when its stamp matches). Optional:
# without it the shard runs on hnswlib's Python bindings, so a failure is only a warning here
# (tests/unit/test_vsnative.py fails on a missing module when CI=true).
if ! .venv/bin/python -m shard.native.build --quiet; then
    echo "setup: WARNING: shard._vsnative was not built (see above); the shard falls back to hnswlib's Python bindings" >&2
fi

# buf (proto lint + breaking-change check, scripts/proto_check.sh): the version pinned in
# tools/buf/package.json and its lock file, installed with npm ci into tools/buf/node_modules
# (git-ignored); skipped when that version is already there. Needs Node.js + npm; without them
# only the proto check (part of scripts/test.sh) cannot run, so this is a warning here.
buf_want=$(sed -n 's/.*"@bufbuild\/buf": *"\([^"]*\)".*/\1/p' tools/buf/package.json)
buf_have=$(tools/buf/node_modules/.bin/buf --version 2>/dev/null || true)
if [ "$buf_have" != "$buf_want" ]; then
    if command -v npm >/dev/null 2>&1; then
        echo "setup: installing buf $buf_want (npm ci in tools/buf)" >&2
        (cd tools/buf && npm ci --no-audit --no-fund --loglevel=error)
    else
        echo "setup: npm not found, buf $buf_want not installed (scripts/proto_check.sh needs it)" >&2
    fi
fi
