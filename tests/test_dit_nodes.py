"""Method B on diffusion transformers through the nodes: "Self-Attention Swap" and "Invert Latent" on tiny
DiTs built from ComfyUI's own classes (tests/dit_testbed.py), sampled by ComfyUI's own samplers and its
KSamplerAdvanced node. The swap's math and hooks are checked in test_dit_swap.py; here the same checks run
on the model the node returns, so the node's wiring (adapter.install_swap) is what is tested.

Families: every test-bed family whose adapter (sae_patches.families) does the swap; a family without one
yet is skipped with that reason, so adapters added later are covered without editing this file."""

from __future__ import annotations

import pytest
import test_dit_swap as dsw
import torch

import dit_testbed
import testbed
from snapshots import snapshot, unchanged

SWAP = "Self-Attention Swap"
INVERT = "Invert Latent (DDIM)"
FPE = "below latent resolution (FPE default)"


def comfy_version() -> tuple[int, ...]:
    testbed.import_comfyui()
    import comfyui_version

    return tuple(int(x) for x in comfyui_version.__version__.split(".")[:3])


def swap_adapter(sae, family):
    """The family's adapter, or a skip saying why this family is not covered here."""
    adapter = sae("sae_patches.families").find_adapter(dit_testbed.tiny_dit(family))
    if adapter is None or "swap" not in adapter.capabilities:
        pytest.skip(f"{family}: no adapter with the swap in this tree yet")
    return adapter


def require_swap(sae, family):
    """Skip (with the version) where the running ComfyUI lacks the family's swap hook."""
    adapter = swap_adapter(sae, family)
    need = adapter.min_comfyui.get("swap")
    if need is not None and comfy_version() < need:
        pytest.skip(f"ComfyUI {'.'.join(map(str, comfy_version()))}: the {family} swap needs the hook of ComfyUI "
                    f"{'.'.join(map(str, need))} ({adapter.swap_hook()}); the refusal is "
                    "test_dit_swap_on_old_comfyui_is_refused_naming_the_version")
    return adapter


def node_swap(sae, model, family=None, layers=None, preset="all", start=0.0, end=1.0, rows="conditional only",
              custom="", inversion=None, pin=True):
    """The Self-Attention Swap node's output MODEL (probed's swap builder: layers are every block, 'all')."""
    return sae("nodes.node_swap").SelfAttentionSwap.execute(model, preset, start, end, rows, custom, inversion,
                                                            pin).args[0]


def expect_error(sae, fn, node, input_name, *phrases):
    with pytest.raises(sae("sae_math.errors").NodeInputError) as info:
        fn()
    msg = str(info.value)
    assert msg.startswith(f"{node}: input '{input_name}'"), msg
    for phrase in phrases:
        assert phrase in msg, (phrase, msg)
    return msg


FAMILIES = dsw._families()


# ---------------------------------------------------------------------------------------------------
# Self-Attention Swap

@pytest.mark.parametrize("family", FAMILIES)
def test_node_swap_equals_explicit_reference(sae, family):
    """The node (layers 'all', start 0, end 1, conditional only) on a tiny DiT: at every attention call of
    two euler steps at cfg 2 the block's output equals the explicit reference (the source's image-image
    map on the positive target rows, their own v) to 1e-5, and only the positive target rows' image q/k
    are replaced (test_dit_swap.check_swap_against_reference, run on the node's MODEL)."""
    require_swap(sae, family)
    dsw.check_swap_against_reference(sae, family, swap=node_swap)


@pytest.mark.parametrize("family", FAMILIES)
def test_node_identical_prompts_bit_identical_and_input_untouched(sae, family):
    """Identical source and target prompts: the node's MODEL samples bit-identically to the unswapped
    model and the target equals the source; with different prompts the target changes and the source
    does not; the input MODEL (options, wrappers, patches, weights) is unchanged and samples as before."""
    require_swap(sae, family)
    model = dit_testbed.tiny_dit(family)
    before = snapshot(model)
    same, neg, lat = dsw.pair_cond(sae, family, 1, 1), dsw.pair_cond(sae, family, 3, 3), dsw.pairs(sae, family)
    plain = dsw.run(model, family, same, neg, lat)
    m = node_swap(sae, model, preset=FPE, end=0.8)
    swapped = dsw.run(m, family, same, neg, lat)
    assert torch.equal(swapped, plain) and torch.equal(swapped[0], swapped[1])
    other = dsw.pair_cond(sae, family, 1, 2)
    plain2, swapped2 = dsw.run(model, family, other, neg, lat), dsw.run(m, family, other, neg, lat)
    assert torch.equal(swapped2[0], plain2[0]) and not torch.allclose(swapped2[1], plain2[1], atol=1e-4)
    assert unchanged(before, model)
    assert torch.equal(dsw.run(model, family, same, neg, lat), plain)


