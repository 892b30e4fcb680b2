"""The change the direction measurements pointed to, tested: directions from data instead of from the weights.

Eigendirections of C move the demo model's images more than random directions do but are no more selective
(docs/semantic.md, Method A). The obvious remedy is a direction that is *about* a factor by construction: the
difference of the mean self-attention input between images that differ in that factor. Before shipping it as a
node, this stage measures whether such a direction edits the factor at all, through the pack's own Apply Latent
Direction:

  caption contrasts   red -> blue, circle -> square, white -> black background: the same seeds sampled with
                      the two captions (everything else in the caption as the combo has it); d = mean input
                      under the target caption - mean under the source caption, per layer, over the image
                      tokens, rows and evaluations inside the window
  factor contrasts    size and horizontal position (not in the caption): one batch sampled, the analyser
                      splits it into the top and bottom thirds of the factor; d = mean(top) - mean(bottom)
                      per layer, each image's rows (conditional and unconditional) averaged

d is applied unnormalised with alpha_scale "absolute (paper)", so alpha = 1 adds exactly the measured mean
difference in every layer (a unit direction with one alpha for every layer over- or under-shoots layers whose
difference differs tenfold in size). Directions are recorded and applied in the same window; edits are
measured on seeds disjoint from the calibration's. Every layer ("all": the preset that moves most).
"""

from __future__ import annotations

import math
import threading
import time

import numpy as np
import semantic_common as sc

CONFIGS = {
    "full": {"calibration": 32, "test": 32, "factor_calibration": 128,
             "windows": ((0.5, 0.8), (0.8, 1.0), (0.0, 1.0)), "alphas": (1.0, 2.0, 4.0, 8.0)},
    # tests/test_semantic.py: the one contrast that reaches its target (at the cost of the picture)
    "test": {"calibration": 8, "test": 8, "windows": ((0.0, 1.0),), "alphas": (4.0,), "contrasts": ("background",)},
}
CAPTION_CONTRASTS = {"colour": ("red", "blue"), "shape": ("circle", "square"), "background": ("white", "black")}
FACTOR_CONTRASTS = ("size", "x")
FIELD = {"colour": 0, "shape": 1, "background": 2}
SCALE = "absolute (paper)"


class RowMeans:
    """Observer for adapter.install_input_probe: per layer, the mean over image tokens of every row's input
    (rows, d), averaged over the evaluations inside `window`, and the mean token norm."""

    def __init__(self, window):
        self.window = window
        self.sums: dict[str, object] = {}
        self.calls: dict[str, int] = {}
        self.norms: dict[str, float] = {}
        self._lock = threading.Lock()

    def __deepcopy__(self, memo):
        return self

    def __call__(self, key, z, sigma, t):
        if not self.window.contains(float(sigma), float(t)):
            return
        z = z.detach().float()
        rows = z.mean(dim=1).double().cpu()  # (rows, d)
        with self._lock:
            self.sums[key] = rows if key not in self.sums else self.sums[key] + rows
            self.calls[key] = self.calls.get(key, 0) + 1
            self.norms[key] = self.norms.get(key, 0.0) + float(z.norm(dim=-1).mean())

    def rows(self, key):
        return self.sums[key] / self.calls[key]

    def token_norm(self, key) -> float:
        return self.norms[key] / self.calls[key]


def recorded(ctx, keys, texts, noise, window) -> tuple[RowMeans, np.ndarray]:
    """Sample texts[i] from noise[i] (unedited) with a RowMeans on a clone: (the means, the images)."""
    families = sc.pack("sae_patches.families")
    dw = sc.pack("sae_math.direction_window")
    m = ctx.model.clone()
    probe = RowMeans(dw.window_for(m.get_model_object("model_sampling"), *window))
    families.adapter_for(m, "semantic benchmark").install_input_probe(m, probe, keys)
    images = sc.render(ctx, m, noise, texts, chunk=len(texts))  # one call: rows = (cond N, uncond N)
    return probe, images


def as_directions(template, differences: dict):
    """An ATTN_DIRECTIONS on the template's layers holding the (unnormalised) difference d as direction 0."""
    d_mod = sc.pack("sae_math.directions")
    layers = tuple(d_mod.LayerDirections(x.key, x.width, x.level, differences[x.key].norm().reshape(1).float(),
                                         differences[x.key].reshape(1, -1).float()) for x in template.layers)
    return d_mod.AttnDirections(layers, template.model_family, template.model_fingerprint + "+contrast")


def with_value(factors, edit: str, value: str):
    f = list(factors)
    f[FIELD[edit]] = value
    return tuple(f)


def caption_contrast(ctx, template, edit: str, window, cfg) -> tuple[object, dict]:
    world = sc.pure("shapes_world")
    src, tgt = CAPTION_CONTRASTS[edit]
    combos = sc.combos(cfg["calibration"], offset=6000)
    noise = sc.seed_noise(ctx, [s for s, _ in combos])
    a, _ = recorded(ctx, template.keys, [world.caption(*with_value(f, edit, src)) for _, f in combos], noise, window)
    b, _ = recorded(ctx, template.keys, [world.caption(*with_value(f, edit, tgt)) for _, f in combos], noise, window)
    diff = {k: (b.rows(k).mean(0) - a.rows(k).mean(0)) for k in template.keys}
    return as_directions(template, diff), {k: float(diff[k].norm()) / a.token_norm(k) for k in template.keys}


