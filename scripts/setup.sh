#!/usr/bin/env bash
# Creates .venv (Python 3.11) with the project and its dev tools, and builds the gRPC stubs.
# Idempotent and quick when nothing changed: re-installs only when pyproject.toml changes.
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
    .venv/bin/python -m pip install --quiet -e ".[dev]"
    rm -f .venv/.installed-*
    touch "$stamp"
fi
.venv/bin/python -m vsproto.build
