"""Does the demo model draw what it is told? Generations measured by the shapes-world analyser.

Every caption combination (72) with `--per-caption` fresh seeds each, through ComfyUI's own sampling path
(comfy.sample.sample: the KSampler's), decoded by the model's VAE, read back by sae_math/shapes_analyser.py:
  - colour, shape and background as captioned (each, and all three), exactly one clean shape;
  - where and how large the shape is, against the training distribution (quantiles and the two-sample
    Kolmogorov-Smirnov distance, per factor).
Writes JSON (--out) and a grid PNG (--grid: one generation per caption, captions in all_captions() order).

    $SAE_VENV/bin/python bench/shapes_quality.py [--checkpoint FILE] [--per-caption 3] [--out F] [--grid F]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from tools.comfy_env import import_comfyui, load_pack_module  # noqa: E402

EVAL_SEED_BASE = 7_000_000  # generation seeds: disjoint from anything the training used
REFERENCE_STREAM = 424242  # shapes-world stream for the training-distribution reference


def ks_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the empirical CDFs."""
    a, b = np.sort(a), np.sort(b)
    grid = np.concatenate([a, b])
    return float(np.max(np.abs(np.searchsorted(a, grid, "right") / len(a) - np.searchsorted(b, grid, "right") / len(b))))


def caption_conditioning(clip, texts: list[str]):
    """One CONDITIONING whose batch holds one caption per image: ComfyUI keeps a cond whose batch equals
    the latent's as it is (repeat_to_batch_size), so one sampler call renders many captions."""
    import torch

    encoded = [clip.encode_from_tokens_scheduled(clip.tokenize(t))[0] for t in texts]
    cond = torch.cat([c for c, _ in encoded])
    extra = {}
    pooled = [o.get("pooled_output") for _, o in encoded]
    if all(p is not None for p in pooled):
        extra["pooled_output"] = torch.cat(pooled)
    return [[cond, extra]]


