#!/usr/bin/env bash
# The main job: a local cluster with CLIP on Triton that indexes a few thousand pictures (real
# sample photographs + generated ones) and answers a text and an image query (scripts/demo.py).
# Real CLIP weights: bash scripts/demo.sh --weights /path/to/clip-vit-base-patch32 (or
# VS_CLIP_WEIGHTS=...); without them the random model's results carry no meaning.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# the sample photographs ship inside the scikit-image wheel (pyproject.toml, extra "demo")
if ! .venv/bin/python -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("skimage") is None)'; then
    echo "demo: installing scikit-image (its sample photographs)" >&2
    .venv/bin/python -m pip install --quiet "scikit-image>=0.24,<1"
fi
exec .venv/bin/python scripts/demo.py "$@"