@pytest.mark.parametrize("family", FAMILIES)
def test_node_refuses_unpaired_batch_and_unet_presets(sae, family):
    """An unpaired latent batch (3) reaching the node's MODEL: NodeInputError naming the node, the
    sampler's latent and 'Make Source/Target Pairs', before any block runs; a UNet layer preset on a DiT:
    NodeInputError naming the node and 'layers' at execute time."""
    require_swap(sae, family)
    model = dit_testbed.tiny_dit(family)
    m, _pre, probe = dsw.probed(sae, model, family, None, swap=node_swap)
    lat, cond = dit_testbed.dit_latent(family, batch=3), dit_testbed.tiny_dit_conditioning(family, 1)
    expect_error(sae, lambda: testbed.sample(m, cond, cond, lat["samples"], steps=1, cfg=2.0,
                                             scheduler=dit_testbed.SCHEDULER[family]),
                 SWAP, "latent_image (of the sampler)", "Make Source/Target Pairs")
    assert probe.calls == []
    msg = expect_error(sae, lambda: node_swap(sae, model, preset="middle block"), SWAP, "layers", "'middle block'")
    assert family not in ("flux", "flux2", "chroma") or "names a part of a UNet" in msg, msg


@pytest.mark.parametrize("family", FAMILIES)
def test_node_refuses_text_of_another_width_before_the_model_runs(sae, family):
    """Conditioning whose text embeddings are wider than the model's text input (another model's text
    encoder) reaching the swap node's MODEL with a paired latent: NodeInputError naming the node, the
    sampler's positive/negative, the width given and the width the model takes (the test bed's
    CONTEXT_DIM), before any block runs; the right width samples."""
    require_swap(sae, family)
    model = dit_testbed.tiny_dit(family)
    assert sae("sae_patches.families").adapter_for(model, "test").text_width() == dit_testbed.CONTEXT_DIM
    m, _pre, probe = dsw.probed(sae, model, family, None, swap=node_swap)
    good = dit_testbed.tiny_dit_conditioning(family, 1)
    pair = sae("nodes.node_swap").PairConditioning.execute
    wide_text = [[torch.randn(1, 8, dit_testbed.CONTEXT_DIM + 8), dict(good[0][1])]]
    wide, good_pairs = pair(wide_text, wide_text).args[0], pair(good, good).args[0]
    lat = dsw.pairs(sae, family)
    expect_error(sae, lambda: dsw.run(m, family, wide, wide, lat), SWAP, "positive/negative (of the sampler)",
                 f"text width {dit_testbed.CONTEXT_DIM + 8}", f"width {dit_testbed.CONTEXT_DIM};")
    assert probe.calls == []
    assert torch.isfinite(dsw.run(m, family, good_pairs, good_pairs, lat)).all()


def test_fpe_preset_on_flux1_layout_is_stable_flow_vital_layers(sae):
    """The FPE preset on a Flux-family model of the Flux.1 layout (19 double + 38 single blocks) selects
    Stable Flow's vital layers (double 0, 1, 17, 18; single 6, 9, 34, 35, 37 = layers 25, 28, 53, 54, 56
    of 57); on any other layout (the tiny test models, Flux.2) every block; 'all' is every block."""
    fam = sae("sae_patches.families")
    adapter = fam.adapter_for(dit_testbed.tiny_dit("flux"), SWAP)
    layers = adapter.layers()
    assert adapter.select(layers, FPE) == layers == adapter.select(layers, "all")
    layer_info = sae("sae_math.layers").LayerInfo

    class Flux1Layout(type(adapter)):
        def layout(self):
            return 19, 38

        def layers(self):
            return ([layer_info(f"double.{i}", f"double_blocks.{i}", 3072, 0) for i in range(19)]
                    + [layer_info(f"single.{i}", f"single_blocks.{i}", 3072, 0) for i in range(38)])

    big = Flux1Layout(adapter.model)
    chosen = big.select(big.layers(), FPE)
    assert [x.key for x in chosen] == ["double.0", "double.1", "double.17", "double.18", "single.6", "single.9",
                                       "single.34", "single.35", "single.37"]
    flat = [x.key for x in big.layers()]
    assert [flat.index(x.key) for x in chosen] == [0, 1, 17, 18, 25, 28, 53, 54, 56]
    assert big.swap_layers(chosen)[:5] == [("double", 0), ("double", 1), ("double", 17), ("double", 18), ("single", 6)]
    assert big.swap_hook() == "attn1_patch" and big.default_swap_window() == (0.0, 0.8)


