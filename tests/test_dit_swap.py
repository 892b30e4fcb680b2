"""Self-Attention Swap on diffusion transformers (sae_patches/dit_swap.py, sae_math/joint_swap.py): the
pure joint swap against its explicit reference, then real block calls of tiny DiTs built from ComfyUI's
own classes (tests/dit_testbed.py) sampled through ComfyUI's sampler, per family and hook."""

from __future__ import annotations

import pytest
import torch

import testbed

# The hook each family's swap uses (sae_patches.dit_swap.HOOKS) and where core gives q/k/v.
HOOK = {"flux": "attn1_patch", "flux2": "attn1_patch", "chroma": "attn1_patch", "qwen_image": "attn1_patch",
        "sd3": "mmdit", "lumina2": "lumina"}


def joint(sae):
    return sae("sae_math.joint_swap")


# ---------------------------------------------------------------------------------------------------
# Pure math

def _qkv(rows=4, heads=2, tokens=13, dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(rows, heads, tokens, dim, generator=g) for _ in range(3)]


def test_pure_swap_equals_explicit_reference_and_touches_only_target_image_qk(sae):
    """On random (B, H, N, D) q/k/v with text [0, 4), image [4, 11) and 2 reference tokens: ordinary fused
    attention on swap_image_qk's q/k equals the explicit reference (maps built, the source's image-image
    block given to the target) to 1e-6; text tokens', reference tokens' and source rows' q/k are the
    inputs bit for bit, v is not an argument; the target's image-image map renormalised over the image
    columns is the source's; inputs are not modified."""
    js, sm = joint(sae), sae("sae_math.swap_math")
    q, k, v = _qkv()
    q0, k0 = q.clone(), k.clone()
    start, end = js.image_token_range([4, 13], 13, [2])
    assert (start, end) == (4, 11)
    targets, sources = sm.pair_rows(4, ["positive", "negative"], {"positive"})  # rows 1 <- 0 only
    index = torch.tensor(sm.row_index(4, targets, sources))
    qs, ks = js.swap_image_qk(q, k, index, start, end)
    assert torch.equal(q, q0) and torch.equal(k, k0)
    out = torch.nn.functional.scaled_dot_product_attention(qs, ks, v)
    ref = js.explicit_joint_swap_reference(q, k, v, start, end, targets, sources)
    assert (out.double() - ref).abs().max() < 1e-6
    for x, x0 in ((qs, q), (ks, k)):
        assert torch.equal(x[:, :, :start], x0[:, :, :start]) and torch.equal(x[:, :, end:], x0[:, :, end:])
        assert torch.equal(x[[0, 2, 3]], x0[[0, 2, 3]])  # sources and the negative chunk's pair
        assert torch.equal(x[1, :, start:end], x0[0, :, start:end])
    img = slice(start, end)
    block = lambda qq, kk: torch.softmax(qq[:, img] @ kk[:, img].transpose(-1, -2) / 8**0.5, -1)  # noqa: E731
    assert torch.allclose(block(qs[1], ks[1]), block(q[0], k[0]), atol=1e-7)
    assert not torch.allclose(block(q[1], k[1]), block(q[0], k[0]), atol=1e-3)


def test_pure_layouts_and_bad_slices(sae):
    """(B, N, H*D) tensors (SD3) swap along token dim 1 like (B, H, N, D) along 2; Lumina's image token
    count is the patch grid padded to the multiple; an empty or out-of-range image slice is a ValueError
    naming the slice."""
    js = joint(sae)
    q, k, _ = _qkv()
    index = torch.tensor([0, 0, 2, 2])
    flat = lambda x: x.transpose(1, 2).reshape(4, 13, -1)  # noqa: E731
    a = js.swap_image_qk(q, k, index, 3, 13, token_dim=2)
    b = js.swap_image_qk(flat(q), flat(k), index, 3, 13, token_dim=1)
    assert torch.equal(flat(a[0]), b[0]) and torch.equal(flat(a[1]), b[1])
    assert js.padded_image_tokens(16, 16, 2, 32) == 64 and js.padded_image_tokens(10, 14, 2, 32) == 64
    assert js.padded_image_tokens(10, 14, 2, None) == 35 and js.padded_image_tokens(9, 9, 2, None) == 25
    with pytest.raises(ValueError, match=r"image tokens \[8, 8\).*img_slice \[8, 12\]"):
        js.image_token_range([8, 12], 12, [4])


