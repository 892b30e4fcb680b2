"""Benchmark: cost of "Self-Attention Swap".

    $SAE_VENV/bin/python bench/swap_overhead.py [--out results.json] [--models tiny,sd15] [--repeats N]

1. Sampling: one edit run (a source/target pair sampled together, the swap on its default layers and
   steps) against a plain run of the same batch of two (same model, seed, sampler, steps, CFG,
   conditioning), timed in rounds (both once per round, shuffled), the ratio being the median of the
   per-round ratios; peak memory of each in a fresh subprocess.
   Models as in bench/sampling_overhead.py: "tiny" (tests/testbed.py) and "sd15" (full SD1.5 UNet shapes,
   random weights, float32, latent 16x16).
2. One swapped layer at SD1.5's real token grids, 32x32 (1024 tokens, width 640) and 64x64 (4096 tokens,
   width 320), 8 heads, one pair with CFG (4 rows): our fused swap (the attn1 replace the node installs:
   a row copy of q and k, then ComfyUI's optimized attention) against the explicit-map implementation
   the reference FPE code uses (every softmax(QK^T) map materialised, the source's maps given to the
   target, multiplied by V; sae_math/swap_math.explicit_swapped_attention) and against plain attention
   without any swap. Time: medians of shuffled rounds. Peak memory above the inputs: each variant in a fresh
   subprocess, polled (bench/_common.PeakMemory).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Clock, PeakMemory, interleaved_rounds, machine, md_table, paired_ratio, run_worker  # noqa: E402
from sampling_overhead import SETTINGS, ratio_cell, setup_model  # noqa: E402

GRIDS = {"32x32": (1024, 640), "64x64": (4096, 320)}  # token grid -> (tokens, layer width) on SD1.5
HEADS = 8
ROWS = 4  # [source, target] x [cond, uncond]
# "ComfyUI default" is comfy.ldm.modules.attention.optimized_attention as this process selected it (on a
# CPU: sub-quadratic attention, whose query chunks are sized from free memory, so on a machine with free
# RAM it materialises the maps too); "SDPA" is attention_pytorch (torch's fused kernel: ComfyUI's choice
# on most GPUs and with --use-pytorch-cross-attention). The swap runs through the same patch either way.
LAYER_VARIANTS = ("plain, ComfyUI default", "fused swap (ours), ComfyUI default", "plain, SDPA",
                  "fused swap (ours), SDPA", "explicit maps (reference FPE)")
FUSED = "fused swap (ours), SDPA"
EXPLICIT = "explicit maps (reference FPE)"
SAMPLING_VARIANTS = ("plain batch of two", "edit run (swap)")


# ---------------------------------------------------------------------------------------------------
# 1. Sampling

def sampling_setup(model_name: str):
    """(variant -> model, positive, negative, latent samples, batch_index): one source/target pair built by
    the pack's own nodes; the plain variant samples the very same batch without the swap."""
    import testbed

    model, pos, neg, latent = setup_model(model_name)
    swap_nodes = testbed.pack_module("nodes.node_swap")
    pairs = swap_nodes.MakePairs.execute({"samples": latent}).args[0]
    target = [[c * 1.05 + 0.1, dict(extra)] for c, extra in pos]  # "a different prompt"
    pair_pos = swap_nodes.PairConditioning.execute(pos, target).args[0]
    pair_neg = swap_nodes.PairConditioning.execute(neg, neg).args[0]
    node = swap_nodes.SelfAttentionSwap
    schema = node.define_schema()
    defaults = {i.id: i.default for i in schema.inputs if getattr(i, "default", None) is not None}
    swapped = node.execute(model, defaults["layers"], defaults["start"], defaults["end"], defaults["rows"]).args[0]
    models = {"plain batch of two": model, "edit run (swap)": swapped}
    return models, pair_pos, pair_neg, pairs["samples"], pairs.get("batch_index")


def _sample_pair(model_name, model, pos, neg, samples, batch_index):
    import testbed

    s = SETTINGS[model_name]
    return testbed.sample(model, pos, neg, samples, seed=0, steps=s["steps"], cfg=s["cfg"], sampler="euler",
                          scheduler="normal", batch_index=batch_index)