def factor_contrast(ctx, template, factor: str, window, cfg) -> tuple[object, dict]:
    world = sc.pure("shapes_world")
    combos = sc.combos(cfg["factor_calibration"], offset=7000)
    probe, images = recorded(ctx, template.keys, [world.caption(*f) for _, f in combos],
                             sc.seed_noise(ctx, [s for s, _ in combos]), window)
    f = sc.read(images)
    value = np.log(f.h) if factor == "size" else f.cx
    ok = f.found
    lo = ok & (value <= np.quantile(value[ok], 1 / 3))
    hi = ok & (value >= np.quantile(value[ok], 2 / 3))
    n = len(combos)
    diff = {}
    for k in template.keys:
        rows = probe.rows(k)
        per_image = (rows[:n] + rows[n:]) / 2
        diff[k] = per_image[hi].mean(0) - per_image[lo].mean(0)
    return as_directions(template, diff), {k: float(diff[k].norm()) / probe.token_norm(k) for k in template.keys}


def measure(ctx, dirs, edit: str, window, cfg) -> dict:
    """alpha -> metrics on the test seeds (sources captioned with the contrast's source value)."""
    import semantic_directions as sd

    world = sc.pure("shapes_world")
    combos = sc.combos(cfg["test"], offset=8000)
    if edit in CAPTION_CONTRASTS:
        combos = [(s, with_value(f, edit, CAPTION_CONTRASTS[edit][0])) for s, f in combos]
    alphas = (0.0, *cfg["alphas"])
    if edit in FACTOR_CONTRASTS:
        alphas = (*(-a for a in reversed(cfg["alphas"])), *alphas)
    imgs = sd.sweep_images(ctx, dirs, 0, "", alphas, sc.seed_noise(ctx, [s for s, _ in combos]),
                           [world.caption(*f) for _, f in combos], window=window, scale=SCALE)
    base = sc.read(imgs[:, alphas.index(0.0)])
    out = {}
    for j, alpha in enumerate(alphas):
        if alpha == 0.0:
            continue
        got = sc.read(imgs[:, j])
        ch = sc.changes(got, base)
        row = {f: ch[f] for f in ("colour", "shape", "background", "centre", "dx", "dlog_size", "clean")}
        if edit in CAPTION_CONTRASTS:
            target = CAPTION_CONTRASTS[edit][1]
            value = getattr(got, edit)
            row["to_target"] = float(np.mean(value == target))
            row["to_target_and_clean"] = float(np.mean((value == target) & got.clean))
        out[str(alpha)] = row
    return out


def run(ctx, config: str = "full", log=print) -> dict:
    cfg = CONFIGS[config]
    nd = sc.pack("nodes.node_directions")
    template = nd.ComputeAttentionEigendirections.execute(ctx.model, "all", 1).args[0]  # the layers only
    t0 = time.perf_counter()
    result = {"config": config, "counts": cfg, "scale": SCALE, "contrasts": {}}
    for edit in cfg.get("contrasts", (*CAPTION_CONTRASTS, *FACTOR_CONTRASTS)):
        for window in cfg["windows"]:
            build = caption_contrast if edit in CAPTION_CONTRASTS else factor_contrast
            dirs, ratio = build(ctx, template, edit, window, cfg)
            entry = {"window": list(window), "difference_over_token_norm": ratio,
                     "at": measure(ctx, dirs, edit, window, cfg)}
            result["contrasts"].setdefault(edit, []).append(entry)
            log(f"contrast {edit} window {window}: {time.perf_counter() - t0:.0f} s")
    result["wall_seconds"] = time.perf_counter() - t0
    return result


def fmt(x, digits=2):
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def tables(result: dict) -> str:
    lines = ["### Directions from data (mean-input contrasts), every layer, alpha in units of the measured "
             "difference (absolute scale)", "",
             "| contrast | window | alpha | to target | to target and clean | clean | colour / shape / bg changed "
             "| centre shift px | dx px | d log size |", "|---|---|---|---|---|---|---|---|---|---|"]
    for edit, entries in result["contrasts"].items():
        label = " -> ".join(CAPTION_CONTRASTS[edit]) if edit in CAPTION_CONTRASTS else f"{edit} (top - bottom third)"
        for e in entries:
            for alpha, r in e["at"].items():
                lines.append(f"| {label} | {e['window'][0]}-{e['window'][1]} | {alpha} | {fmt(r.get('to_target'))} | "
                             f"{fmt(r.get('to_target_and_clean'))} | {fmt(r['clean'])} | {fmt(r['colour'])} / "
                             f"{fmt(r['shape'])} / {fmt(r['background'])} | {fmt(r['centre'], 1)} | {fmt(r['dx'], 1)} | "
                             f"{fmt(r['dlog_size'])} |")
    return "\n".join(lines)