# ---------------------------------------------------------------------------------------------------
# Real blocks of tiny DiTs

def _dit():
    import dit_testbed

    return dit_testbed


def _families():
    try:
        import dit_testbed
    except ImportError:
        return []
    return [f for f in dit_testbed.DIT_FAMILIES if f in HOOK]


def _require_hooks(family):
    testbed.import_comfyui()
    import comfyui_version

    major_minor = tuple(int(x) for x in comfyui_version.__version__.split(".")[:2])
    if HOOK[family] != "mmdit" and major_minor < (0, 33):
        pytest.skip(f"ComfyUI {comfyui_version.__version__}: {family} has no "
                    + ("attn1_patch in its blocks" if HOOK[family] == "attn1_patch"
                       else "block_index in its transformer_options") + " (ComfyUI 0.33 has it)")


def all_layers(family):
    """Every joint block of the tiny model as the swap names it."""
    if family == "sd3":
        return [("double", i) for i in range(_dit()._tiny_dit_config(family)["depth"])]
    return _dit().indexed_attention_calls(family)


def apply_swap(sae, model, family, layers, start=0.0, end=1.0, all_chunks=False):
    """What the Self-Attention Swap node does on a DiT: one SwapWindow, the roles wrappers, the hook."""
    import comfy.patcher_extension as pe

    sp, ds = sae("sae_patches.swap_patch"), sae("sae_patches.dit_swap")
    window = sp.SwapWindow(start, end, all_chunks, fallback_sampling=model.get_model_object("model_sampling"))
    m = model.clone()
    ds.install_joint_swap(m, HOOK[family], layers, window)
    m.add_wrapper_with_key(pe.WrappersMP.PREDICT_NOISE, sp.ROLES_WRAPPER_KEY, sp.GuiderCondsWrapper())
    m.add_wrapper_with_key(pe.WrappersMP.CALC_COND_BATCH, sp.ROLES_WRAPPER_KEY, sp.ChunkRolesWrapper())
    return m


def pair_cond(sae, family, src_seed, tgt_seed):
    d = _dit()
    return sae("nodes.node_swap").PairConditioning.execute(d.tiny_dit_conditioning(family, src_seed),
                                                           d.tiny_dit_conditioning(family, tgt_seed)).args[0]


def pairs(sae, family):
    return sae("nodes.node_swap").MakePairs.execute(_dit().dit_latent(family)).args[0]


def run(model, family, cond, neg, lat, steps=2, cfg=2.0):
    return testbed.sample(model, cond, neg, lat["samples"], batch_index=lat["batch_index"], steps=steps, cfg=cfg,
                          scheduler=_dit().SCHEDULER[family])


class PreRope:
    """attn1_patch placed before the swap: records the q, k, v, pe core passes (before RoPE)."""

    def __init__(self):
        self.calls = []

    def __deepcopy__(self, memo):
        return self

    def __call__(self, q, k, v, pe=None, attn_mask=None, extra_options=None, **kwargs):
        self.calls.append((q, k, v, pe))
        return {}


class AttentionProbe:
    """Outermost optimized_attention_override: records what each attention call receives and returns,
    calling through whatever override was there (the swap's, for SD3/Lumina2)."""

    def __init__(self, inner):
        self.inner = inner
        self.calls = []

    def __deepcopy__(self, memo):
        return self

    def __call__(self, func, *args, **kwargs):
        out = self.inner(func, *args, **kwargs) if self.inner is not None else func(*args, **kwargs)
        opts = kwargs.get("transformer_options") or {}
        skip = kwargs.get("skip_reshape", False)
        heads = args[3] if len(args) > 3 else kwargs.get("heads")
        self.calls.append({"q": args[0], "k": args[1], "v": args[2], "out": out, "skip": skip, "heads": heads,
                           "cond_or_uncond": tuple(opts.get("cond_or_uncond") or (0,)),
                           "block": (opts.get("block_type"), opts.get("block_index"))})  # as at the call
        return out


