#!/usr/bin/env bash
# The test command: prepares the test bed (venv, ComfyUI) if needed, then runs pytest. The browser tests
# also need Debian's chromium (a system package: .ci/run installs it; without it they skip outside CI).
# Extra arguments go to pytest, e.g. scripts/test.sh tests/test_eigen.py -k sign
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
eval "$("$repo/scripts/bootstrap.sh")"
cd "$repo"
exec "$SAE_VENV/bin/python" -m pytest "$@"