def time_sampling(model_name: str, repeats: int | None):
    import torch

    models, pos, neg, samples, batch_index = sampling_setup(model_name)
    repeats = repeats or SETTINGS[model_name]["repeats"]
    outs = {name: _sample_pair(model_name, m, pos, neg, samples, batch_index) for name, m in models.items()}
    times = interleaved_rounds(lambda name: _sample_pair(model_name, models[name], pos, neg, samples, batch_index),
                               list(models), repeats)
    plain, edited = outs["plain batch of two"], outs["edit run (swap)"]
    share = swap_time_share(model_name, models["edit run (swap)"], pos, neg, samples, batch_index,
                            SETTINGS[model_name]["share_runs"])
    return [{"variant": name, "median_s": statistics.median(ts), "runs_s": ts,
             **paired_ratio(times, name, "plain batch of two"), "swap_own": share if "swap" in name else None,
             # The swap must change only the target; the source rows stay bit-identical.
             "source_unchanged": bool(torch.equal(edited[0::2], plain[0::2])),
             "target_changed": bool(not torch.equal(edited[1::2], plain[1::2]))}
            for name, ts in times.items()]


def swap_time_share(model_name: str, swapped, pos, neg, samples, batch_index, runs: int) -> dict:
    """The share of an edit run spent in the swap's own work (window check, row pairing, the q/k gather):
    in a clone, every swap replace is clocked, and so is the attention it calls; the difference, over the
    same run's seconds. Measured inside one run, so the VM's drift between runs cancels (see
    sampling_overhead.patch_time_share)."""
    import testbed

    swap_patch = testbed.pack_module("sae_patches.swap_patch")
    clocked = swapped.clone()  # deep-copies model_options: its replace dicts are its own
    outer, inner = [0.0], [0.0]
    replaces = clocked.model_options["transformer_options"].get("patches_replace", {}).get("attn1", {})
    for key, patch in list(replaces.items()):
        if isinstance(patch, swap_patch.SelfAttentionSwapPatch):
            attention = patch.inner or swap_patch._optimized_attention
            # The node's own SwapWindow, shared by every layer as in the node: one decision per UNet call.
            replaces[key] = Clock(swap_patch.SelfAttentionSwapPatch(patch.start, patch.end, patch.edit_chunks,
                                                                     inner=Clock(attention, inner),
                                                                     window=patch.window), outer)
    _sample_pair(model_name, clocked, pos, neg, samples, batch_index)  # warm-up
    shares, own = [], []
    for _ in range(runs):
        outer[0] = inner[0] = 0.0
        t0 = time.perf_counter()
        _sample_pair(model_name, clocked, pos, neg, samples, batch_index)
        shares.append((outer[0] - inner[0]) / (time.perf_counter() - t0))
        own.append(outer[0] - inner[0])
    return {"layers": len(replaces), "share": statistics.median(shares), "swap_ms": statistics.median(own) * 1e3}


def sampling_worker(model_name: str, variant: str) -> dict:
    models, pos, neg, samples, batch_index = sampling_setup(model_name)
    model = models[variant]
    _sample_pair(model_name, model, pos, neg, samples, batch_index)
    with PeakMemory() as peak:
        _sample_pair(model_name, model, pos, neg, samples, batch_index)
    return {"variant": variant, **peak.report()}


# ---------------------------------------------------------------------------------------------------
# 2. One swapped layer

def layer_inputs(grid: str, seed: int = 0):
    """q, k, v (ROWS, tokens, width) float32 like a UNet call's attn1 inputs, deterministic."""
    import torch

    tokens, width = GRIDS[grid]
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn((ROWS, tokens, width), generator=gen) for _ in range(3)]


def layer_functions():
    """variant -> f(q, k, v), all through the pack's and ComfyUI's code."""
    import testbed

    testbed.load_pack()
    swap_patch = testbed.pack_module("sae_patches.swap_patch")
    swap_math = testbed.pack_module("sae_math.swap_math")
    from comfy.ldm.modules.attention import attention_pytorch, optimized_attention

    extra = {"n_heads": HEADS, "cond_or_uncond": [0, 1]}  # no sigmas: the patch is active
    default_patch = swap_patch.SelfAttentionSwapPatch(0.0, 1.0, frozenset({0, 1}))
    # The patch calling through an attn1 replace that uses SDPA, as it does with another pack's replace.
    sdpa_patch = swap_patch.SelfAttentionSwapPatch(
        0.0, 1.0, frozenset({0, 1}), inner=lambda q, k, v, extra_options: attention_pytorch(q, k, v, HEADS))
    targets, sources = swap_math.pair_rows(ROWS, [0, 1], {0, 1})
    return {
        "plain, ComfyUI default": lambda q, k, v: optimized_attention(q, k, v, HEADS),
        "fused swap (ours), ComfyUI default": lambda q, k, v: default_patch(q, k, v, extra),
        "plain, SDPA": lambda q, k, v: attention_pytorch(q, k, v, HEADS),
        FUSED: lambda q, k, v: sdpa_patch(q, k, v, extra),
        EXPLICIT: lambda q, k, v: swap_math.explicit_swapped_attention(q, k, v, HEADS, targets, sources),
    }


