#!/usr/bin/env bash
# The benchmarks (docs/benchmarks.md): eigendirections, Apply Latent Direction overhead, Self-Attention Swap
# overhead. Prepares the venv/ComfyUI like the tests, then writes markdown tables to stdout and JSON to
# bench/results/. Extra arguments go to every benchmark (e.g. --repeats 5). About 40 minutes on 2 cores.
# Run it on an otherwise idle machine: the benchmarks compare medians of interleaved runs, but a busy
# machine still adds noise.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
eval "$("$repo/scripts/bootstrap.sh")"
cd "$repo"
mkdir -p bench/results
for bench in eigendirections sampling_overhead swap_overhead; do
  "$SAE_VENV/bin/python" "bench/$bench.py" --out "bench/results/$bench.json" "$@" 2> "bench/results/$bench.log"
  echo
done
