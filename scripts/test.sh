#!/usr/bin/env bash
# The test command: prepares the test bed (venv, ComfyUI, browser) if needed, then runs pytest.
# Extra arguments go to pytest, e.g. scripts/test.sh tests/test_eigen.py -k sign
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
eval "$("$repo/scripts/bootstrap.sh")"
cd "$repo"
exec "$SAE_VENV/bin/python" -m pytest "$@"
