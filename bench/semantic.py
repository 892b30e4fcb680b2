"""The semantic benchmark (issue 12): do the two editing methods do what their papers say, on the
shapes-world demo model whose every factor the analyser reads back? Method A (eigendirections of C,
bench/semantic_directions.py) and Method B (Self-Attention Swap, bench/semantic_swap.py); the remedy the
Method A numbers pointed to, directions from data (mean-input contrasts, bench/semantic_contrast.py); and the
demo workflows' single-edit settings (bench/semantic_demo.py).

Deterministic (fixed seeds, noise and captions), batched (a whole alpha sweep, or all pairs of a setting,
in one latent batch), through the pack's own nodes and ComfyUI's own sampling. Writes JSON to
bench/results/semantic_directions.json, semantic_swap.json, semantic_contrast.json, semantic_demo.json
(`--quick`: semantic_quick_*.json), markdown tables to stdout, and with --figures docs/semantic-directions.png
and docs/semantic-swap.png.

    eval "$(scripts/bootstrap.sh)"; $SAE_VENV/bin/python bench/semantic.py [--quick] [--checkpoint FILE]
        [--only directions|swap|contrast|demo] [--figures] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import semantic_common as sc  # noqa: E402
import semantic_contrast  # noqa: E402
import semantic_demo  # noqa: E402
import semantic_directions  # noqa: E402
import semantic_swap  # noqa: E402

RESULTS = HERE / "results"
DOCS = HERE.parent / "docs"


def log(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def direction_figure(ctx, result: dict, path: Path, scale: str, alphas, count: int = 4, seeds: int = 2) -> list:
    """Figure 3 of the paper on the demo model: rows = the `count` most disentangled eigendirections of the
    screen (distinct top factors first), `seeds` generations each, columns = alphas in `scale`; each row
    labelled with the preset, index and the factor it moves."""
    import numpy as np

    world = sc.pure("shapes_world")
    nd = sc.pack("nodes.node_directions")
    dirs = nd.ComputeAttentionEigendirections.execute(ctx.model, "all", result["k"]).args[0]
    mag = str(max(abs(a) for a in semantic_directions.CONFIGS[result["config"]]["screen_alphas"]))
    ranked = sorted(((e["at"][mag]["effect"] * e["at"][mag]["share"], label, e) for label, entries in
                     result["screen"].items() for e in entries if e["kind"] == "eigen"), key=lambda x: -x[0])
    chosen, seen = [], set()
    for pass_ in (0, 1):  # distinct top factors first, then the next best
        for _score, label, e in ranked:
            key = (label, e["index"])
            if len(chosen) < count and key not in {(c[0], c[1]["index"]) for c in chosen} and \
                    (pass_ or e["at"][mag]["top"] not in seen):
                chosen.append((label, e))
                seen.add(e["at"][mag]["top"])
    combos = sc.combos(seeds, offset=500)
    rows, labels, meta = [], [], []
    for label, e in chosen:
        noise = sc.seed_noise(ctx, [s for s, _ in combos])
        imgs = semantic_directions.sweep_images(ctx, dirs, e["index"], semantic_directions.PRESETS[label], alphas,
                                                noise, [world.caption(*c) for _, c in combos], scale=scale)
        top = e["at"][mag]["top"]
        for i in range(seeds):
            rows.append(imgs[i])
            labels.append(f"{label.split(' (')[0]} #{e['index']}\nmoves: {top}\n"
                          f"share {e['at'][mag]['share']:.2f}" if i == 0 else "")
        meta.append({"preset": label, "index": e["index"], "top": top, "share": e["at"][mag]["share"]})
    sc.save_grid(rows, labels, path, header=[f"{a:+.2f}" for a in alphas], scale=1, label_width=112)
    del np
    return meta


def swap_figure(ctx, path: Path, pairs: int = 6) -> None:
    """Source, target without the swap, target with the default swap, for a few pairs of each edit."""
    import numpy as np

    world = sc.pure("shapes_world")
    rows, labels = [], []
    for e_i, edit in enumerate(semantic_swap.EDITS):
        combos = sc.combos(pairs, offset=1000 * (e_i + 1))
        targets = [semantic_swap.target_of(c, edit) for _, c in combos]
        texts = [t for (_, c), tg in zip(combos, targets) for t in (world.caption(*c), world.caption(*tg))]
        noise = sc.seed_noise(ctx, [s for s, _ in combos]).repeat_interleave(2, 0)
        plain = sc.render(ctx, ctx.model, noise, texts)
        swap = sc.render(ctx, semantic_swap.swapped(ctx, *semantic_swap.DEFAULT), noise, texts)
        for name, imgs in (("source", plain[0::2]), ("target, no swap", plain[1::2]), ("target, swap", swap[1::2])):
            rows.append(imgs)
            labels.append(f"{edit}: {name}")
    sc.save_grid(rows, labels, path, label_width=150)
    del np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", type=Path, default=None, help="a demo-format file (default: the embedded one)")
    ap.add_argument("--quick", action="store_true", help="the CI-sized variant (tests/test_semantic.py)")
    ap.add_argument("--config", choices=("full", "preliminary", "quick"), default=None,
                    help="counts (semantic_directions.CONFIGS); --quick is --config quick")
    ap.add_argument("--only", choices=("directions", "swap", "contrast", "demo"), default=None)
    ap.add_argument("--figures", action="store_true", help="write docs/semantic-directions.png and -swap.png")
    ap.add_argument("--figure-scale", default=None, help="alpha_scale of the direction figure (default: the "
                                                          "node's default)")
    ap.add_argument("--figure-alphas", default="-0.4,-0.3,-0.2,-0.1,0,0.1,0.2,0.3,0.4")
    ap.add_argument("--figures-only", action="store_true",
                    help="render the figures from the stored results (bench/results/semantic_directions.json) "
                         "without rerunning the measurements")
    ap.add_argument("--steps", type=int, default=sc.STEPS)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out-dir", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(message)s")
    t0 = time.perf_counter()
    ctx = sc.setup(args.checkpoint, args.threads)
    ctx.steps = args.steps
    config = args.config or ("quick" if args.quick else "full")
    from _common import machine

    common = {"checkpoint": ctx.checkpoint, "machine": machine()}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    if args.figures_only:
        name = "semantic_directions.json" if config == "full" else f"semantic_{config}_directions.json"
        stored = json.loads((args.out_dir / name).read_text())
        scale = args.figure_scale or sc.pack("sae_math.direction_math").SCALES[0]
        alphas = [float(a) for a in args.figure_alphas.split(",")]
        stored["figure"] = {"scale": scale, "alphas": alphas, "rows": direction_figure(
            ctx, stored, DOCS / "semantic-directions.png", scale, alphas, seeds=1)}
        (args.out_dir / name).write_text(json.dumps(sc.rounded(stored), indent=1) + "\n")
        swap_figure(ctx, DOCS / "semantic-swap.png")
        log(f"figures written ({time.perf_counter() - t0:.0f} s)")
        return 0
    results = {}
    if args.only in (None, "directions"):
        partial = args.out_dir / f"semantic{'' if config == 'full' else '_' + config}_directions.partial.json"

        def save(result):  # a long run leaves its finished stages behind
            partial.write_text(json.dumps(sc.rounded({**common, **result}), indent=1) + "\n")

        results["directions"] = {**common, **semantic_directions.run(ctx, config, log, save)}
        save(results["directions"])  # kept until the whole run is written (a later stage may fail)
        sys.stdout.write(semantic_directions.tables(results["directions"]) + "\n\n")
    if args.only in (None, "swap"):
        results["swap"] = {**common, **semantic_swap.run(ctx, config, log)}
        sys.stdout.write(semantic_swap.tables(results["swap"]) + "\n\n")
    if args.only == "contrast" or (args.only is None and config in semantic_contrast.CONFIGS):
        results["contrast"] = {**common, **semantic_contrast.run(ctx, config, log)}
        sys.stdout.write(semantic_contrast.tables(results["contrast"]) + "\n\n")
    if args.only == "demo" or (args.only is None and config in semantic_demo.CONFIGS):
        results["demo"] = {**common, **semantic_demo.run(ctx, config, log)}
        sys.stdout.write(semantic_demo.tables(results["demo"]) + "\n\n")
    if args.figures and "directions" in results:
        scale = args.figure_scale or sc.pack("sae_math.direction_math").SCALES[0]
        alphas = [float(a) for a in args.figure_alphas.split(",")]
        results["directions"]["figure"] = {"scale": scale, "alphas": alphas, "rows": direction_figure(
            ctx, results["directions"], DOCS / "semantic-directions.png", scale, alphas)}
    if args.figures and "swap" in results:
        swap_figure(ctx, DOCS / "semantic-swap.png")
    for name, result in results.items():
        result["wall_seconds_total"] = time.perf_counter() - t0
        target = args.out_dir / (f"semantic_{name}.json" if config == "full" else f"semantic_{config}_{name}.json")
        target.write_text(json.dumps(sc.rounded(result), indent=1) + "\n")
        log(f"wrote {target}")
    if args.only in (None, "directions"):
        partial.unlink(missing_ok=True)
    log(f"total {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
