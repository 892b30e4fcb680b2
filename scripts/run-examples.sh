#!/usr/bin/env bash
# The main job: runs every example workflow through a headless ComfyUI server with the pack installed
# and writes images + summary.md to ./output (see tools/run_examples.py --help for options).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
eval "$("$repo/scripts/bootstrap.sh")"
cd "$repo"
exec "$SAE_VENV/bin/python" tools/run_examples.py "$@"