def test_dit_swap_on_old_comfyui_is_refused_naming_the_version(sae):
    """On a ComfyUI older than a family's swap hook (Flux: attn1_patch in the blocks, 0.33): Self-Attention
    Swap and Invert Latent refuse the model with a NodeInputError naming the node, the model class and the
    needed version, before anything is patched."""
    adapter = sae("sae_patches.families").adapter_for(dit_testbed.tiny_dit("flux"), SWAP)
    need = adapter.min_comfyui["swap"]
    if comfy_version() >= need:
        pytest.skip(f"ComfyUI {'.'.join(map(str, comfy_version()))} has the Flux swap hook; the refusal applies to "
                    f"older versions (the 0.3.75 test bed)")
    model = dit_testbed.tiny_dit("flux")
    before = snapshot(model)
    expect_error(sae, lambda: node_swap(sae, model, preset=FPE, end=0.8), SWAP, "model", "'Flux'",
                 "needs ComfyUI 0.33.0 or newer")
    invert = sae("nodes.node_invert").InvertLatent
    expect_error(sae, lambda: invert.execute(model, dit_testbed.tiny_dit_conditioning("flux", 1),
                                             dit_testbed.dit_latent("flux"), 2, "simple"),
                 INVERT, "model", "'Flux'", "needs ComfyUI 0.33.0 or newer")
    assert unchanged(before, model)


# ---------------------------------------------------------------------------------------------------
# Invert Latent on a flow model

def image_latent(family, seed=5):
    shape = tuple(dit_testbed.dit_latent(family)["samples"].shape[1:])
    return torch.randn(1, *shape, generator=torch.Generator().manual_seed(seed))


def rel_error(a, b) -> float:
    return ((a - b).norm() / b.norm()).item()


def ksampler_no_noise(model, positive, latent, steps, scheduler, negative=None):
    """ComfyUI's KSamplerAdvanced node, add_noise disabled, euler, cfg 1, the whole schedule."""
    import nodes as comfy_nodes

    return comfy_nodes.KSamplerAdvanced().sample(model, "disable", 0, steps, 1.0, "euler", scheduler, positive,
                                                 positive if negative is None else negative, latent, 0, 10000,
                                                 "disable")[0]["samples"]


STEPS = 50  # sigma_1 = 0.061 on the tiny Flux: the first inversion step's fixed point converges (test_flow_inversion)
# The tiny random Z-Image's velocity changes faster in x near sigma 0: its first step's fixed point converges
# at sigma_1 <= ~0.02 (150 steps; at 50 steps, sigma_1 = 0.058, it stalls at residual 0.03, and the node warns:
# test_invert_warns_when_the_first_step_does_not_converge).
FAMILY_STEPS = {"lumina2": 150}