def generate(model, clip, vae, texts, *, steps, cfg, sampler, scheduler, size, seed, chunk=72):
    """Decoded images (N, size, size, 3) float [0, 1], image i captioned texts[i]; `chunk` per sampler call,
    each call with its own seed (seed + call number). Without autograd, as ComfyUI's executor samples."""
    import comfy.sample
    import torch

    images = []
    with torch.no_grad():
        for call, begin in enumerate(range(0, len(texts), chunk)):
            part = texts[begin:begin + chunk]
            positive = caption_conditioning(clip, part)
            negative = caption_conditioning(clip, [""] * len(part))
            latent = torch.zeros((len(part), 4, size // 8, size // 8))
            noise = comfy.sample.prepare_noise(latent, seed + call)
            samples = comfy.sample.sample(model, noise, steps, cfg, sampler, scheduler, positive, negative,
                                          latent, seed=seed + call, disable_pbar=True)
            images.append(vae.decode(samples).cpu().float().numpy())
    return np.concatenate(images)


def measure(images: np.ndarray, expected: list[tuple[str, str, str]], size: int) -> dict:
    analyser = load_pack_module("sae_math.shapes_analyser")
    world = load_pack_module("sae_math.shapes_world")
    readings = analyser.analyse_batch(images)
    n = len(readings)
    colour = np.array([r.colour == e[0] for r, e in zip(readings, expected)])
    shape = np.array([r.shape == e[1] for r, e in zip(readings, expected)])
    background = np.array([r.background == e[2] for r, e in zip(readings, expected)])
    clean = np.array([r.clean for r in readings])
    result = {
        "images": n,
        "colour": float(colour.mean()), "shape": float(shape.mean()), "background": float(background.mean()),
        "all_three": float((colour & shape & background).mean()), "clean": float(clean.mean()),
        "all_three_and_clean": float((colour & shape & background & clean).mean()),
    }
    by_factor = {}
    for key, values, truth in (("colour", colour, [e[0] for e in expected]), ("shape", shape, [e[1] for e in expected]),
                               ("background", background, [e[2] for e in expected])):
        by_factor[key] = {v: float(values[[t == v for t in truth]].mean()) for v in sorted(set(truth))}
    result["accuracy_by_value"] = by_factor
    confusion = {}
    for r, e in zip(readings, expected):
        if r.shape != e[1]:
            k = f"{e[1]}->{r.shape}"
            confusion[k] = confusion.get(k, 0) + 1
    result["shape_confusions"] = dict(sorted(confusion.items(), key=lambda kv: -kv[1]))

    # Position and size against the world's own distribution: over every image with one shape (what the
    # noise decided) and over the clean ones (a check that cleanliness does not select sizes/positions).
    ref = [world.sample_scene(REFERENCE_STREAM, i, size) for i in range(20000)]
    for label, subset in (("one_shape", [r for r in readings if r.shape is not None and r.components == 1]),
                          ("clean", [r for r in readings if r.clean])):
        spread = {"images": len(subset)}
        for key, gen_values, ref_values in (
                ("cx", [r.cx / size for r in subset], [s.cx / size for s in ref]),
                ("cy", [r.cy / size for r in subset], [s.cy / size for s in ref]),
                ("half_extent", [r.half_extent / size for r in subset], [s.half_extent / size for s in ref])):
            g, rf = np.asarray(gen_values), np.asarray(ref_values)
            q = [0.05, 0.25, 0.5, 0.75, 0.95]
            spread[key] = {"generated_quantiles": np.quantile(g, q).round(3).tolist() if len(g) else [],
                           "training_quantiles": np.quantile(rf, q).round(3).tolist(),
                           "ks_distance": round(ks_distance(g, rf), 3) if len(g) else None}
        result[f"spread_{label} (fraction of width)"] = spread
    return result


def save_grid(images: np.ndarray, path: Path, columns: int, gap: int = 2) -> None:
    from PIL import Image

    n, h, w, _ = images.shape
    rows = -(-n // columns)
    grid = np.full((rows * (h + gap) - gap, columns * (w + gap) - gap, 3), 255, dtype=np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, columns)
        grid[r * (h + gap):r * (h + gap) + h, c * (w + gap):c * (w + gap) + w] = np.clip(img * 255 + 0.5, 0, 255)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", type=Path, default=None, help="a demo-format file (default: the embedded one)")
    ap.add_argument("--per-caption", type=int, default=3, help="generations per caption (72 captions)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--cfg", type=float, default=5.0)
    ap.add_argument("--sampler", default="euler")
    ap.add_argument("--scheduler", default="normal")
    ap.add_argument("--seed-base", type=int, default=EVAL_SEED_BASE)
    ap.add_argument("--out", type=Path, default=None, help="JSON results")
    ap.add_argument("--grid", type=Path, default=None, help="PNG: the first generation of every caption")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(message)s")
    import_comfyui()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    dm = load_pack_module("sae_patches.demo_model")
    world = load_pack_module("sae_math.shapes_world")
    path = args.checkpoint or dm.EMBEDDED_PATH
    model, clip, vae = dm.load_demo_checkpoint(path, expected_sha256=None if args.checkpoint else dm.EMBEDDED_SHA256)
    size = dm.read_architecture(path)["image_size"]
    # Round r renders every caption once: image r * 72 + i has caption i.
    expected = world.all_captions() * args.per_caption
    t0 = time.perf_counter()
    images = generate(model, clip, vae, [world.caption(*c) for c in expected], steps=args.steps, cfg=args.cfg,
                      sampler=args.sampler, scheduler=args.scheduler, size=size, seed=args.seed_base)
    seconds = time.perf_counter() - t0
    result = {"checkpoint": path.name, "sampler": args.sampler, "scheduler": args.scheduler, "steps": args.steps,
              "cfg": args.cfg, "per_caption": args.per_caption, "generation_seconds": round(seconds, 1),
              **measure(images, expected, size)}
    text = json.dumps(result, indent=1)
    sys.stdout.write(text + "\n")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    if args.grid:
        save_grid(images[:72], args.grid, columns=12)
    return 0


if __name__ == "__main__":
    sys.exit(main())
