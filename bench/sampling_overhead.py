"""Benchmark: sampling cost of "Apply Latent Direction" (time ratio with/without the patch, peak memory).

    $SAE_VENV/bin/python bench/sampling_overhead.py [--out results.json] [--models tiny,sd15] [--repeats N]

Same model, seed, sampler ('euler', 'normal' schedule), steps and CFG for every variant; ComfyUI's own
sampling path (comfy.sample.sample, as tests/testbed.py's sample()); patched models built by the nodes'
execute(). Models: "tiny" (tests/testbed.py's tiny SD1.5 UNet) and "sd15" (the full SD1.5 UNet shapes
from ComfyUI's SD15 config, random weights, float32 on CPU). Timing runs in rounds, each variant once per
round in a shuffled order; a variant's ratio is the median of its per-round ratios to base (with
quartiles), which cancels the machine's drift between rounds. Peak memory: each variant runs
in a fresh subprocess (warm-up run, then a measured run) that polls malloc's live bytes (glibc
mallinfo2) every millisecond; the table shows the peak above the level just before sampling.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Clock, PeakMemory, full_model, interleaved_rounds, machine, md_table, paired_ratio, run_worker  # noqa: E402

RELATIVE = "relative to token norm"
ALPHA = 0.2

# variant -> chain of Apply Latent Direction nodes: (layer preset of the directions, index, window)
VARIANTS = {
    "base": [],
    "1 direction, middle block, window 0.5-0.8": [("middle block", 0, 0.5, 0.8)],
    "1 direction, all 16 layers, window 0-1": [("all", 0, 0.0, 1.0)],
    "4 chained directions, all 16 layers, window 0-1": [("all", i, 0.0, 1.0) for i in range(4)],
}

SETTINGS = {
    "tiny": {"latent": 16, "steps": 6, "cfg": 5.0, "repeats": 41, "share_runs": 5},
    # 4 steps: with ComfyUI's "normal" schedule the UNet sees t = 999, 666, 333, 0, so one evaluation in
    # four falls inside the paper window 0.5T-0.8T (with 3 steps, 999/500/0, none would).
    "sd15": {"latent": 16, "steps": 4, "cfg": 5.0, "repeats": 9, "share_runs": 3},
}


def setup_model(model_name: str):
    """(model, positive, negative, latent) for a model name, deterministic."""
    import torch

    import testbed

    testbed.load_pack()
    if model_name == "tiny":
        model = testbed.tiny_model("sd15")
        pos, neg = testbed.tiny_conditioning("sd15", 1), testbed.tiny_conditioning("sd15", 2)
    elif model_name == "sd15":
        model = full_model("sd15", torch.float32, init="all")
        calibrate(model)
        gen = torch.Generator().manual_seed(7)
        pos = [[torch.randn((1, 77, 768), generator=gen), {}]]
        neg = [[torch.randn((1, 77, 768), generator=gen), {}]]
    else:
        raise ValueError(model_name)
    latent = testbed.empty_latent(1, SETTINGS[model_name]["latent"])
    return model, pos, neg, latent


def calibrate(model) -> None:
    """Scale the UNet's last conv so eps has unit std at t=500, like a trained model (testbed.calibrate_output_
    with SD1.5's real context width)."""
    import torch

    gen = torch.Generator().manual_seed(1234)
    unet = model.model.diffusion_model
    x = torch.randn((1, 4, 32, 32), generator=gen)
    context = torch.randn((1, 77, 768), generator=gen)
    with torch.no_grad():
        out = unet(x, torch.full((1,), 500.0), context=context)
        last = unet.out[-1]
        last.weight.mul_(1.0 / out.std())
        last.bias.mul_(1.0 / out.std())


def variant_models(model):
    """variant name -> patched model, built with the nodes' execute()."""
    import testbed

    compute = testbed.pack_module("nodes.node_directions").ComputeAttentionEigendirections
    apply = testbed.pack_module("nodes.node_apply").ApplyLatentDirection
    directions = {preset: compute.execute(model, preset, 4, "").args[0] for preset in ("middle block", "all")}
    out = {}
    for name, chain in VARIANTS.items():
        m = model
        for preset, index, start, end in chain:
            m = apply.execute(m, directions[preset], index, ALPHA, start, end, RELATIVE, "", "").args[0]
        out[name] = m
    return out


def sample_model(model_name, model, pos, neg, latent):
    import testbed

    s = SETTINGS[model_name]
    return testbed.sample(model, pos, neg, latent, seed=0, steps=s["steps"], cfg=s["cfg"], sampler="euler",
                          scheduler="normal")


def time_variants(model_name: str, repeats: int | None):
    import torch

    model, pos, neg, latent = setup_model(model_name)
    models = variant_models(model)
    repeats = repeats or SETTINGS[model_name]["repeats"]
    outs = {name: sample_model(model_name, m, pos, neg, latent) for name, m in models.items()}  # warm-up
    times = interleaved_rounds(lambda name: sample_model(model_name, models[name], pos, neg, latent), list(models),
                               repeats)
    shares = {name: patch_time_share(model_name, m, pos, neg, latent, SETTINGS[model_name]["share_runs"])
              for name, m in models.items()}
    return [{"variant": name, "median_s": statistics.median(ts), "runs_s": ts, **paired_ratio(times, name, "base"),
             "inside_patch": shares[name], "output_differs": bool(not torch.equal(outs[name], outs["base"]))}
            for name, ts in times.items()]


