"""The semantic benchmark's quick variant as a regression test (bench/semantic.py --quick; the full
measurement and its tables: docs/semantic.md): on the embedded demo model, the two methods must still do
what the benchmark measured them doing, by margins a broken method (no swap, a swap on the wrong rows, an
edit that does not reach the attention input, a direction no better than noise) would not clear.

Counts are the quick variant's (bench/semantic_directions.CONFIGS / semantic_swap.CONFIGS "quick"):
16 seeds, 20 euler steps, cfg 5; about 150 generations in all."""

from __future__ import annotations

import sys

import numpy as np
import pytest

import testbed

sys.path.insert(0, str(testbed.REPO / "bench"))
import semantic_common as sc  # noqa: E402
import semantic_directions as sd  # noqa: E402
import semantic_swap as ss  # noqa: E402

world = testbed.load_pure("shapes_world")


@pytest.fixture(scope="module")
def ctx(sae):
    node = sae("nodes.node_demo_model")
    model, clip, vae = node.LoadShapesDemoModel.execute(node.EMBEDDED).args
    return sc.Ctx(model, clip, vae, 64, "embedded")


@pytest.fixture(scope="module")
def swap_run(ctx):
    cfg = ss.CONFIGS["quick"]
    return ss.generated(ctx, cfg, lambda *_: None, 0.0)["colour"]


def test_swap_keeps_the_layout_where_a_plain_prompt_edit_does_not(swap_run):
    """A colour edit (red -> green, ...) of 16 generated pairs with the default swap keeps the shape where
    the source drew it; without the swap the same noise and target prompt put it elsewhere.
    THRESHOLDS_SWAP_LAYOUT"""
    plain, swap = swap_run["no swap"], swap_run[f"{ss.DEFAULT[0]}, end {ss.DEFAULT[1]}"]
    assert swap["centre_px_median"] <= SWAP_CENTRE_MAX, swap
    assert swap["within_2px"] >= SWAP_WITHIN_2PX_MIN, swap
    assert plain["centre_px_median"] >= PLAIN_CENTRE_MIN, plain


def test_swap_edits_the_target_and_leaves_the_source_untouched(swap_run):
    """The swapped targets show the target prompt's colour, and the sources are the images the model draws
    without the swap (the swap only changes target rows). THRESHOLDS_SWAP_EDIT"""
    swap = swap_run[f"{ss.DEFAULT[0]}, end {ss.DEFAULT[1]}"]
    assert swap["edit_success"] >= SWAP_SUCCESS_MIN, swap
    assert swap["source_psnr_vs_no_swap"] >= 40.0, swap


def test_a_top_eigendirection_moves_its_factor_more_than_random_directions(ctx):
    """THRESHOLDS_DIRECTION"""
    combos = sc.combos(16)
    texts = [world.caption(*c) for _, c in combos]
    noise = sc.seed_noise(ctx, [s for s, _ in combos])
    nd = testbed.pack_module("nodes.node_directions")
    dirs = nd.ComputeAttentionEigendirections.execute(ctx.model, "all", DIRECTION_INDEX + 1).args[0]
    rand = sd.random_directions(dirs, 2)
    base_imgs = sc.render(ctx, ctx.model, noise, texts)
    base = sc.read(base_imgs)
    unit = sc.random_pair_change(base)
    alphas = (-DIRECTION_ALPHA, DIRECTION_ALPHA)

    def effect(source, index):
        imgs = sd.sweep_images(ctx, source, index, sd.PRESETS[DIRECTION_PRESET], alphas, noise, texts)
        return sd.summary_at(sd.describe(imgs, alphas, base, base_imgs, unit), alphas, DIRECTION_ALPHA, unit)

    top = effect(dirs, DIRECTION_INDEX)
    randoms = [effect(rand, i) for i in range(2)]
    assert top["top"] == DIRECTION_FACTOR, top
    moved = top["normalised"][DIRECTION_FACTOR]
    assert moved >= DIRECTION_EFFECT_MIN, top
    assert moved >= DIRECTION_RATIO_MIN * max(r["normalised"][DIRECTION_FACTOR] for r in randoms), (top, randoms)
    assert np.isfinite(top["share"]) and top["share"] >= DIRECTION_SHARE_MIN, top
