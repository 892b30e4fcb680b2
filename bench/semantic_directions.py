"""Method A of the semantic benchmark: do eigendirections of C edit one factor, smoothly, better than random
directions? Measured on the shapes-world demo model through the pack's own nodes (Compute Attention
Eigendirections, Apply Latent Direction with alpha_sweep: a whole sweep with identical noise in one batch).

Stages (counts in CONFIGS; run by bench/semantic.py):
  spread   the attention input's spread along every direction at the window's timesteps (semantic_spread)
  screen   every layer preset x (top-k eigendirections + random unit directions in the same layers) at the
           screen alphas: effect per factor, disentanglement, fidelity, linearity over the screen's points
  sweep    the most disentangled eigendirection of each preset and one random direction, over a wide
           alpha range (until images break): linearity, monotonicity, where fidelity is lost
  window   the best directions with the paper's window 0.5-0.8 against neighbouring windows
Alphas are in the 'relative to token norm' scale (the default the benchmark started from); every table
also gives them in the other scales through the measured token norm and spread."""

from __future__ import annotations

import math
import time

import numpy as np
import semantic_common as sc
import semantic_spread

PRESETS = {  # label -> the Apply node's `layers` subset of the directions computed on every layer
    "middle block": "middle",
    "level 0 (8x8 tokens)": "level:0",
    "level 1 (4x4)": "level:1",
    "level 2 (2x2, with middle)": "level:2",
    "all": "",
}
SCALE = "relative to token norm"
CONFIGS = {
    # The sweep reuses the screen's images of the same direction (same noise), so its alphas are the
    # union of both lists; the window comparison reuses the screen's 0.5-0.8 row.
    "full": {"seeds": 64, "k": 8, "random": 2, "screen_alphas": (-4.0, 4.0),
             "sweep_alphas": (-16.0, -8.0, -2.0, 2.0, 8.0, 16.0),
             "windows": ((0.2, 0.5), (0.8, 1.0), (0.0, 1.0)), "window_directions": 2, "steps_check": True},
    # What a session on a loaded 2-core machine could afford (docs/semantic.md says which numbers are from it).
    "preliminary": {"seeds": 32, "k": 8, "random": 4, "screen_alphas": (-4.0, 4.0), "presets": ("all",),
                    "sweep_alphas": None, "windows": None, "window_directions": 0},
    "quick": {"seeds": 16, "k": 2, "random": 2, "screen_alphas": (-4.0, 4.0), "presets": ("level 0 (8x8 tokens)", "all"),
              "sweep_alphas": None, "windows": None, "window_directions": 0},
}
RANDOM_SEED = 1234


def random_directions(dirs, count: int):
    """An ATTN_DIRECTIONS on the same layers holding `count` seeded random unit vectors per layer (so the
    Apply node treats them exactly as eigendirections)."""
    import torch

    d_mod = sc.pack("sae_math.directions")
    gen = torch.Generator().manual_seed(RANDOM_SEED)
    layers = []
    for layer in dirs.layers:
        v = torch.randn(count, layer.width, generator=gen)
        layers.append(d_mod.LayerDirections(layer.key, layer.width, layer.level, torch.zeros(count),
                                            v / v.norm(dim=1, keepdim=True)))
    return d_mod.AttnDirections(tuple(layers), dirs.model_family, dirs.model_fingerprint + "+random")


