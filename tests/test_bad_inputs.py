"""Bad input, tried as a new user would, through the real node functions (validate_inputs and execute):
every error names the node, the input and what to do, and leaves every input object exactly as it was.
Half-precision models are not bad input: they must work."""

from __future__ import annotations

import pytest
import torch

import dit_testbed
import testbed
from snapshots import snapshot, unchanged

RELATIVE = "relative to token norm"
FPE = "below latent resolution (FPE default)"


def node(sae, module, name):
    return getattr(sae(f"nodes.{module}"), name)


def compute(sae, model, layers="all", k=3):
    return node(sae, "node_directions", "ComputeAttentionEigendirections").execute(model, layers, k, "").args[0]


def apply(sae, model, directions, index=0, alpha=0.3, start=0.5, end=0.8, sweep=""):
    return node(sae, "node_apply", "ApplyLatentDirection").execute(
        model, directions, index, alpha, start, end, RELATIVE, "", sweep).args[0]


def swap(sae, model, start=0.0, end=0.8, inversion=None):
    return node(sae, "node_swap", "SelfAttentionSwap").execute(
        model, FPE, start, end, "conditional only", "", inversion, True).args[0]


def expect_error(sae, fn, node_name, input_name, *advice):
    """Run fn; it must raise the pack's NodeInputError naming node and input, with every advice phrase."""
    errors = sae("sae_math.errors")
    with pytest.raises(errors.NodeInputError) as info:
        fn()
    msg = str(info.value)
    assert msg.startswith(f"{node_name}: input '{input_name}'"), msg
    for phrase in advice:
        assert phrase in msg, (phrase, msg)
    return msg


def test_model_of_an_unknown_family_is_refused_by_every_model_node(sae):
    """A MODEL whose family the pack has no adapter for (AuraFlow's MMDiT, built by ComfyUI's own classes)
    given to each node that takes a MODEL: a clear error naming the node, the model's class and the
    supported families, and the model is untouched. (Flux-family models: tests/test_families.py.)"""
    other = dit_testbed.tiny_unknown_dit()
    before = snapshot(other)
    sd_dirs = compute(sae, testbed.tiny_model("sd15"))
    advice = ("input 'model' = 'AuraFlow'", "supported: SD1.x, SD2.x and SDXL UNets", "Flux.1")
    expect_error(sae, lambda: compute(sae, other), "Compute Attention Eigendirections", "model", *advice)
    expect_error(sae, lambda: apply(sae, other, sd_dirs), "Apply Latent Direction (timestep window)", "model", *advice)
    expect_error(sae, lambda: swap(sae, other), "Self-Attention Swap", "model", *advice)
    invert = node(sae, "node_invert", "InvertLatent")
    latent = {"samples": torch.zeros(1, 16, 8, 8)}
    expect_error(sae, lambda: invert.execute(other, testbed.tiny_conditioning("sd15", 1), latent, 2, "normal"),
                 "Invert Latent (DDIM)", "model", *advice)
    assert unchanged(before, other)


@pytest.mark.parametrize("source,target", [("sd15", "sdxl"), ("sdxl", "sd15"), ("sd15", "sd20")])
def test_directions_from_another_model_are_refused(sae, source, target):
    """Directions computed on one family applied to another: other layer keys/widths (SD1.5 vs SDXL) are
    listed; same keys and widths but another family (SD1.5 vs SD2.x here) are refused too."""
    d = compute(sae, testbed.tiny_model(source))
    model = testbed.tiny_model(target)
    before_m, before_d = snapshot(model), snapshot(d)
    msg = expect_error(sae, lambda: apply(sae, model, d), "Apply Latent Direction (timestep window)", "directions",
                       "compute the directions on this model")
    if "sdxl" in (source, target):
        assert "do not exist with the same width" in msg and "(width " in msg
    else:
        assert "computed on a SD15 model but this model is SD20" in msg
    assert unchanged(before_m, model) and unchanged(before_d, d)


