#!/usr/bin/env bash
# Trains the shapes-world demo model (tools/train_shapes.py), resuming wherever an earlier run stopped, and
# exports it to models/shapes-demo-sd1.safetensors. On 2 CPU cores: the VAE ~15 min, then the UNet beside
# the decoder fine-tuning (one thread each), then the UNet alone on both threads (docs/shapes-model.md has
# the measured times). Checkpoints live outside git in $SAE_TRAIN_DIR (default <cache>/train/shapes-demo).
#   UNET_STEPS (default 20000): the UNet's final step; UNET_SHARED_STEPS (default 4000): its steps beside the
#   decoder. Nothing else heavy should run meanwhile (the notes: a busy core slows training 2-8x). The
#   committed model is the UNet at step 20000 (its metadata says so; resumed from 9499 over three sessions);
#   in the first run the UNet went on to step 5330 on one thread until the decoder was done. Batches depend
#   on the step only, so thread counts change nothing but float rounding.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
eval "$("$repo/scripts/bootstrap.sh")"
cd "$repo"
cache=${SAE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/self-attention-edit}
run=${SAE_TRAIN_DIR:-$cache/train/shapes-demo}
train() { "$SAE_VENV/bin/python" -m tools.train_shapes "$@" --run-dir "$run"; }

train vae --threads 2
[ -f "$run/latents.pt" ] || train fold --threads 2
train decoder --threads 1 &
decoder=$!
train unet --threads 1 --steps "${UNET_SHARED_STEPS:-4000}"
wait "$decoder"
train unet --threads 2 --steps "${UNET_STEPS:-20000}"
train export
