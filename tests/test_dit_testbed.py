"""The tiny DiT test bed (dit_testbed.py): every family's tiny model samples through real comfy.sample, is
deterministic, and its attention hooks are reached where DIT_NOTES says (attn1_patch with img_slice /
block_type / block_index on ComfyUI 0.33's Flux-style and Qwen-Image blocks; the attention override
everywhere else and on ComfyUI 0.3.75)."""

from __future__ import annotations

import pytest
import torch

import dit_testbed
import testbed

# Families whose blocks call attn1_patch (ComfyUI 0.33.0; none on 0.3.75).
ATTN1_PATCH_FAMILIES = ("flux", "flux2", "chroma", "qwen_image")


def comfyui_has_dit_attn1_patch() -> bool:
    """Whether the installed ComfyUI's Flux blocks call attn1_patch (added after 0.3.75)."""
    testbed.import_comfyui()
    import inspect

    import comfy.ldm.flux.layers

    return "attn1_patch" in inspect.getsource(comfy.ldm.flux.layers.DoubleStreamBlock.forward)


@pytest.fixture(scope="module", params=dit_testbed.DIT_FAMILIES)
def dit_family(request):
    return request.param


@pytest.fixture(scope="module")
def dit(dit_family):
    return dit_testbed.tiny_dit(dit_family, seed=0)


def _run(model, family, *, cond_seed=1, noise_seed=0, steps=2):
    pos = dit_testbed.tiny_dit_conditioning(family, cond_seed)
    neg = dit_testbed.tiny_dit_conditioning(family, cond_seed + 100)
    return dit_testbed.sample(model, family, pos, neg, dit_testbed.dit_latent(family), seed=noise_seed,
                              steps=steps)


def test_samples_finite_and_input_dependent(dit, dit_family):
    """Two euler steps through comfy.sample give a finite latent of the LATENT's shape that changes with
    the prompt and with the noise seed (the model is not ignored, not degenerate)."""
    out = _run(dit, dit_family)
    assert out.shape == dit_testbed.dit_latent(dit_family)["samples"].shape
    assert torch.isfinite(out).all()
    assert out.std() > 0.1
    other_prompt = _run(dit, dit_family, cond_seed=7)
    other_noise = _run(dit, dit_family, noise_seed=5)
    assert (out - other_prompt).abs().max() > 1e-3
    assert (out - other_noise).abs().max() > 1e-3


def test_model_sampling_is_flow(dit, dit_family):
    """The model predicts with CONST (rectified flow) and its sigmas run from 1 down to ~0."""
    import comfy.model_sampling

    ms = dit.get_model_object("model_sampling")
    assert isinstance(ms, comfy.model_sampling.CONST)
    assert abs(float(ms.sigma_max) - 1.0) < 1e-4
    assert float(ms.sigma_min) < 0.01


def test_deterministic(dit, dit_family):
    """The same seed builds bit-identical weights and samples bit-identically; another seed differs."""
    again = dit_testbed.tiny_dit(dit_family, seed=0)
    a, b = dit.model.diffusion_model.state_dict(), again.model.diffusion_model.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(_run(dit, dit_family), _run(again, dit_family))
    other = dit_testbed.tiny_dit(dit_family, seed=1).model.diffusion_model.state_dict()
    assert any(not torch.equal(a[k], other[k]) for k in a if a[k].numel() > 1)


def _one_forward(model, family):
    """One cfg step (cond and uncond rows batched: B = 2) through comfy.sample."""
    return _run(model, family, steps=1)


