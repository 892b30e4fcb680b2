"""Shared helpers of the semantic benchmark (bench/semantic.py): the demo model through the pack's own
nodes, batched generation with explicit noise, and the analyser's readings turned into factor changes.

Everything is deterministic: noise comes from ComfyUI's prepare_noise seeded per seed, captions from a
fixed permutation, random directions from seeded generators."""

from __future__ import annotations

import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))
from bench.shapes_quality import caption_conditioning  # noqa: E402

log = logging.getLogger("self_attention_edit")

# The demo model's settings (docs/shapes-model.md) but 10 steps instead of 20: half the cost; the full run
# checks on its own seeds that 10 and 20 steps read back alike (semantic_directions.steps_check).
STEPS, CFG, SAMPLER, SCHEDULER = 10, 5.0, "euler", "normal"
REFERENCE_STEPS = 20
SEED_BASE = 9_100_000  # generation seeds: disjoint from the training's and from shapes_quality's
FACTORS = ("colour", "shape", "background", "centre", "size")


def pack(name: str):
    """A pack module as ComfyUI's custom-node loader imported it (testbed: needs COMFYUI_PATH)."""
    import testbed

    return testbed.pack_module(name)


def pure(name: str):
    """A pure module of the pack (sae_math/<name>.py), imported as a plain package: no ComfyUI needed."""
    import importlib

    import testbed  # noqa: F401  (puts the repository root on sys.path)

    return importlib.import_module(f"sae_math.{name}")


@dataclass
class Ctx:
    model: object
    clip: object
    vae: object
    size: int
    checkpoint: str
    steps: int = STEPS
    _conds: dict = None

    def cond(self, text: str):
        """(1, tokens, dim) conditioning tensor of one caption, encoded once."""
        if self._conds is None:
            self._conds = {}
        if text not in self._conds:
            self._conds[text] = caption_conditioning(self.clip, [text])[0][0]
        return self._conds[text]

    def conditioning(self, texts: list[str]):
        """One CONDITIONING whose batch holds texts[i] for latent element i (shapes_quality's layout)."""
        import torch

        return [[torch.cat([self.cond(t) for t in texts]), {}]]


def setup(checkpoint: Path | None, threads: int | None = None) -> Ctx:
    import testbed

    testbed.load_pack()
    import torch

    if threads:
        torch.set_num_threads(threads)
    torch.set_grad_enabled(False)
    logging.getLogger("self_attention_edit").setLevel(logging.ERROR)  # the window's "missed" warnings
    dm = pack("sae_patches.demo_model")
    path = Path(checkpoint) if checkpoint else dm.EMBEDDED_PATH
    model, clip, vae = dm.load_demo_checkpoint(path, expected_sha256=None if checkpoint else dm.EMBEDDED_SHA256)
    return Ctx(model, clip, vae, dm.read_architecture(path)["image_size"], path.name)


def combos(count: int, offset: int = 0) -> list[tuple[int, tuple[str, str, str]]]:
    """(seed, caption factors) pairs: seed SEED_BASE + offset + i; captions cycle through a fixed
    permutation of all 72, so every caption appears before any repeats."""
    world = pure("shapes_world")
    captions = world.all_captions()
    order = np.random.default_rng(20261201).permutation(len(captions))
    return [(SEED_BASE + offset + i, captions[order[(offset + i) % len(captions)]]) for i in range(count)]


