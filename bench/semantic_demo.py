"""Which direction and alpha the demo model's example workflows use for a single edit: every eigendirection
of every layer (the preset that moves most, bench/semantic_directions.py) at the moderate alphas +-1, +-1.5,
+-2 x token norm, on the screen's 64 seeds: the size change (normalised: 1 = as different as two unrelated
generations), its signed mean log ratio, and the share of images still one clean shape. The demo edit should
show (size change near 1) without breaking the picture (clean near the unedited 0.92); the screen's +-4 breaks
most of them (docs/semantic.md)."""

from __future__ import annotations

import time

import numpy as np
import semantic_common as sc
import semantic_directions as sd

ALPHAS = (-2.0, -1.5, -1.0, 1.0, 1.5, 2.0)
CONFIGS = {"full": {"seeds": 64, "k": 8}}


def run(ctx, config: str = "full", log=print) -> dict:
    cfg = CONFIGS[config]
    world = sc.pure("shapes_world")
    nd = sc.pack("nodes.node_directions")
    t0 = time.perf_counter()
    dirs = nd.ComputeAttentionEigendirections.execute(ctx.model, "all", cfg["k"]).args[0]
    combos = sc.combos(cfg["seeds"])
    texts = [world.caption(*c) for _, c in combos]
    noise = sc.seed_noise(ctx, [s for s, _ in combos])
    base_imgs = sc.render(ctx, ctx.model, noise, texts)
    base = sc.read(base_imgs)
    unit = sc.random_pair_change(base)
    result = {"config": config, "alphas": list(ALPHAS), "base_clean": float(np.mean(base.clean)), "directions": {}}
    for index in range(cfg["k"]):
        imgs = sd.sweep_images(ctx, dirs, index, "", ALPHAS, noise, texts)
        result["directions"][str(index)] = {
            str(c["alpha"]): {"size": c["normalised"]["size"], "dlog_size": c["dlog_size"], "clean": c["clean"],
                              "centre": c["centre"]}
            for c in sd.describe(imgs, ALPHAS, base, base_imgs, unit)["per_alpha"]}
        log(f"demo settings: direction {index} ({time.perf_counter() - t0:.0f} s)")
    result["wall_seconds"] = time.perf_counter() - t0
    return result


def tables(result: dict) -> str:
    head = " | ".join(f"{a:+g}" for a in result["alphas"])
    lines = [f"### Single-edit settings, every layer: size change / clean (unedited clean {result['base_clean']:.2f})",
             "", f"| direction | {head} |", "|---|" + "---|" * len(result["alphas"])]
    for index, at in result["directions"].items():
        cells = " | ".join(f"{at[str(a)]['size']:.2f} / {at[str(a)]['clean']:.2f}" for a in result["alphas"])
        lines.append(f"| {index} | {cells} |")
    return "\n".join(lines)