def test_attn1_patch_sees_every_image_attention_block(dit, dit_family):
    """Where core offers attn1_patch, a recording patch on a clone is called once per image-attention block
    per model call, with the documented extra_options (block_type, block_index, img_slice covering the image
    tokens after the text tokens) and joint q/k/v of shape (B, H, T + N, D); returning nothing changes
    nothing. The input MODEL is not touched."""
    if dit_family not in ATTN1_PATCH_FAMILIES:
        pytest.skip(f"core offers no attn1_patch in {dit_family} blocks (attention override only; DIT_NOTES)")
    if not comfyui_has_dit_attn1_patch():
        pytest.skip("DiT attn1_patch (Flux/Qwen-Image blocks) needs ComfyUI newer than 0.3.75 (present in 0.33.0)")
    calls = []

    def record(q, k, v, pe=None, attn_mask=None, extra_options=None):
        calls.append((extra_options["block_type"], extra_options["block_index"], list(extra_options["img_slice"]),
                      tuple(q.shape), tuple(k.shape), tuple(v.shape)))
        return {}

    patched = dit.clone()
    patched.set_model_attn1_patch(record)
    assert "attn1_patch" not in dit.model_options["transformer_options"].get("patches", {})
    out = _one_forward(patched, dit_family)
    assert torch.equal(out, _one_forward(dit, dit_family))

    text, img = dit_testbed.text_tokens(dit_family), dit_testbed.image_tokens(dit_family)
    heads, head_dim = dit_testbed.heads_and_head_dim(dit_family)
    # One model call (cond and uncond rows batched), every double block then every single block.
    assert [(c[0], c[1]) for c in calls] == dit_testbed.indexed_attention_calls(dit_family)
    for block_type, index, img_slice, q, k, v in calls:
        assert img_slice == [text, text + img], (block_type, index)
        assert q == k == v == (2, heads, text + img, head_dim)


def test_attention_override_called_per_block(dit, dit_family):
    """transformer_options['optimized_attention_override'] on a clone is called for every attention call
    of the model (one per joint block; Z-Image also in its refiners) and, passing through, leaves the
    sample bit-identical. Where core sets block_index it identifies the block."""
    calls = []

    def override(func, *args, **kwargs):
        opts = kwargs.get("transformer_options", {})
        calls.append((opts.get("block_type"), opts.get("block_index"), tuple(args[0].shape)))
        return func(*args, **kwargs)

    patched = dit.clone()
    patched.model_options["transformer_options"]["optimized_attention_override"] = override
    assert "optimized_attention_override" not in dit.model_options["transformer_options"]
    out = _one_forward(patched, dit_family)
    assert torch.equal(out, _one_forward(dit, dit_family))
    assert len(calls) == dit_testbed.attention_calls_per_forward(dit_family)
    indexed = [(t, i) for t, i, _ in calls if i is not None]
    if indexed:
        assert indexed == dit_testbed.indexed_attention_calls(dit_family)


# Families whose forward offers patches_replace["dit"] block replaces (Lumina2/Z-Image does not).
BLOCK_REPLACE_FAMILIES = ("flux", "flux2", "chroma", "qwen_image", "sd3")


def test_block_replace_identifies_attention_calls(dit, dit_family):
    """A patches_replace['dit'] wrapper on every block (set on a clone, calling original_block) brackets
    exactly one attention-override call each, in block order, so the override knows its block even where
    transformer_options carries no block_index (SD3); the sample stays bit-identical."""
    if dit_family not in BLOCK_REPLACE_FAMILIES:
        pytest.skip(f"{dit_family}: core offers no patches_replace['dit'] block replaces")
    current, seen = [], []

    def wrapper_for(kind, index):
        def replace(args, extra):
            current.append((kind, index))
            try:
                return extra["original_block"](args)
            finally:
                current.pop()
        return replace

    def override(func, *args, **kwargs):
        seen.append(current[-1] if current else None)
        return func(*args, **kwargs)

    patched = dit.clone()
    blocks = [(t, i) for t, i in dit_testbed.indexed_attention_calls(dit_family)] or [
        ("double", i) for i in range(dit_testbed.attention_calls_per_forward(dit_family))]
    for kind, index in blocks:
        patched.set_model_patch_replace(wrapper_for(kind, index), "dit", f"{kind}_block", index)
    patched.model_options["transformer_options"]["optimized_attention_override"] = override
    out = _one_forward(patched, dit_family)
    assert torch.equal(out, _one_forward(dit, dit_family))
    assert seen == blocks