def probed(sae, model, family, layers, swap=None, **kw):
    """(swapped model, PreRope, AttentionProbe): the swap built by swap(sae, base, family, layers, **kw)
    (default apply_swap; test_dit_nodes passes the node) between the two recorders."""
    pre = PreRope()
    base = model.clone()
    if HOOK[family] == "attn1_patch":
        base.set_model_attn1_patch(pre)
    m = (swap or apply_swap)(sae, base, family, layers, **kw)
    to = m.model_options["transformer_options"]
    probe = AttentionProbe(to.get("optimized_attention_override"))
    m.model_options["transformer_options"] = {**to, "optimized_attention_override": probe}
    return m, pre, probe


def heads_first(x, heads, skip):
    """(B, H, N, D) from an attention argument or output ((B, N, H*D) unless skip_reshape)."""
    if x.ndim == 4:  # (B, H, N, D) with skip_reshape; SD3's v arrives as (B, N, H, D)
        return x if skip else x.transpose(1, 2)
    b, n, _ = x.shape
    return x.reshape(b, n, heads, -1).transpose(1, 2)


def rope(family, q, k, pe):
    from comfy.ldm.flux.math import apply_rope, apply_rope1

    if family == "qwen_image":
        return apply_rope1(q, pe), apply_rope1(k, pe)
    return apply_rope(q, k, pe)


def image_range(family, tokens, call):
    """Where the swap must act in this attention call, from the test bed's layout (text first, image
    last): (start, end), or None for calls it must leave alone (Z-Image's text-only context refiner and
    image-only noise refiner layers, which run before the main layers)."""
    d = _dit()
    img = d.image_tokens(family)
    if family == "lumina2":
        if call["block"][1] is None:
            return None
        img += (-img) % 32  # Z-Image pads the image tokens to a multiple of 32
        return tokens - img, tokens
    if family == "sd3" and tokens == img:
        return 0, tokens  # MMDiT-X image self-attention (SD3.5 Medium's x_block_self_attn)
    return d.text_tokens(family), d.text_tokens(family) + img


def check_swap_against_reference(sae, family, swap=None):
    """The checks of test_swap_on_real_block_calls_equals_explicit_reference on a swap built by swap
    (probed's argument; default apply_swap) over every joint block, start 0, end 1."""
    sm = sae("sae_math.swap_math")
    model = _dit().tiny_dit(family)
    m, pre, probe = probed(sae, model, family, all_layers(family), swap=swap)
    cond, neg = pair_cond(sae, family, 1, 2), pair_cond(sae, family, 3, 3)
    run(m, family, cond, neg, pairs(sae, family))
    calls = probe.calls
    assert len(calls) == 2 * _dit().attention_calls_per_forward(family), len(calls)
    if HOOK[family] == "attn1_patch":
        assert len(pre.calls) == len(calls)
    worst, checked, bad, differs = 0.0, 0, [], 0
    for n, call in enumerate(calls):
        h = call["heads"]
        q, k, v = (heads_first(call[x], h, call["skip"]) for x in "qkv")
        out = heads_first(call["out"], h, False)
        if HOOK[family] == "attn1_patch":
            q0, k0, v0, pe = pre.calls[n]
            q0, k0 = rope(family, q0, k0, pe)
            assert torch.equal(v, v0)
        else:  # the probe is outside the swap: it sees the unswapped q/k
            q0, k0 = q, k
        where = image_range(family, q.shape[2], call)
        start, end = where if where is not None else (0, q.shape[2])
        rows = q.shape[0]
        kinds = ["positive" if c == 0 else "negative" for c in call["cond_or_uncond"]]
        targets, sources = sm.pair_rows(rows, kinds, {"positive"}) if where is not None else ([], [])
        assert targets or where is None, kinds
        checked += where is not None
        ref = sae("sae_math.joint_swap").explicit_joint_swap_reference(q0, k0, v, start, end, targets, sources)
        err = (out.double() - ref).abs().max().item()
        worst = max(worst, err)
        if err > 1e-5:
            bad.append((n, q.shape[2], where, call["block"], err))
        if HOOK[family] == "attn1_patch":
            index = torch.tensor(sm.row_index(rows, targets, sources))
            qs, ks = sae("sae_math.joint_swap").swap_image_qk(q0, k0, index, start, end)
            assert (q - qs).abs().max() < 1e-6 and (k - ks).abs().max() < 1e-6
            others = [r for r in range(rows) if r not in targets]
            assert torch.equal(q[others], q0[others]) and torch.equal(q[:, :, :start], q0[:, :, :start])
            differs += not torch.equal(q[targets][:, :, start:end], q0[targets][:, :, start:end])
    assert worst < 1e-5, bad
    assert differs or HOOK[family] != "attn1_patch"  # the swap did replace something
    assert checked == 2 * len(all_layers(family)) + (2 * len(_dit()._tiny_dit_config(family).get(
        "x_block_self_attn_layers", [])) if family == "sd3" else 0), checked