def sweep_images(ctx, dirs, index: int, layers: str, alphas, noise, texts, window=(0.5, 0.8), scale=SCALE):
    """(seeds, len(alphas), S, S, 3) images: seed i at alpha j, identical noise along j (one batch
    element per (seed, alpha), alpha_sweep cycling over the batch)."""
    na = sc.pack("nodes.node_apply")
    a = len(alphas)
    model = na.ApplyLatentDirection.execute(ctx.model, dirs, index, 0.0, window[0], window[1], scale, layers,
                                            ", ".join(repr(float(x)) for x in alphas)).args[0]
    chunk = a * max(1, 128 // a)
    imgs = sc.render(ctx, model, noise.repeat_interleave(a, 0), [t for t in texts for _ in range(a)], chunk=chunk)
    return imgs.reshape(len(texts), a, *imgs.shape[1:])


def describe(imgs, alphas, base: sc.Factors, base_imgs, unit) -> dict:
    """Per-alpha factor changes and the direction's summary (see module docstring)."""
    s, a = imgs.shape[:2]
    readings = sc.read(imgs.reshape(s * a, *imgs.shape[2:]))
    per_alpha = []
    values = {k: np.full((s, a), np.nan) for k in ("dx", "dy", "dlog")}
    for j, alpha in enumerate(alphas):
        edit = readings[np.arange(s) * a + j]
        ch = sc.changes(edit, base)
        norm = sc.normalised(ch, unit)
        top, share = sc.disentanglement(norm)
        ch.update(alpha=alpha, normalised=norm, top=top, share=share,
                  bg_psnr=sc.background_psnr(imgs[:, j], base_imgs, base, edit))
        per_alpha.append(ch)
        ok = edit.found & base.found
        values["dx"][ok, j] = (edit.cx - base.cx)[ok]
        values["dy"][ok, j] = (edit.cy - base.cy)[ok]
        values["dlog"][ok, j] = np.log(edit.h / base.h)[ok]
    return {"per_alpha": per_alpha, **linearity(np.asarray(alphas), values, per_alpha)}


def linearity(alphas: np.ndarray, values: dict, per_alpha: list) -> dict:
    """Monotonicity (mean over seeds of |Spearman(alpha, value)|, alpha 0 = the base, value 0) and R^2 of
    the seed-mean value against alpha, for the continuous factors; for the categorical ones, Spearman of
    the share changed against |alpha| (per sign, averaged)."""
    x = np.concatenate([[0.0], alphas])
    out = {}
    for key, v in values.items():
        full = np.concatenate([np.zeros((v.shape[0], 1)), v], axis=1)
        rhos = []
        for row in full:
            ok = np.isfinite(row)
            if ok.sum() >= 3:
                r = sc.spearman(x[ok], row[ok])
                if np.isfinite(r):
                    rhos.append(abs(r))
        mean = np.nanmean(full, axis=0)
        ok = np.isfinite(mean)
        out[key] = {"abs_spearman_per_seed": float(np.mean(rhos)) if rhos else math.nan,
                    "spearman_of_mean": sc.spearman(x[ok], mean[ok]), "r2_of_mean": sc.r_squared(x[ok], mean[ok]),
                    "slope_per_alpha": float(np.polyfit(x[ok], mean[ok], 1)[0]) if ok.sum() >= 2 else math.nan}
    for key in ("colour", "shape", "background"):
        rhos = []
        for sign in (1, -1):
            idx = [j for j, al in enumerate(alphas) if np.sign(al) == sign]
            if len(idx) >= 2:
                xs = np.concatenate([[0.0], np.abs(alphas[idx])])
                ys = np.concatenate([[0.0], [per_alpha[j][key] for j in idx]])
                r = sc.spearman(xs, ys)
                if np.isfinite(r):
                    rhos.append(r)
        out[key] = {"spearman_abs_alpha": float(np.mean(rhos)) if rhos else math.nan}
    return {"linearity": out}


def summary_at(desc: dict, alphas, magnitude: float, unit) -> dict:
    """The direction's effect at +-magnitude: mean normalised change over both signs, top factor, share."""
    rows = [p for p in desc["per_alpha"] if abs(abs(p["alpha"]) - magnitude) < 1e-9]
    norm = {f: float(np.mean([p["normalised"][f] for p in rows])) for f in sc.FACTORS}
    top, share = sc.disentanglement(norm)
    continuous = {"centre": ("dx", "dy"), "size": ("dlog",)}.get(top)
    lin = desc["linearity"]
    if continuous:
        best = max(continuous, key=lambda k: lin[k]["abs_spearman_per_seed"] if np.isfinite(
            lin[k]["abs_spearman_per_seed"]) else -1)
        mono, r2 = lin[best]["abs_spearman_per_seed"], lin[best]["r2_of_mean"]
    else:
        mono, r2 = lin[top]["spearman_abs_alpha"], math.nan
    return {"alpha": magnitude, "normalised": norm, "effect": norm[top], "total": float(sum(norm.values())),
            "top": top, "share": share, "monotonicity": mono, "r2": r2,
            "clean": float(np.mean([p["clean"] for p in rows])), "bg_psnr": float(np.mean([p["bg_psnr"] for p in rows])),
            "centre_px": float(np.mean([p["centre"] for p in rows])),
            "size_ratio": float(np.mean([p["size_ratio_median"] for p in rows]))}


def run(ctx, config: str, log=print, save=None) -> dict:
    """The stages above; save(result) (optional) is called after each stage with the result so far."""
    cfg = CONFIGS[config]
    save = save or (lambda _: None)
    world = sc.pure("shapes_world")
    nd = sc.pack("nodes.node_directions")
    t0 = time.perf_counter()
    combos = sc.combos(cfg["seeds"])
    texts = [world.caption(*c) for _, c in combos]
    noise = sc.seed_noise(ctx, [s for s, _ in combos])
    dirs = nd.ComputeAttentionEigendirections.execute(ctx.model, "all", cfg["k"]).args[0]
    rand = random_directions(dirs, cfg["random"])
    base_imgs = sc.render(ctx, ctx.model, noise, texts)
    base = sc.read(base_imgs)
    unit = sc.random_pair_change(base)
    result = {"config": config, "scale": SCALE, "seeds": cfg["seeds"], "k": cfg["k"], "random": cfg["random"],
              "steps": ctx.steps, "cfg": sc.CFG, "base": {"clean": float(base.clean.mean()), "found": float(base.found.mean())},
              "unit": unit, "eigenvalues": {x.key: x.values.tolist() for x in dirs.layers}}
    log(f"[A] base: {len(base)} images, clean {base.clean.mean():.3f} ({time.perf_counter() - t0:.0f} s)")

    # Spread along every direction (eigen and random), per layer, at the window's timesteps.
    import torch

    probe_dirs = {x.key: torch.cat([x.vectors.float(), rand.layer(x.key).vectors.float()]) for x in dirs.layers}
    spread = semantic_spread.measure(ctx, probe_dirs, noise, texts)
    result["spread"] = spread
    log(f"[A] spread measured ({time.perf_counter() - t0:.0f} s)")

    presets = cfg.get("presets") or tuple(PRESETS)
    screen, screen_imgs = {}, {}
    for label in presets:
        layers = PRESETS[label]
        entries = []
        for kind, source, count in (("eigen", dirs, cfg["k"]), ("random", rand, cfg["random"])):
            for index in range(count):
                imgs = sweep_images(ctx, source, index, layers, cfg["screen_alphas"], noise, texts)
                screen_imgs[(label, kind, index)] = imgs
                desc = describe(imgs, cfg["screen_alphas"], base, base_imgs, unit)
                mags = sorted({abs(a) for a in cfg["screen_alphas"]})
                entries.append({"kind": kind, "index": index, "describe": desc,
                                "at": {str(m): summary_at(desc, cfg["screen_alphas"], m, unit) for m in mags},
                                "scale_factors": scale_factors(spread, source, layers, index, kind, cfg["k"])})
        screen[label] = entries
        log(f"[A] screen {label}: {len(entries)} directions ({time.perf_counter() - t0:.0f} s)")
    result["screen"] = screen
    save(result)

    if cfg["sweep_alphas"]:
        top_mag = str(max(abs(a) for a in cfg["screen_alphas"]))
        sweeps = {}
        for label in presets:
            eig = [e for e in screen[label] if e["kind"] == "eigen"]
            best = max(eig, key=lambda e: e["at"][top_mag]["effect"] * e["at"][top_mag]["share"])
            out = {}
            for kind, source, index in (("eigen", dirs, best["index"]), ("random", rand, 0)):
                extra = sweep_images(ctx, source, index, PRESETS[label], cfg["sweep_alphas"], noise, texts)
                alphas = tuple(cfg["sweep_alphas"]) + tuple(cfg["screen_alphas"])
                imgs = np.concatenate([extra, screen_imgs[(label, kind, index)]], axis=1)
                order = np.argsort(alphas)
                alphas = tuple(float(alphas[i]) for i in order)
                desc = describe(imgs[:, order], alphas, base, base_imgs, unit)
                out[kind] = {"index": index, "alphas": alphas, "describe": desc, "break": break_alpha(desc, base),
                             "scale_factors": scale_factors(spread, source, PRESETS[label], index, kind, cfg["k"])}
            sweeps[label] = out
            log(f"[A] sweep {label}: eigen {best['index']} ({time.perf_counter() - t0:.0f} s)")
        result["sweep"] = sweeps
        save(result)
    del screen_imgs

    if cfg["windows"]:
        top_mag = max(abs(a) for a in cfg["screen_alphas"])
        candidates = [(label, e) for label in presets for e in screen[label] if e["kind"] == "eigen"]
        candidates.sort(key=lambda le: -le[1]["at"][str(top_mag)]["effect"] * le[1]["at"][str(top_mag)]["share"])
        windows = []
        for label, e in candidates[:cfg["window_directions"]]:
            rows = {"0.5-0.8": e["at"][str(top_mag)]}
            for window in cfg["windows"]:
                alphas = (-top_mag, top_mag)
                imgs = sweep_images(ctx, dirs, e["index"], PRESETS[label], alphas, noise, texts, window=window)
                desc = describe(imgs, alphas, base, base_imgs, unit)
                rows[f"{window[0]}-{window[1]}"] = summary_at(desc, alphas, top_mag, unit)
            windows.append({"preset": label, "index": e["index"], "alpha": top_mag, "windows": rows})
            log(f"[A] windows {label} #{e['index']} ({time.perf_counter() - t0:.0f} s)")
        result["windows"] = windows
        save(result)
    if cfg.get("steps_check"):
        result["steps_check"] = steps_check(ctx, result, dirs, noise, texts, base, base_imgs, unit)
        log(f"[A] steps check ({time.perf_counter() - t0:.0f} s)")
    result["scales"] = scale_analysis(result)
    result["seconds"] = time.perf_counter() - t0
    return result


def steps_check(ctx, result, dirs, noise, texts, base, base_imgs, unit) -> dict:
    """The benchmark's step count against the model's documented 20: base generations of the same seeds
    read back alike (factors, centre, size), and the screen's best direction moves the same factor by a
    similar amount at +-the screen's alpha."""
    mag = max(abs(a) for a in CONFIGS[result["config"]]["screen_alphas"])
    label, e = max(((label, e) for label, entries in result["screen"].items() for e in entries if e["kind"] == "eigen"),
                   key=lambda le: le[1]["at"][str(mag)]["effect"] * le[1]["at"][str(mag)]["share"])
    steps = ctx.steps
    try:
        ctx.steps = sc.REFERENCE_STEPS
        ref_imgs = sc.render(ctx, ctx.model, noise, texts)
        ref = sc.read(ref_imgs)
        ref_unit = sc.random_pair_change(ref)
        alphas = (-mag, mag)
        imgs = sweep_images(ctx, dirs, e["index"], PRESETS[label], alphas, noise, texts)
        ref_edit = summary_at(describe(imgs, alphas, ref, ref_imgs, ref_unit), alphas, mag, ref_unit)
    finally:
        ctx.steps = steps
    both = ref.found & base.found
    return {"steps": steps, "reference_steps": sc.REFERENCE_STEPS,
            "same_colour": float(np.mean(ref.colour == base.colour)), "same_shape": float(np.mean(ref.shape == base.shape)),
            "same_background": float(np.mean(ref.background == base.background)),
            "centre_px_median": float(np.median(np.hypot(ref.cx - base.cx, ref.cy - base.cy)[both])),
            "size_ratio_median": float(np.median((base.h / ref.h)[both])),
            "clean": float(base.clean.mean()), "clean_reference": float(ref.clean.mean()),
            "direction": {"preset": label, "index": e["index"], "alpha": mag, "at_steps": e["at"][str(mag)],
                          "at_reference_steps": ref_edit}}


def scale_factors(spread: dict, source, layers: str, index: int, kind: str, k: int) -> dict:
    """How one unit of alpha in the token-norm scale reads in the other scales, for this direction on the
    preset's layers (geometric mean over layers): absolute = alpha * token_norm; spread = alpha *
    token_norm / row_rms (row_rms: the per-row RMS along n the 'spread' scale multiplies by)."""
    keys = [x.key for x in source.layers]
    if layers:
        layer_infos = [sc.pack("sae_math.layers").LayerInfo(x.key, "", x.width, x.level) for x in source.layers]
        keys = [x.key for x in sc.pack("sae_math.layers").select_layers(layer_infos, "custom list", layers)]
    column = index if kind == "eigen" else k + index
    tn = np.array([spread[key]["token_norm"] for key in keys])
    rms = np.array([spread[key]["row_rms"][column] for key in keys])
    std = np.array([spread[key]["std"][column] for key in keys])
    gm = lambda v: float(np.exp(np.mean(np.log(v))))  # noqa: E731
    return {"token_norm": gm(tn), "row_rms": gm(rms), "std": gm(std), "absolute_per_unit": gm(tn),
            "spread_per_unit": gm(tn / rms), "layers": keys}


def scale_analysis(result: dict) -> dict:
    """Which alpha scale makes one number mean the same edit size everywhere? For every screened direction:
    the edit size per unit alpha (total normalised change at the screen's largest |alpha|, divided by
    that alpha expressed in each scale), and for every swept direction the |alpha| where fidelity breaks,
    in each scale. The spread of their logarithms across directions and presets (a factor: exp(std)) is
    how far one UI range misfits some layer; smaller is better."""
    mag = max(abs(a) for a in CONFIGS[result["config"]]["screen_alphas"])
    per_unit = {"token_norm": [], "absolute": [], "spread": []}
    for entries in result["screen"].values():
        for e in entries:
            total = e["at"][str(mag)]["total"]
            if total <= 0:
                continue
            f = e["scale_factors"]
            per_unit["token_norm"].append(total / mag)
            per_unit["absolute"].append(total / (mag * f["absolute_per_unit"]))
            per_unit["spread"].append(total / (mag * f["spread_per_unit"]))
    breaks = {"token_norm": [], "absolute": [], "spread": []}
    for kinds in (result.get("sweep") or {}).values():
        for d in kinds.values():
            for sign in ("negative", "positive"):
                b = d["break"][sign]
                if b is not None:
                    f = d["scale_factors"]
                    breaks["token_norm"].append(b)
                    breaks["absolute"].append(b * f["absolute_per_unit"])
                    breaks["spread"].append(b * f["spread_per_unit"])

    def spread_factor(v):
        return float(np.exp(np.std(np.log(v)))) if len(v) >= 2 else math.nan

    return {scale: {"edit_per_unit_median": float(np.median(per_unit[scale])) if per_unit[scale] else math.nan,
                    "edit_per_unit_spread_factor": spread_factor(per_unit[scale]),
                    "break_alpha_median": float(np.median(breaks[scale])) if breaks[scale] else math.nan,
                    "break_alpha_min": float(np.min(breaks[scale])) if breaks[scale] else math.nan,
                    "break_alpha_spread_factor": spread_factor(breaks[scale]), "breaks": len(breaks[scale])}
            for scale in per_unit}


def break_alpha(desc: dict, base: sc.Factors) -> dict:
    """Per sign, the smallest |alpha| at which fidelity is lost: clean below 80% of the base's clean share
    (or under half of the images with one shape); None when it holds over the whole sweep."""
    out = {}
    for sign, name in ((1, "positive"), (-1, "negative")):
        rows = sorted((p for p in desc["per_alpha"] if np.sign(p["alpha"]) == sign), key=lambda p: abs(p["alpha"]))
        broken = [abs(p["alpha"]) for p in rows if p["clean"] < 0.8 * base.clean.mean() or p["found"] < 0.5]
        out[name] = broken[0] if broken else None
    return out


# ---------------------------------------------------------------------------------------------------
# Tables

def fmt(x, digits=2):
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "-"
    return f"{x:.{digits}f}"


def tables(result: dict) -> str:
    out = []
    mags = sorted({abs(a) for a in CONFIGS[result["config"]]["screen_alphas"]})
    m = str(mags[-1])
    out.append(f"### Method A: screen at alpha = +-{m} x token norm ({result['seeds']} seeds, {result['steps']} steps)\n")
    out.append("Normalised change: 1 = as different as two independent generations. share: the top factor's share "
               "of the summed normalised change (disentanglement). mono: |Spearman| of the top factor with alpha "
               "(per seed, continuous) or of the share changed with |alpha| (categorical).\n")
    rows = []
    for label, entries in result["screen"].items():
        for e in entries:
            s = e["at"][m]
            n = s["normalised"]
            rows.append([label, f"{e['kind']} {e['index']}", s["top"], fmt(s["effect"]), fmt(s["share"]),
                         fmt(n["colour"]), fmt(n["shape"]), fmt(n["background"]), fmt(s["centre_px"], 1),
                         fmt(s["size_ratio"], 3), fmt(s["monotonicity"]), fmt(s["r2"]), fmt(s["clean"]),
                         fmt(s["bg_psnr"], 1)])
    out.append(sc_md(["preset", "direction", "top factor", "effect", "share", "colour", "shape", "background",
                      "centre px", "size ratio", "mono", "R^2", "clean", "bg PSNR"], rows))
    out.append("\n**Eigen vs random** (mean over directions of the effect of its top factor and of the total "
               "normalised change):\n")
    rows = []
    for label, entries in result["screen"].items():
        for mag in mags:
            eig = [e["at"][str(mag)] for e in entries if e["kind"] == "eigen"]
            ran = [e["at"][str(mag)] for e in entries if e["kind"] == "random"]
            rows.append([label, mag, fmt(np.mean([x["effect"] for x in eig])), fmt(max(x["effect"] for x in eig)),
                         fmt(np.mean([x["effect"] for x in ran])), fmt(max(x["effect"] for x in ran)),
                         fmt(np.mean([x["share"] for x in eig])), fmt(np.mean([x["share"] for x in ran])),
                         fmt(np.mean([x["clean"] for x in eig])), fmt(np.mean([x["clean"] for x in ran]))])
    out.append(sc_md(["preset", "|alpha|", "eigen effect mean", "eigen max", "random mean", "random max",
                      "eigen share", "random share", "eigen clean", "random clean"], rows))
    if "sweep" in result:
        out.append("\n### Sweep of the most disentangled eigendirection per preset, and a random one\n")
        rows = []
        for label, kinds in result["sweep"].items():
            for kind, d in kinds.items():
                per = {p["alpha"]: p for p in d["describe"]["per_alpha"]}
                top_curve = " ".join(f"{a:g}:{max(p['normalised'].values()):.2f}/{p['clean']:.2f}" for a, p in per.items())
                lin = d["describe"]["linearity"]
                rows.append([label, f"{kind} {d['index']}", d["break"]["negative"], d["break"]["positive"],
                             fmt(d["scale_factors"]["absolute_per_unit"]), fmt(d["scale_factors"]["spread_per_unit"]),
                             fmt(lin["dx"]["abs_spearman_per_seed"]), fmt(lin["dy"]["abs_spearman_per_seed"]),
                             fmt(lin["dlog"]["abs_spearman_per_seed"]), fmt(lin["dlog"]["r2_of_mean"]), top_curve])
        out.append(sc_md(["preset", "direction", "breaks at -", "breaks at +", "abs per unit", "spread per unit",
                          "mono dx", "mono dy", "mono size", "R^2 size", "alpha: max normalised change / clean"], rows))
    if "windows" in result:
        out.append("\n### Window comparison (top factor's normalised change / share / clean / bg PSNR)\n")
        rows = []
        for w in result["windows"]:
            for name, s in w["windows"].items():
                rows.append([w["preset"], w["index"], name, s["top"], fmt(s["effect"]), fmt(s["share"]),
                             fmt(s["clean"]), fmt(s["bg_psnr"], 1)])
        out.append(sc_md(["preset", "direction", "window", "top factor", "effect", "share", "clean", "bg PSNR"], rows))
    if "steps_check" in result:
        c = result["steps_check"]
        d = c["direction"]
        out.append(f"\n### {c['steps']} against {c['reference_steps']} steps (same seeds)\n")
        out.append(f"same colour / shape / background {c['same_colour']:.3f} / {c['same_shape']:.3f} / "
                   f"{c['same_background']:.3f}; centre {c['centre_px_median']:.2f} px apart (median), size ratio "
                   f"{c['size_ratio_median']:.3f}; clean {c['clean']:.3f} vs {c['clean_reference']:.3f}. "
                   f"{d['preset']} #{d['index']} at +-{d['alpha']}: moves {d['at_steps']['top']} by "
                   f"{d['at_steps']['effect']:.2f} (share {d['at_steps']['share']:.2f}) at {c['steps']} steps, "
                   f"{d['at_reference_steps']['top']} by {d['at_reference_steps']['effect']:.2f} (share "
                   f"{d['at_reference_steps']['share']:.2f}) at {c['reference_steps']}.\n")
    out.append("\n### Alpha's scale: edit size per unit alpha and where images break, in each scale\n")
    rows = [[name, fmt(v["edit_per_unit_median"], 4), fmt(v["edit_per_unit_spread_factor"]),
             fmt(v["break_alpha_median"]), fmt(v["break_alpha_min"]), fmt(v["break_alpha_spread_factor"]), v["breaks"]]
            for name, v in result["scales"].items()]
    out.append(sc_md(["scale", "edit per unit alpha (median)", "x spread across directions", "break |alpha| median",
                      "break min", "x spread across presets", "breaks seen"], rows))
    out.append("\n### Spread of the attention input at the window's timesteps (per layer)\n")
    rows = []
    k = result["k"]
    for key, s in result["spread"].items():
        rows.append([key, fmt(s["token_norm"]), fmt(np.mean(s["row_rms"][:k])), fmt(min(s["row_rms"][:k])),
                     fmt(max(s["row_rms"][:k])), fmt(np.mean(s["row_rms"][k:])), fmt(np.mean(s["std"][:k])),
                     fmt(s["token_norm"] / np.mean(s["row_rms"][:k]))])
    out.append(sc_md(["layer", "token norm", "RMS along eigen n (mean)", "min", "max", "RMS along random n",
                      "std along eigen n", "token norm / RMS"], rows))
    return "\n".join(out)


def sc_md(headers, rows):
    from _common import md_table

    return md_table(headers, rows)
