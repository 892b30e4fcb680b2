"""The semantic benchmark's quick variant as a regression test (bench/semantic.py --quick; the full
measurement and its tables: docs/semantic.md): on the embedded demo model, the two methods must still do
what the benchmark measured them doing, by margins a broken method (no swap, a swap on the wrong rows, an
edit that does not reach the attention input, a direction no better than noise) would not clear.

Counts are the quick variant's (bench/semantic_directions.CONFIGS / semantic_swap.CONFIGS "quick"):
16 seeds, 10 euler steps, cfg 5; 176 generations in all. The thresholds come from the quick variant's
measurement on this machine (bench/results/semantic_quick_*.json; the same seeds, so the same numbers up
to float differences between CPUs), with margin."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

import testbed

sys.path.insert(0, str(testbed.REPO / "bench"))
import semantic_common as sc  # noqa: E402
import semantic_directions as sd  # noqa: E402
import semantic_swap as ss  # noqa: E402

from sae_math import shapes_world as world  # noqa: E402


@pytest.fixture(scope="module")
def ctx(sae):
    node = sae("nodes.node_demo_model")
    model, clip, vae = node.LoadShapesDemoModel.execute(node.EMBEDDED).args
    return sc.Ctx(model, clip, vae, 64, "embedded")


@pytest.fixture(scope="module")
def swap_run(ctx):
    cfg = ss.CONFIGS["quick"]
    return ss.generated(ctx, cfg, lambda *_: None, 0.0)["colour"]


ALL = "all, end 0.8"


def test_swap_on_every_layer_moves_the_target_towards_the_source_layout(swap_run):
    """A colour edit (red -> green, ...) of 16 generated pairs: with the swap on every self-attention layer
    (end 0.8) the target's shape lands nearer the source's than without the swap (median centre distance
    <= 0.85 x the plain edit's; measured 0.70 x on 32 pairs: 10.5 px against 15.0 px). On this 64 px model
    the FPE default layers (levels 1-2, maps of 16 and 4 tokens) keep almost nothing of the layout (14.6 px,
    docs/semantic.md), so the test holds the setting that measurably works; a swap that does not reach the
    target rows, or swaps the wrong rows, lands at the plain edit's distance."""
    plain, swap = swap_run["no swap"], swap_run[ALL]
    assert swap["centre_px_median"] <= 0.85 * plain["centre_px_median"], (swap, plain)


def test_swap_edits_the_target_and_leaves_the_source_untouched(swap_run):
    """The swapped targets show the target prompt's colour (>= 90%, measured 97-100% on 32 pairs), and the
    sources are exactly the images the model draws without the swap (measured bit-identical; >= 40 dB)."""
    for name in (f"{ss.DEFAULT[0]}, end {ss.DEFAULT[1]}", ALL):
        swap = swap_run[name]
        assert swap["edit_success"] >= 0.9, (name, swap)
        assert swap["source_psnr_vs_no_swap"] >= 40.0, (name, swap)


# The direction the full screen (64 seeds, UNet step 20,000) found moving one factor most: all layers,
# eigendirection 5, size (effect 1.63 against 1.24 / 0.97 for the two random directions, share 0.66).
DIRECTION_PRESET, DIRECTION_INDEX, DIRECTION_ALPHA, DIRECTION_FACTOR = "all", 5, 4.0, "size"
DIRECTION_EFFECT_MIN = 0.8  # measured 1.54 on these 16 seeds (normalised change of the size; 1 = two unrelated images)
DIRECTION_RATIO_MIN = 1.1  # measured 1.54 / 0.92 = 1.66 against the larger of two random directions
DIRECTION_SHARE_MIN = 0.6  # measured 0.79


def test_a_top_eigendirection_moves_its_factor_more_than_random_directions(ctx, record_property):
    """Eigendirection 5 of every layer (the full screen's most effective one) at alpha = +-4 x token norm
    (16 seeds, identical noise per seed) changes the shape's size (normalised change >= 0.8, measured 1.54),
    mostly the size (share >= 0.6, measured 0.79), and more than either of two random unit directions in the
    same layers at the same alpha (>= 1.1 x, measured 1.66 x; a direction no better than noise lands near 1,
    an edit that does not reach the attention input near 0). The full benchmark's verdict on eigen vs random
    is in docs/semantic.md: eigendirections move more on average (1.37 vs 1.11), not more selectively, and
    not at all better on level 0 alone; some (eigen 1: 1.09) move less than a random one."""
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
    record_property("top_direction", {"eigen": moved, "share": top["share"],
                                      "random": [r["normalised"][DIRECTION_FACTOR] for r in randoms]})


def test_a_data_direction_is_the_mean_input_difference_of_two_captions_and_reaches_the_input(ctx, sae):
    """The data-direction contrast of the benchmark (bench/semantic_contrast.py, docs/semantic.md: the remedy
    measured and not shipped): per layer, its direction is exactly the difference of the mean attn1 input
    under the target caption and under the source caption, as the test's own forward pre-hooks record it
    over every model call (8 seeds, white -> black background, window 0-1; rel 1e-4); and applied at
    4 x that difference over the whole run it turns white backgrounds black in >= 75% of 8 other seeds
    (measured 100% on 32; it breaks the shape while doing so, which is why it is not shipped). A
    direction of the wrong sign, on the wrong rows or not reaching the attention input leaves them white."""
    import semantic_contrast as contrast

    cfg = contrast.CONFIGS["test"]
    window = cfg["windows"][0]
    adapter = sae("sae_patches.families").adapter_for(ctx.model, "test")
    template = testbed.pack_module("nodes.node_directions").ComputeAttentionEigendirections.execute(
        ctx.model, "all", 1).args[0]
    unet = ctx.model.model.diffusion_model
    seen = {x.key: [] for x in adapter.layers()}
    handles = [unet.get_submodule(f"{x.module_path}.attn1").register_forward_pre_hook(
        lambda _m, args, key=x.key: seen[key].append(args[0].detach().double().mean(dim=(0, 1))))
        for x in adapter.layers()]
    try:
        dirs, _ratio = contrast.caption_contrast(ctx, template, "background", window, cfg)
    finally:
        for h in handles:
            h.remove()
    for layer in dirs.layers:
        calls = torch.stack(seen[layer.key])  # (2 x calls per run, d): the source run, then the target run
        assert len(calls) == 2 * ctx.steps, (layer.key, len(calls))
        expected = calls[ctx.steps:].mean(0) - calls[:ctx.steps].mean(0)
        got = layer.vectors[0].double()
        assert torch.allclose(got, expected, rtol=1e-4, atol=1e-4 * float(expected.norm())), layer.key
    at = contrast.measure(ctx, dirs, "background", window, cfg)[str(cfg["alphas"][0])]
    assert at["to_target"] >= 0.75, at