def default_attention_name() -> str:
    from comfy.ldm.modules.attention import optimized_attention

    return optimized_attention.__name__


def time_layers(repeats: int):
    import torch

    fns = layer_functions()
    rows = []
    for grid in GRIDS:
        q, k, v = layer_inputs(grid)
        with torch.no_grad():
            outs = {name: fn(q, k, v) for name, fn in fns.items()}  # warm-up, and the outputs to compare
            times = interleaved_rounds(lambda name: fns[name](q, k, v), list(fns), repeats)
        fused = statistics.median(times[FUSED])
        max_diff = max(float((outs[name] - outs[EXPLICIT]).abs().max()) for name in fns if "swap (ours)" in name)
        for name, ts in times.items():
            rows.append({"grid": grid, "variant": name, "median_ms": statistics.median(ts) * 1e3,
                         "runs_ms": [t * 1e3 for t in ts], "ratio_to_fused_sdpa": statistics.median(ts) / fused,
                         "max_abs_diff_swaps_vs_explicit": max_diff})
    return rows


def layer_worker(grid: str, variant: str) -> dict:
    import torch

    fn = layer_functions()[variant]
    q, k, v = layer_inputs(grid)
    with torch.no_grad():
        fn(q, k, v)
        with PeakMemory() as peak:
            out = fn(q, k, v)
        del out
    return {"grid": grid, "variant": variant, **peak.report()}


# ---------------------------------------------------------------------------------------------------

def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument("--models", default="tiny,sd15")
    parser.add_argument("--repeats", type=int, default=None, help="timed sampling runs per variant")
    parser.add_argument("--layer-repeats", type=int, default=5)
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        kind, a, b = args.worker
        print(json.dumps(sampling_worker(a, b) if kind == "sampling" else layer_worker(a, b)))
        return

    results = {"machine": machine(), "settings": SETTINGS, "sampling": {}, "layer": {}}
    m = results["machine"]
    print(f"# Sampling overhead of Self-Attention Swap\n\n{m.get('Model name')}, torch {m['torch']} "
          f"({m['torch_threads']} threads)\n")
    for model_name in [x for x in args.models.split(",") if x]:
        s = SETTINGS[model_name]
        timing = time_sampling(model_name, args.repeats)
        memory = [] if args.no_memory else [run_worker(__file__, ["sampling", model_name, v]) for v in SAMPLING_VARIANTS]
        results["sampling"][model_name] = {"timing": timing, "memory": memory}
        mem = {r["variant"]: r for r in memory}
        print(f"## {model_name}: latent {s['latent']}x{s['latent']}, one source/target pair, {s['steps']} euler "
              f"steps, cfg {s['cfg']}, {len(timing[0]['runs_s'])} rounds (both variants once per round, shuffled); ratio: "
              "median of per-round ratios\n")
        print(md_table(["variant", "median ms", "ratio (quartiles)", "ms in the swap's own work (share of run)",
                        "source rows unchanged", "target changed",
                        "peak memory of sampling (MB)"],
                       [[r["variant"], f"{r['median_s'] * 1e3:.1f}", ratio_cell(r),
                         f"{r['swap_own']['swap_ms']:.1f} ({r['swap_own']['share'] * 100:.2f}%)" if r["swap_own"] else "-", r["source_unchanged"],
                         r["target_changed"],
                         f"{mem[r['variant']]['peak_above_mb']:.1f}" if r["variant"] in mem else "-"]
                        for r in timing]))
        print()

    layer = time_layers(args.layer_repeats)
    results["layer_default_attention"] = default_attention_name()
    memory = [] if args.no_memory else [run_worker(__file__, ["layer", g, v]) for g in GRIDS for v in LAYER_VARIANTS]
    results["layer"] = {"timing": layer, "memory": memory}
    mem = {(r["grid"], r["variant"]): r for r in memory}
    print(f"## One swapped layer, SD1.5 token grids, {HEADS} heads, {ROWS} rows (pair x cond/uncond), float32, "
          f"{args.layer_repeats} shuffled rounds; ComfyUI default attention here: "
          f"{results['layer_default_attention']}\n")
    print(md_table(["grid (tokens, width)", "variant", "median ms", "time / fused swap (SDPA)",
                    "peak memory above inputs (MB)", "max |swap - explicit|"],
                   [[f"{r['grid']} {GRIDS[r['grid']]}", r["variant"], f"{r['median_ms']:.1f}",
                     f"{r['ratio_to_fused_sdpa']:.2f}",
                     f"{mem[(r['grid'], r['variant'])]['peak_above_mb']:.1f}" if mem else "-",
                     f"{r['max_abs_diff_swaps_vs_explicit']:.1e}"] for r in layer]))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