def patch_time_share(model_name: str, model, pos, neg, latent, runs: int) -> dict:
    """The share of a sampling run spent inside the pack's attn1 patches: every attn1_patch of a clone is
    wrapped with a clock, and the clocked seconds are divided by the same run's seconds. Both are measured
    in one run, so the machine's drift between runs, which swamps a 2% ratio of separate runs on a shared
    VM, cancels out. What it leaves out: effects outside the call (caches, allocator), for which the ratio
    of whole runs stands."""
    clocked = model.clone()  # deep-copies model_options: its patch list is its own
    patches = clocked.model_options["transformer_options"].get("patches", {})
    total = [0.0]
    patches["attn1_patch"] = [Clock(p, total) for p in patches.get("attn1_patch", [])]
    if not patches["attn1_patch"]:
        return {"share": 0.0, "patch_ms": 0.0}
    sample_model(model_name, clocked, pos, neg, latent)  # warm-up
    shares, inside = [], []
    for _ in range(runs):
        total[0] = 0.0
        t0 = time.perf_counter()
        sample_model(model_name, clocked, pos, neg, latent)
        shares.append(total[0] / (time.perf_counter() - t0))
        inside.append(total[0])
    return {"share": statistics.median(shares), "patch_ms": statistics.median(inside) * 1e3}


def worker(model_name: str, variant: str) -> dict:
    """One variant in this (fresh) process: a warm-up run, then a measured run. Reports the peak memory
    above the level just before sampling: what the sampling itself needs (activations, patch temporaries)."""
    model, pos, neg, latent = setup_model(model_name)
    m = variant_models(model)[variant]
    sample_model(model_name, m, pos, neg, latent)
    with PeakMemory() as peak:
        t0 = time.perf_counter()
        sample_model(model_name, m, pos, neg, latent)
        seconds = time.perf_counter() - t0
    return {"variant": variant, **peak.report(), "run_s": seconds}


def memory_variants(model_name: str):
    return [run_worker(__file__, [model_name, variant]) for variant in VARIANTS]


def profile_variant(model_name: str, variant: str, top: int = 25) -> str:
    """torch.profiler table (CPU, with Python functions) of one sampling run of a variant."""
    from torch.profiler import ProfilerActivity, profile

    model, pos, neg, latent = setup_model(model_name)
    m = variant_models(model)[variant]
    sample_model(model_name, m, pos, neg, latent)
    with profile(activities=[ProfilerActivity.CPU], with_stack=False) as prof:
        sample_model(model_name, m, pos, neg, latent)
    return prof.key_averages().table(sort_by="cpu_time_total", row_limit=top)


def ratio_cell(row: dict) -> str:
    return f"{row['ratio']:.3f} ({row['ratio_q1']:.3f}-{row['ratio_q3']:.3f})"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument("--models", default="tiny,sd15")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per variant (default per model)")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--profile", metavar="MODEL:VARIANT", help="print a profile of one variant and exit")
    parser.add_argument("--worker", nargs=2, metavar=("MODEL", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        print(json.dumps(worker(*args.worker)))
        return
    if args.profile:
        model_name, variant = args.profile.split(":", 1)
        print(profile_variant(model_name, variant))
        return

    results = {"machine": machine(), "settings": SETTINGS, "alpha": ALPHA, "models": {}}
    m = results["machine"]
    print(f"# Sampling overhead of Apply Latent Direction\n\n{m.get('Model name')}, torch {m['torch']} "
          f"({m['torch_threads']} threads)\n")
    for model_name in [x for x in args.models.split(",") if x]:
        s = SETTINGS[model_name]
        timing = time_variants(model_name, args.repeats)
        memory = [] if args.no_memory else memory_variants(model_name)
        results["models"][model_name] = {"timing": timing, "memory": memory}
        mem = {r["variant"]: r for r in memory}
        print(f"## {model_name}: latent {s['latent']}x{s['latent']}, batch 1, {s['steps']} euler steps, cfg {s['cfg']}, "
              f"{len(timing[0]['runs_s'])} rounds (each variant once per round, shuffled); ratio: median of "
              "per-round ratios\n")
        rows = []
        for r in timing:
            mm = mem.get(r["variant"])
            share = r["inside_patch"]
            rows.append([r["variant"], f"{r['median_s'] * 1e3:.1f}", ratio_cell(r),
                         f"{share['patch_ms']:.1f} ({share['share'] * 100:.2f}%)" if share["patch_ms"] else "-",
                         "yes" if r["output_differs"] else "no",
                         f"{mm['peak_above_mb']:.1f}" if mm else "-", f"{mm['rss_mb']:.0f}" if mm else "-"])
        print(md_table(["variant", "median ms", "ratio to base (quartiles)", "ms inside the patch (share of run)",
                        "output changed", "peak memory of sampling (MB)",
                        "process RSS (MB)"], rows))
        print()
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
