#!/usr/bin/env bash
# The main job: a local shard on embedded defaults that indexes vectors and answers queries.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python scripts/demo.py "$@"