@pytest.mark.parametrize("family", FAMILIES)
def test_invert_and_swap_with_pin_reconstructs_the_source(sae, record_property, family):
    """Tiny DiT of each family (flow models), 50 steps (Z-Image: 150, FAMILY_STEPS), the family's test-bed scheduler: Invert Latent -> Make Source/Target Pairs -> Self-Attention
    Swap (FPE preset, inversion, pin_source) -> KSamplerAdvanced (add_noise disabled, euler, cfg 1): the
    swap node installs FlowStartFromLatent itself, the source comes back as the image latent to 1e-5
    (relative; the first inversion step's residual), the target (another prompt) differs from it.
    Without the swap, the Invert node's 'model' output sampled the same way reconstructs within the
    first-order solver's error on a random network (bound 0.25; measured 0.16 in test_flow_inversion),
    while the input model starts from zeros and lands far from the image (relative error > 0.5)."""
    adapter = require_swap(sae, family)
    if "inversion" not in adapter.capabilities:
        pytest.skip(f"{family}: its adapter does not offer Invert Latent yet")
    need = adapter.min_comfyui.get("inversion")
    if need is not None and comfy_version() < need:
        pytest.skip(f"ComfyUI {'.'.join(map(str, comfy_version()))}: {family}'s Invert Latent needs "
                    f"{'.'.join(map(str, need))}")
    ns = sae("nodes.node_swap")
    model = dit_testbed.tiny_dit(family)
    sched = dit_testbed.SCHEDULER[family]
    steps = FAMILY_STEPS.get(family, STEPS)
    pos, tgt = dit_testbed.tiny_dit_conditioning(family, 1), dit_testbed.tiny_dit_conditioning(family, 2)
    x0 = image_latent(family)
    noise, inv, start_model = sae("nodes.node_invert").InvertLatent.execute(model, pos, {"samples": x0}, steps,
                                                                            sched).args
    pairs = ns.MakePairs.execute(noise).args[0]
    swapped = node_swap(sae, model, preset=FPE, end=0.8, inversion=inv, pin=True)
    out = ksampler_no_noise(swapped, ns.PairConditioning.execute(pos, tgt).args[0], pairs, steps, sched)
    pinned = rel_error(out[:1], x0)
    target_change = rel_error(out[1:], x0)
    plain = rel_error(ksampler_no_noise(start_model, pos, noise, steps, sched), x0)
    from_zeros = rel_error(ksampler_no_noise(model, pos, noise, steps, sched), x0)
    record_property(f"{family}_node_reconstruction", {"steps": steps, "pinned_source": pinned,
                                                      "target": target_change, "invert_model_output": plain,
                                                      "input_model": from_zeros})
    assert pinned < 1e-5, pinned
    assert target_change > 1e-3, target_change
    assert plain < 0.25, plain
    assert from_zeros > 0.5, from_zeros
    assert start_model is not model


def test_invert_warns_when_the_first_step_does_not_converge(sae, caplog):
    """Nothing fails silently: on the tiny Z-Image at 50 steps (sigma_1 = 0.058) the first inversion step's
    fixed point does not converge; Invert Latent logs a WARNING naming the residual and the remedy (more
    steps), and the pinned source then comes back off by that residual (the forward's last step from the
    stored point lands exactly residual away from the image: max-abs error, in the sampler's latent space,
    within 5% of it, the log's 3 digits). On the
    tiny Flux at the same step count it converges and nothing is warned."""
    import logging

    need = sae("sae_patches.families").find_adapter(dit_testbed.tiny_dit("lumina2")).min_comfyui.get("inversion")
    if need is not None and comfy_version() < need:
        pytest.skip(f"ComfyUI {'.'.join(map(str, comfy_version()))}: Z-Image's Invert Latent needs {need}")
    ns = sae("nodes.node_swap")
    for family, converges in (("flux", True), ("lumina2", False)):
        model, sched = dit_testbed.tiny_dit(family), dit_testbed.SCHEDULER[family]
        pos, tgt = dit_testbed.tiny_dit_conditioning(family, 1), dit_testbed.tiny_dit_conditioning(family, 2)
        x0 = image_latent(family)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="self_attention_edit"):
            noise, inv, _m = sae("nodes.node_invert").InvertLatent.execute(model, pos, {"samples": x0}, STEPS,
                                                                           sched).args
        warnings = [r for r in caplog.records if r.levelno >= logging.WARNING and "did not converge" in r.getMessage()]
        if converges:
            assert not warnings, [r.getMessage() for r in warnings]
            continue
        assert len(warnings) == 1, [r.getMessage() for r in caplog.records]
        msg = warnings[0].getMessage()
        assert INVERT in msg and "more steps" in msg, msg
        residual = float(msg.split("residual ")[1].split(" ")[0])
        assert residual > 1e-3, msg
        pairs = ns.MakePairs.execute(noise).args[0]
        swapped = node_swap(sae, model, preset=FPE, end=0.8, inversion=inv, pin=True)
        out = ksampler_no_noise(swapped, ns.PairConditioning.execute(pos, tgt).args[0], pairs, STEPS, sched)
        working = model.model.process_latent_in  # the residual is in the sampler's space (Z-Image: scaled, shifted)
        error = float((working(out[:1]) - working(x0)).abs().max())
        assert abs(error - residual) <= 0.05 * residual, (error, residual)


def test_invert_model_output_is_the_input_model_on_a_unet(sae):
    """On an eps-prediction UNet (sampling starts at latent + sigma * 0 = the inverted latent already) the
    Invert node's 'model' output is the input MODEL itself: nothing is added to the UNet path."""
    model = testbed.tiny_model("sd15")
    out = sae("nodes.node_invert").InvertLatent.execute(model, testbed.tiny_conditioning("sd15", 1),
                                                        {"samples": torch.randn(1, 4, 16, 16)}, 2, "normal").args
    assert len(out) == 3 and out[2] is model