@pytest.mark.parametrize("family", _families())
def test_swap_on_real_block_calls_equals_explicit_reference(sae, family):
    """Two euler steps at cfg 2 of a source/target pair with different prompts, swap on every block: at
    every attention call the block's actual output equals the explicit reference (maps from the
    unswapped q/k after RoPE, the source's image-image block on the positive chunk's target rows, their
    own v) to 1e-5; the q/k the attention receives are the unswapped ones (after RoPE) with only the
    positive target rows' image tokens replaced by the source's (swap before RoPE = after RoPE here):
    text tokens, source rows, the negative chunk and v untouched."""
    _require_hooks(family)
    check_swap_against_reference(sae, family)


@pytest.mark.parametrize("family", _families())
def test_identical_prompts_give_a_bit_identical_target(sae, family):
    """Source and target with the same prompt: the swapped sampling's output is bit-identical to the
    unswapped one, and the target equals the source (the copied q/k are the target's own values)."""
    _require_hooks(family)
    model = _dit().tiny_dit(family)
    cond, neg, lat = pair_cond(sae, family, 1, 1), pair_cond(sae, family, 3, 3), pairs(sae, family)
    plain = run(model, family, cond, neg, lat)
    swapped = run(apply_swap(sae, model, family, all_layers(family)), family, cond, neg, lat)
    assert torch.equal(plain, swapped)
    assert torch.equal(swapped[0], swapped[1])


@pytest.mark.parametrize("family", _families())
def test_swap_changes_the_target_only_and_leaves_the_input_model_untouched(sae, family):
    """Different prompts: the swap changes the target (not the source, which is bit-identical to the
    unswapped run), only in the chosen layers (one block: the other blocks' attention inputs of the first
    model call arrive unswapped); the input MODEL's options are unchanged and it samples as before."""
    _require_hooks(family)
    model = _dit().tiny_dit(family)
    before = repr(model.model_options)
    cond, neg, lat = pair_cond(sae, family, 1, 2), pair_cond(sae, family, 3, 3), pairs(sae, family)
    plain = run(model, family, cond, neg, lat)
    layer = all_layers(family)[-1]
    m, pre, probe = probed(sae, model, family, [layer])
    swapped = run(m, family, cond, neg, lat)
    assert torch.equal(swapped[0], plain[0]) and not torch.allclose(swapped[1], plain[1], atol=1e-4)
    per_forward = _dit().attention_calls_per_forward(family)
    for n, (call, where) in enumerate(zip(probe.calls[:per_forward], all_layers(family))):
        if where != layer and HOOK[family] == "attn1_patch":
            q0, _ = rope(family, *pre.calls[n][:2], pre.calls[n][3])
            assert torch.equal(heads_first(call["q"], call["heads"], call["skip"]), q0), where
    assert repr(model.model_options) == before
    assert torch.equal(run(model, family, cond, neg, lat), plain)


@pytest.mark.parametrize("family", _families())
def test_unpaired_batch_is_refused_before_the_model_runs(sae, family):
    """A latent batch of 3 (not source/target pairs) gives the node's NodeInputError naming the sampler's
    latent and 'Make Source/Target Pairs', before any block runs."""
    _require_hooks(family)
    errors = sae("sae_math.errors")
    model = _dit().tiny_dit(family)
    m, pre, probe = probed(sae, model, family, all_layers(family))
    lat = _dit().dit_latent(family, batch=3)
    cond = _dit().tiny_dit_conditioning(family, 1)
    with pytest.raises(errors.NodeInputError, match="Self-Attention Swap: input 'latent_image.*Make Source/Target Pairs"):
        testbed.sample(m, cond, cond, lat["samples"], steps=1, cfg=2.0, scheduler=_dit().SCHEDULER[family])
    assert probe.calls == []