def seed_noise(ctx: Ctx, seeds: list[int]):
    """(len(seeds), 4, h, w) noise: element i is prepare_noise of one latent seeded seeds[i]."""
    import comfy.sample
    import torch

    latent = torch.zeros((1, 4, ctx.size // 8, ctx.size // 8))
    return torch.cat([comfy.sample.prepare_noise(latent, int(s)) for s in seeds])


def render(ctx: Ctx, model, noise, texts: list[str], chunk: int = 128, cfg: float = CFG, latent=None,
           add_noise: bool = True) -> np.ndarray:
    """Images (N, S, S, 3) float [0, 1]: element i sampled from noise[i] with caption texts[i], through
    comfy.sample.sample (the KSampler's path), `chunk` elements per sampler call. latent/add_noise=False:
    KSamplerAdvanced's "add_noise disable" from a given latent (an inversion's noise)."""
    import comfy.sample
    import torch

    out = []
    with torch.no_grad():  # as ComfyUI's executor samples
        for begin in range(0, len(texts), chunk):
            part = slice(begin, begin + chunk)
            n = noise[part]
            start = torch.zeros_like(n) if latent is None else latent[part]
            samples = comfy.sample.sample(model, n if add_noise else torch.zeros_like(n), ctx.steps, cfg, SAMPLER,
                                          SCHEDULER, ctx.conditioning(texts[part]), ctx.conditioning([""] * len(n)),
                                          start, seed=0, disable_pbar=True)
            out.append(ctx.vae.decode(samples).cpu().float().numpy())
    return np.concatenate(out)


# ---------------------------------------------------------------------------------------------------
# Readings -> factors

@dataclass
class Factors:
    """Per image: categorical factors, centre (px), half-extent (px), clean, one shape found."""

    colour: np.ndarray
    shape: np.ndarray
    background: np.ndarray
    cx: np.ndarray
    cy: np.ndarray
    h: np.ndarray
    clean: np.ndarray
    found: np.ndarray

    def __getitem__(self, index):
        return Factors(*(getattr(self, f)[index] for f in self.__dataclass_fields__))

    def __len__(self):
        return len(self.clean)


def read(images: np.ndarray) -> Factors:
    analyser = pure("shapes_analyser")
    rs = analyser.analyse_batch(images)
    return Factors(
        np.array([r.colour or "" for r in rs]), np.array([r.shape or "" for r in rs]),
        np.array([r.background for r in rs]), np.array([r.cx for r in rs]), np.array([r.cy for r in rs]),
        np.array([r.half_extent for r in rs]), np.array([r.clean for r in rs]),
        np.array([r.shape is not None and r.components == 1 for r in rs]))


def random_pair_change(base: Factors) -> dict:
    """The change of each factor between two unrelated base images (all ordered pairs): the unit of the
    normalised change, so 1 means 'as different as two independent generations'."""
    ok = base.found
    i, j = np.triu_indices(len(base), 1)
    both = ok[i] & ok[j]
    return {
        "colour": float(np.mean(base.colour[i] != base.colour[j])),
        "shape": float(np.mean(base.shape[i] != base.shape[j])),
        "background": float(np.mean(base.background[i] != base.background[j])),
        "centre": float(np.mean(np.hypot(base.cx[i] - base.cx[j], base.cy[i] - base.cy[j])[both])),
        "size": float(np.mean(np.abs(np.log(base.h[i][both] / base.h[j][both])))),
    }


def changes(edit: Factors, base: Factors) -> dict:
    """Mean change of every factor from base[i] to edit[i] (same noise and caption), plus fidelity.
    Centre and size over the pairs where both images have one shape."""
    both = edit.found & base.found
    shift = np.hypot(edit.cx - base.cx, edit.cy - base.cy)
    ratio = edit.h / base.h
    return {
        "colour": float(np.mean(edit.colour != base.colour)),
        "shape": float(np.mean(edit.shape != base.shape)),
        "background": float(np.mean(edit.background != base.background)),
        "centre": float(np.mean(shift[both])) if both.any() else math.nan,
        "size": float(np.mean(np.abs(np.log(ratio[both])))) if both.any() else math.nan,
        "size_ratio_median": float(np.median(ratio[both])) if both.any() else math.nan,
        "dx": float(np.mean((edit.cx - base.cx)[both])) if both.any() else math.nan,
        "dy": float(np.mean((edit.cy - base.cy)[both])) if both.any() else math.nan,
        "dlog_size": float(np.mean(np.log(ratio[both]))) if both.any() else math.nan,
        "clean": float(np.mean(edit.clean)),
        "found": float(np.mean(edit.found)),
    }


def normalised(change: dict, unit: dict) -> dict:
    return {f: (0.0 if not np.isfinite(change[f]) else change[f] / unit[f]) for f in FACTORS}


def disentanglement(norm: dict) -> tuple[str, float]:
    """(the most-changed factor, its share of the summed normalised change)."""
    total = sum(norm.values())
    top = max(FACTORS, key=lambda f: norm[f])
    return top, (norm[top] / total if total > 0 else math.nan)


def background_mask(img: np.ndarray, bg: str, dilate: int = 2) -> np.ndarray:
    """Pixels (S, S) that are background: farther than the analyser's foreground distance from it are
    shape, dilated by `dilate` px to leave out the anti-aliased rim."""
    from scipy import ndimage

    world = pure("shapes_world")
    analyser = pure("shapes_analyser")
    ref = np.asarray(world.BACKGROUNDS.get(bg, (128, 128, 128)), dtype=np.float64)
    fg = np.linalg.norm(img * 255.0 - ref, axis=2) > analyser.FOREGROUND_DISTANCE
    return ~ndimage.binary_dilation(fg, iterations=dilate)


def psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """PSNR (dB, peak 1) of float images in [0, 1], over the mask's pixels; inf when equal (capped at 99)."""
    d = (a - b) ** 2
    if mask is not None:
        if not mask.any():
            return math.nan
        d = d[mask]
    mse = float(np.mean(d))
    return 99.0 if mse <= 1e-10 else min(99.0, 10 * math.log10(1.0 / mse))


def background_psnr(edit_imgs: np.ndarray, base_imgs: np.ndarray, base: Factors, edit: Factors) -> float:
    """Median PSNR between edited and base images over the pixels that are background in both."""
    values = []
    for a, b, bg_a, bg_b in zip(edit_imgs, base_imgs, edit.background, base.background):
        mask = background_mask(a, bg_a) & background_mask(b, bg_b)
        values.append(psnr(a, b, mask))
    values = [v for v in values if np.isfinite(v)]
    return float(np.median(values)) if values else math.nan


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation (average ranks for ties); nan when either side is constant."""
    def ranks(v):
        order = np.argsort(v, kind="stable")
        r = np.empty(len(v))
        r[order] = np.arange(len(v), dtype=np.float64)
        for value in np.unique(v):  # ties: average rank
            tie = v == value
            r[tie] = r[tie].mean()
        return r

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    return float(np.corrcoef(ranks(x), ranks(y))[0, 1])


def r_squared(x: np.ndarray, y: np.ndarray) -> float:
    """R^2 of the least-squares line y ~ a + b x."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) < 3 or np.ptp(y) == 0:
        return math.nan
    b, a = np.polyfit(x, y, 1)
    residual = y - (a + b * x)
    return float(1 - residual.var() / y.var())


def rounded(obj, digits: int = 4):
    """JSON-friendly copy: floats rounded, nan -> None, numpy scalars to Python."""
    if isinstance(obj, dict):
        return {str(k): rounded(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [rounded(v, digits) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return None if not np.isfinite(obj) else round(float(obj), digits)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def save_grid(rows: list[np.ndarray], labels: list[str], path: Path, header: list[str] | None = None,
              scale: int = 1, label_width: int = 150) -> None:
    """PNG grid: one row of images (N, S, S, 3 float) per entry, a text label on the left of each row,
    an optional header row of column labels."""
    from PIL import Image, ImageDraw

    s = rows[0].shape[1] * scale
    gap, head = 2, (14 if header else 0)
    cols = max(len(r) for r in rows)
    width = label_width + cols * (s + gap)
    height = head + len(rows) * (s + gap)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    if header:
        for c, text in enumerate(header):
            draw.text((label_width + c * (s + gap) + 2, 1), text, fill=(0, 0, 0))
    for r, (imgs, label) in enumerate(zip(rows, labels)):
        y = head + r * (s + gap)
        for line, text in enumerate(label.split("\n")):
            draw.text((4, y + 4 + 12 * line), text, fill=(0, 0, 0))
        for c, img in enumerate(imgs):
            tile = Image.fromarray(np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8))
            if scale != 1:
                tile = tile.resize((s, s), Image.NEAREST)
            canvas.paste(tile, (label_width + c * (s + gap), y))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path, optimize=True)