def test_direction_index_beyond_k(sae):
    model = testbed.tiny_model("sd15")
    d = compute(sae, model, k=3)
    before = snapshot(model), snapshot(d)
    expect_error(sae, lambda: apply(sae, model, d, index=3), "Apply Latent Direction (timestep window)", "index",
                 "only 3 directions", "use 0..2", "raise top_k")
    assert unchanged(before[0], model) and unchanged(before[1], d)
    apply(sae, model, d, index=2)  # the last computed one is fine


@pytest.mark.parametrize("alpha,sweep,bad_input", [
    (float("nan"), "", "alpha"), (float("inf"), "", "alpha"), (-float("inf"), "", "alpha"),
    (0.2, "0, nan", "alpha_sweep"), (0.2, "0.1, inf", "alpha_sweep")])
def test_non_finite_alpha_is_refused_before_and_at_execution(sae, alpha, sweep, bad_input):
    """validate_inputs (before the prompt runs) and execute both refuse NaN/inf alphas."""
    apply_node = node(sae, "node_apply", "ApplyLatentDirection")
    problem = apply_node.validate_inputs(alpha=alpha, window_start=0.5, window_end=0.8, alpha_sweep=sweep)
    assert isinstance(problem, str) and problem.startswith(f"{apply_node.DISPLAY}: input '{bad_input}'")
    assert "finite" in problem
    model = testbed.tiny_model("sd15")
    d = compute(sae, model)
    before = snapshot(model)
    expect_error(sae, lambda: apply(sae, model, d, alpha=alpha, sweep=sweep), apply_node.DISPLAY, bad_input, "finite")
    assert unchanged(before, model)


@pytest.mark.parametrize("start,end", [(0.8, 0.5), (0.5, 0.5), (-0.1, 0.5), (0.5, 1.2), (1.0, 1.0)])
def test_bad_windows_are_refused_by_apply_and_swap(sae, start, end):
    """start >= end or outside [0, 1]: both nodes refuse it in validate_inputs and in execute."""
    apply_node = node(sae, "node_apply", "ApplyLatentDirection")
    swap_node = node(sae, "node_swap", "SelfAttentionSwap")
    problem = apply_node.validate_inputs(alpha=0.2, window_start=start, window_end=end)
    assert problem.startswith(f"{apply_node.DISPLAY}: input 'window_start'/'window_end'") and "0 <= start < end <= 1" in problem
    problem = swap_node.validate_inputs(start=start, end=end)
    assert problem.startswith(f"{swap_node.DISPLAY}: input 'start'/'end'") and "0 <= start < end <= 1" in problem
    model = testbed.tiny_model("sd15")
    d = compute(sae, model)
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"Apply Latent Direction \(timestep window\): input 'window_start'/'window_end'"):
        apply(sae, model, d, start=start, end=end)
    expect_error(sae, lambda: swap(sae, model, start=start, end=end), swap_node.DISPLAY, "start/end", "0 <= start < end <= 1")
    assert unchanged(before, model)
    # Good values pass validation.
    assert apply_node.validate_inputs(alpha=0.2, window_start=0.5, window_end=0.8) is True
    assert swap_node.validate_inputs(start=0.0, end=0.8) is True


class UNetCalls:
    """attn1_patch counting how often the UNet's self-attention ran (0: the error came first)."""

    def __init__(self):
        self.count = 0

    def __call__(self, n, c, v, extra):
        self.count += 1
        return n, c, v

    def __deepcopy__(self, memo):
        return self


@pytest.mark.parametrize("batch,cfg", [(3, 4.0), (1, 1.0), (5, 1.0)])
def test_unpaired_swap_batch_fails_before_the_unet_runs(sae, batch, cfg):
    """A latent batch that cannot be split into source/target pairs: the sampler stops at the first model
    call, before any attention runs, with the swap's error saying to use Make Source/Target Pairs."""
    model = testbed.tiny_model("sd15")
    calls = UNetCalls()
    counted = model.clone()
    counted.set_model_attn1_patch(calls)
    patched = swap(sae, counted)
    pos, neg = testbed.tiny_conditioning("sd15", 1), testbed.tiny_conditioning("sd15", 2)
    before = snapshot(pos), snapshot(neg), snapshot(counted)
    expect_error(sae, lambda: testbed.sample(patched, pos, neg, testbed.empty_latent(batch), steps=2, cfg=cfg),
                 "Self-Attention Swap", "latent_image (of the sampler)", f"batch {batch}", "source/target pairs",
                 "Make Source/Target Pairs")
    assert calls.count == 0
    assert unchanged(before[0], pos) and unchanged(before[1], neg) and unchanged(before[2], counted)
    split = node(sae, "node_swap", "SplitPairs")
    expect_error(sae, lambda: split.execute(torch.zeros(batch, 8, 8, 3)), split.DISPLAY, "images", "even size")


def sd15_like_conditioning(seed: int):
    """What CLIPTextEncode gives with an SD1.x CLIP: token embeddings and a pooled output of the CLIP's
    width. The tiny test models all use width 64, so this SD1.x stand-in uses another width (48), as
    SD1.5's 768 differs from SDXL's 2048."""
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, 77, 48, generator=g), {"pooled_output": torch.randn(1, 48, generator=g)}]]


def test_missing_or_mismatched_source_conditioning(sae):
    """Source/Target Conditioning refuses an empty source or target, and source/target from different
    text encoders; SD1.x conditioning sampled on a swapped SDXL model fails before the UNet runs with an
    error saying to encode with this checkpoint's CLIP. No conditioning tensor is changed."""
    pair = node(sae, "node_swap", "PairConditioning")
    sdxl_cond = testbed.tiny_conditioning("sdxl", 1)
    sd15_cond = sd15_like_conditioning(2)
    before = snapshot(sdxl_cond), snapshot(sd15_cond)
    expect_error(sae, lambda: pair.execute([], sdxl_cond), pair.DISPLAY, "source", "CLIP Text Encode")
    expect_error(sae, lambda: pair.execute(sdxl_cond, []), pair.DISPLAY, "target", "CLIP Text Encode")
    expect_error(sae, lambda: pair.execute(sd15_cond, sdxl_cond), pair.DISPLAY, "target",
                 "different text encoders", "encode both with the same CLIP")
    no_pooled = [[sdxl_cond[0][0], {}]]
    expect_error(sae, lambda: pair.execute(no_pooled, sdxl_cond), pair.DISPLAY, "source", "pooled output")
    assert unchanged(before[0], sdxl_cond) and unchanged(before[1], sd15_cond)

    # Both prompts from an SD1.x CLIP, sampled on an SDXL model through the swap.
    sd15_pair = pair.execute(sd15_like_conditioning(3), sd15_like_conditioning(4)).args[0]
    sdxl = testbed.tiny_model("sdxl")
    calls = UNetCalls()
    counted = sdxl.clone()
    counted.set_model_attn1_patch(calls)
    patched = swap(sae, counted)
    lat = node(sae, "node_swap", "MakePairs").execute({"samples": testbed.empty_latent(1)}).args[0]
    neg = sd15_like_conditioning(5)
    snap = snapshot(sd15_pair), snapshot(neg)
    expect_error(sae, lambda: testbed.sample(patched, sd15_pair, neg, lat["samples"], batch_index=lat["batch_index"],
                                             steps=2),
                 "Self-Attention Swap", "positive/negative (of the sampler)",
                 "another model family", "encode source and target prompts with this checkpoint's CLIP")
    assert calls.count == 0
    assert unchanged(snap[0], sd15_pair) and unchanged(snap[1], neg)


def test_corrupt_or_foreign_safetensors_given_to_the_loader(sae, tmp_path):
    """Load Attention Directions with a damaged file, a LoRA-like .safetensors, a file of an unknown format
    version, one with NaNs, one missing: each error names the loader, the file and what to do."""
    import folder_paths
    from safetensors.torch import save_file

    directions = sae("sae_math.directions")
    loader = node(sae, "node_directions", "LoadAttentionDirections")
    folder = tmp_path / "attention_directions"
    folder.mkdir()
    folder_paths.add_model_folder_path("attention_directions", str(folder))
    good = compute(sae, testbed.tiny_model("sd15"), "middle block", 2)
    good.save(str(folder / "good.safetensors"))
    (folder / "corrupt.safetensors").write_bytes(b"\x00" * 64)
    data = (folder / "good.safetensors").read_bytes()
    (folder / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    save_file({"lora_unet_down.lora_down.weight": torch.zeros(4, 4)}, str(folder / "a_lora.safetensors"))
    tensors, meta = good.to_safetensors_dict()
    save_file(tensors, str(folder / "future.safetensors"), metadata={**meta, "format_version": "99"})
    nan = {k: torch.full_like(v, float("nan")) for k, v in tensors.items()}
    save_file(nan, str(folder / "nan.safetensors"), metadata=meta)
    cases = {
        "corrupt.safetensors": "could not be read",
        "truncated.safetensors": "could not be read",
        "a_lora.safetensors": "not an attention-directions file",
        "future.safetensors": "format version '99'",
        "nan.safetensors": "NaN or infinite",
    }
    for name, reason in cases.items():
        expect_error(sae, lambda name=name: loader.execute(name), loader.DISPLAY, "file", reason,
                     "choose a file written by Save Attention Directions")
    expect_error(sae, lambda: loader.execute("missing.safetensors"), loader.DISPLAY, "file", "no such file")
    loaded = loader.execute("good.safetensors").args[0]
    assert loaded.keys == good.keys
    assert directions.AttnDirections.load(str(folder / "good.safetensors")).model_fingerprint == good.model_fingerprint


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
@pytest.mark.parametrize("dtype,manual_cast", [(torch.float16, None), (torch.bfloat16, None),
                                               (torch.float16, torch.float32)],
                         ids=["fp16", "bf16", "fp16-weights-fp32-compute"])
def test_half_precision_models_work_with_every_node(sae, family, dtype, manual_cast):
    """fp16/bf16 UNets (ComfyUI's half-precision modes, and fp16 weights with fp32 compute): directions
    equal those of the same weights in float64, the edit and the swap sample finite images that differ
    from the plain run where they should, the swap leaves source rows bit-identical, inversion is finite."""
    model = testbed.tiny_model(family, dtype=dtype, manual_cast_dtype=manual_cast)
    assert next(model.model.diffusion_model.parameters()).dtype == dtype
    d = compute(sae, model, "middle block", 2)
    attn = model.model.diffusion_model.middle_block[1].transformer_blocks[0].attn1
    s = torch.cat([attn.to_q.weight, attn.to_k.weight, attn.to_v.weight]).double()
    values, vectors = torch.linalg.eigh(s.T @ s)
    assert testbed.principal_angles(d.layers[0].vectors, vectors.flip(1)[:, :2].T).max() < 1e-4
    assert d.layers[0].vectors.dtype == torch.float32

    pos, neg = testbed.tiny_conditioning(family, 1), testbed.tiny_conditioning(family, 2)
    plain = testbed.sample(model, pos, neg, testbed.empty_latent(1), steps=4)
    edited = testbed.sample(apply(sae, model, d, alpha=0.4), pos, neg, testbed.empty_latent(1), steps=4)
    assert torch.isfinite(plain).all() and torch.isfinite(edited).all() and not torch.equal(plain, edited)

    swap_nodes = sae("nodes.node_swap")
    cond = swap_nodes.PairConditioning.execute(pos, testbed.tiny_conditioning(family, 3)).args[0]
    lat = swap_nodes.MakePairs.execute({"samples": testbed.empty_latent(1)}).args[0]
    kw = {"batch_index": lat["batch_index"], "steps": 4}
    unswapped = testbed.sample(model, cond, neg, lat["samples"], **kw)
    swapped = testbed.sample(swap(sae, model), cond, neg, lat["samples"], **kw)
    assert torch.isfinite(swapped).all()
    assert torch.equal(swapped[0], unswapped[0]) and not torch.equal(swapped[1], unswapped[1])

    image = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    noise, inv = sae("nodes.node_invert").InvertLatent.execute(model, pos, {"samples": image}, 4, "normal").args[:2]
    assert torch.isfinite(noise["samples"]).all() and torch.isfinite(inv.latents).all()
    pinned = swap(sae, model, inversion=inv)
    out = testbed.sample(pinned, cond, cond, swap_nodes.MakePairs.execute(noise).args[0]["samples"],
                         batch_index=[0, 0], steps=4, cfg=1.0)
    assert torch.isfinite(out).all()
