"""Method A and the swap's adapter interface on Qwen-Image, SD3/3.5 and Lumina2/Z-Image (sae_patches/families:
qwen_image.py, sd3.py, lumina2.py), on tiny models built from ComfyUI's own classes (tests/dit_testbed.py,
with its VARIANTS: Lumina 2.0's grouped-query heads, SD3.5 Medium's MMDiT-X self-attention), sampled by
ComfyUI's samplers. Flux-family models: tests/test_families.py."""

from __future__ import annotations

import pytest
import torch

import dit_testbed
import testbed
from sae_math.direction_window import window_sigmas
from snapshots import snapshot, unchanged

RELATIVE, ABSOLUTE = "relative to token norm", "absolute (paper)"
APPLY = "Apply Latent Direction (timestep window)"
COMPUTE = "Compute Attention Eigendirections"

# Test models: the three families plus two layouts of the same classes.
MODELS = ("qwen_image", "sd3", "lumina2", "lumina2_gqa", "sd35_medium")
FAMILY = {"qwen_image": "qwen_image", "sd3": "sd3", "lumina2": "lumina2", "lumina2_gqa": "lumina2",
          "sd35_medium": "sd3"}
ADAPTER = {"qwen_image": "qwen_image", "sd3": "sd3", "lumina2": "lumina2"}
CONFIG_CLASS = {"qwen_image": "QwenImage", "sd3": "SD3", "lumina2": "ZImage"}
# The hook names install_joint_swap takes (tests/test_dit_swap.py HOOK).
HOOK = {"qwen_image": "attn1_patch", "sd3": "mmdit", "lumina2": "lumina"}


def tiny(name, seed=0):
    return dit_testbed.tiny_variant(name, seed) if name in dit_testbed.VARIANTS else dit_testbed.tiny_dit(name, seed)


def compute(sae, model, layers="all", k=3, custom=""):
    return sae("nodes.node_directions").ComputeAttentionEigendirections.execute(model, layers, k, custom).args[0]


def apply(sae, model, directions, index=0, alpha=0.3, start=0.5, end=0.8, scale=RELATIVE, layers="", sweep=""):
    return sae("nodes.node_apply").ApplyLatentDirection.execute(
        model, directions, index, alpha, start, end, scale, layers, sweep).args[0]


def expect_error(sae, fn, node_name, input_name, *phrases):
    errors = sae("sae_math.errors")
    with pytest.raises(errors.NodeInputError) as info:
        fn()
    msg = str(info.value)
    assert msg.startswith(f"{node_name}: input '{input_name}'"), msg
    for phrase in phrases:
        assert phrase in msg, (phrase, msg)
    return msg


def image_linears(model):
    """{layer key: [q/k/v Linears of the image tokens]} read from the tiny model's modules (the test's own
    map of ComfyUI's code, independent of the adapters)."""
    dm = model.model.diffusion_model
    name = type(dm).__name__
    if name == "QwenImageTransformer2DModel":
        return {f"double.{i}": [b.attn.to_q, b.attn.to_k, b.attn.to_v] for i, b in enumerate(dm.transformer_blocks)}
    if name == "NextDiT":
        return {f"double.{i}": [b.attention.qkv] for i, b in enumerate(dm.layers)}
    out = {}
    for i, b in enumerate(dm.joint_blocks):
        out[f"double.{i}"] = [b.x_block.attn.qkv]
        if b.x_block.x_block_self_attn:
            out[f"double.{i}.1"] = [b.x_block.attn2.qkv]
    return out


def text_linears(model):
    """Linears that see text tokens only (must never change): Qwen-Image's add_*_proj, SD3's context_block qkv,
    Z-Image's context refiner qkv."""
    dm = model.model.diffusion_model
    name = type(dm).__name__
    if name == "QwenImageTransformer2DModel":
        return [m for b in dm.transformer_blocks for m in (b.attn.add_q_proj, b.attn.add_k_proj, b.attn.add_v_proj)]
    if name == "NextDiT":
        return [b.attention.qkv for b in dm.context_refiner] + [b.attention.qkv for b in dm.noise_refiner]
    return [b.context_block.attn.qkv for b in dm.joint_blocks]


def image_rows(name, length, latent_shape):
    """The image rows of a q/k/v input of `length` tokens, from the test bed's layout: Qwen-Image's image
    stream and SD3's x_block hold the image tokens only; Z-Image's main layers end with the image tokens
    padded to a multiple of 32 (the pad tokens are not image tokens)."""
    h, w = latent_shape[-2], latent_shape[-1]
    n = -(-h // 2) * -(-w // 2)
    if FAMILY[name] == "lumina2":
        padded = n + (-n) % 32
        return slice(length - padded, length - padded + n)
    # Qwen-Image-Edit's reference tokens follow the image tokens in the image stream (never in SD3)
    assert length == n or (FAMILY[name] == "qwen_image" and length > n), (name, length, n)
    return slice(0, n)


# ---------------------------------------------------------------------------------------------------
# Which adapter, which layers, where the weights are

@pytest.mark.parametrize("name", MODELS)
def test_layers_and_qkv_sources(sae, name):
    """Each family gets its adapter; layers are its joint blocks ("double.i"; SD3.5 Medium's x_block.attn2
    as "double.i.1"), width = the q/k/v input width; q/k/v are Qwen-Image's separate to_q/to_k/to_v, SD3's
    fused x_block qkv rows q|k|v, Lumina2's fused qkv rows Hq*Dh | Hkv*Dh | Hkv*Dh (grouped-query: the k and
    v ranges are smaller than q's)."""
    model = tiny(name)
    adapter = sae("sae_patches.families").adapter_for(model, COMPUTE)
    assert adapter.name == ADAPTER[FAMILY[name]]
    linears = image_linears(model)
    layers = adapter.layers()
    assert [x.key for x in layers] == list(linears)
    for layer in layers:
        source = adapter.qkv_source(layer)
        mods = linears[layer.key]
        assert layer.width == mods[0].in_features and layer.level == 0
        paths = {id(m): p for p, m in model.model.diffusion_model.named_modules()}
        assert source.keys == tuple(f"diffusion_model.{paths[id(m)]}.weight" for m in mods)
        if FAMILY[name] == "qwen_image":
            assert source.rows is None
        elif FAMILY[name] == "sd3":
            d = layer.width
            assert source.rows == ((0, d), (d, 2 * d), (2 * d, 3 * d))
        else:
            attn = mods[0]
            block = model.model.diffusion_model.layers[int(layer.key.split(".")[1])].attention
            q, kv = block.n_local_heads * block.head_dim, block.n_local_kv_heads * block.head_dim
            assert source.rows == ((0, q), (q, q + kv), (q + kv, q + 2 * kv)) and attn.out_features == q + 2 * kv
            if name == "lumina2_gqa":
                assert kv < q
    if name == "sd35_medium":
        assert [x.key for x in layers] == ["double.0", "double.0.1", "double.1"]


@pytest.mark.parametrize("name", ("qwen_image", "sd35_medium", "lumina2"))
def test_presets(sae, name):
    """'all' and the FPE default select every layer; a custom list selects by block ('double.0' takes SD3.5
    Medium's attn2 layer with it); UNet presets are refused naming what to choose; the swap's blocks are
    the (block_type, index) pairs of the chosen layers, each once."""
    model = tiny(name)
    adapter = sae("sae_patches.families").adapter_for(model, COMPUTE)
    layers = adapter.layers()
    keys = [x.key for x in layers]
    assert [x.key for x in adapter.select(layers, "all")] == keys
    assert [x.key for x in adapter.select(layers, "below latent resolution (FPE default)")] == keys
    chosen = adapter.select(layers, "custom list", "double.0")
    assert [x.key for x in chosen] == [k for k in keys if k.startswith("double.0")]
    assert adapter.swap_layers(chosen) == [("double", 0)]
    assert adapter.swap_layers(layers) == [("double", i) for i in range(2)]
    for preset in ("middle block", "input blocks", "output blocks", "latent resolution", "lowest resolution"):
        with pytest.raises(ValueError, match="choose 'all' or 'custom list'"):
            adapter.select(layers, preset)
    expect_error(sae, lambda: compute(sae, model, "middle block"), COMPUTE, "layers", "names a part of a UNet")


# ---------------------------------------------------------------------------------------------------
# Directions

@pytest.mark.parametrize("name", MODELS)
def test_directions_equal_float64_reference(sae, name):
    """Directions (through the Compute node) are the top eigenvectors of C = sum of W^T W over the image
    stream's q, k and v weights (all rows of to_q/to_k/to_v; of SD3's qkv; of Lumina2's grouped-query qkv,
    whose rows are exactly q, k, v), within the solver's angle bound of a float64 eigendecomposition,
    eigenvalues to 1e-5, sign canonical, family recorded."""
    eigen = sae("sae_math.eigen")
    model = tiny(name)
    d = compute(sae, model, "all", k=4)
    assert d.model_family == CONFIG_CLASS[FAMILY[name]]
    linears = image_linears(model)
    assert d.keys == list(linears)
    for layer in d.layers:
        c = sum(m.weight.detach().double().T @ m.weight.detach().double() for m in linears[layer.key])
        values, vectors = torch.linalg.eigh(c)
        ref_values, ref_vectors = values.flip(0)[:4], vectors.flip(1)[:, :4].T
        assert torch.allclose(layer.values.double(), ref_values, rtol=1e-5), layer.key
        assert testbed.principal_angles(layer.vectors, ref_vectors).max() <= eigen.ANGLE_TOL, layer.key
        top = layer.vectors.abs().argmax(dim=1)
        assert (layer.vectors[torch.arange(4), top] > 0).all()


# ---------------------------------------------------------------------------------------------------
# Apply: exactly the image tokens' q/k/v inputs, inside the window

class Recorder:
    """Forward hooks on the test's own tiny model: every image q/k/v Linear's and text Linear's input and
    output per model call; the call's sigmas and latent shape from an APPLY_MODEL wrapper on the sampled
    clone (registered through the patcher)."""

    def __init__(self, model):
        self.calls = []  # (sigmas (rows,), latent shape, {layer key: [(x, out) per Linear]}, [(linear, x, out)])
        self.handles = []
        for key, mods in image_linears(model).items():
            for i, m in enumerate(mods):
                self.handles.append(m.register_forward_hook(self._image(key, i, len(mods))))
        for m in text_linears(model):
            self.handles.append(m.register_forward_hook(self._text))

    def wrap(self, clone):
        import comfy.patcher_extension as pe

        m = clone.clone()

        def start(executor, x, t, *args, **kwargs):
            self.calls.append((t.detach().clone(), tuple(x.shape), {}, []))
            return executor(x, t, *args, **kwargs)

        m.add_wrapper_with_key(pe.WrappersMP.APPLY_MODEL, "test.recorder", start)
        return m

    def _image(self, key, i, n):
        def hook(_module, args, out):
            slot = self.calls[-1][2].setdefault(key, [None] * n)
            slot[i] = (args[0].detach().clone(), out.detach().clone())
        return hook

    def _text(self, module, args, out):
        if self.calls:
            self.calls[-1][3].append((module, args[0].detach().clone(), out.detach().clone()))

    def remove(self):
        for h in self.handles:
            h.remove()


def check_exact_edit(sae, name, sampler, scale, size=None, steps=6, references=None):
    """Sample with an Apply node (alpha per latent 0.4, -0.7; window 0.5..0.8; cfg 2: cond and uncond rows) and
    check every recorded Linear call against W x + b: image rows of the q/k/v Linears moved by
    alpha * s * W n, all else bit-identical. Returns (calls inside the window, calls outside, worst error)."""
    family = FAMILY[name]
    model = tiny(name)
    d = compute(sae, model, "all", k=2)
    edited = apply(sae, model, d, index=1, start=0.5, end=0.8, scale=scale, sweep="0.4, -0.7")
    low, high = window_sigmas(model.get_model_object("model_sampling"), 0.5, 0.8)
    cond, neg = dit_testbed.tiny_dit_conditioning(family, 1), dit_testbed.tiny_dit_conditioning(family, 2)
    if references is not None:  # on the positive prompt only: cond and uncond run as separate calls
        cond = [[cond[0][0], {**cond[0][1], "reference_latents": references}]]
    recorder = Recorder(model)
    try:
        dit_testbed.sample(recorder.wrap(edited), family, cond, neg, dit_testbed.dit_latent(family, batch=2, size=size),
                           steps=steps, cfg=2.0, sampler=sampler)
    finally:
        recorder.remove()
    linears = image_linears(model)
    inside_calls = outside_calls = 0
    worst = 0.0
    lengths = set()
    for sigmas, shape, layers, texts in recorder.calls:
        assert set(layers) == set(linears)
        rows = sigmas.shape[0]
        inside = (sigmas.double() > low) & (sigmas.double() < high)
        alphas = torch.tensor([0.4, -0.7] * (rows // 2), dtype=torch.float64) * inside
        inside_calls += int(inside.all())
        outside_calls += int(not inside.any())
        for key, seen in layers.items():
            n = d.layer(key).vectors[1].double()
            for linear, (x, out) in zip(linears[key], seen):
                plain = torch.nn.functional.linear(x, linear.weight, linear.bias)
                img = image_rows(name, x.shape[1], shape)
                lengths.add(x.shape[1])
                z = x[:, img].double()
                s = z.norm(dim=-1).mean(dim=-1) if scale == RELATIVE else torch.ones(rows, dtype=torch.float64)
                want = torch.zeros_like(out, dtype=torch.float64)
                want[:, img] = (alphas * s)[:, None, None] * (linear.weight.detach().double() @ n)[None, None, :]
                region = torch.zeros_like(out, dtype=torch.bool)
                region[inside.nonzero().flatten()[:, None], img] = True
                assert torch.equal(out[~region], plain[~region]), key  # text, padding, outside: bit for bit
                err = ((out.double() - plain.double()) - want).abs().max().item()
                worst = max(worst, err)
                assert err <= 1e-5 * (1 + want.abs().max().item()), (key, err)
        for linear, x, out in texts:
            assert torch.equal(out, torch.nn.functional.linear(x, linear.weight, linear.bias))
    assert sae("sae_patches.direction_patch").current_call() is None
    check_exact_edit.lengths = lengths
    return inside_calls, outside_calls, worst


@pytest.mark.parametrize("name,sampler,scale,size", [
    ("qwen_image", "euler", RELATIVE, None), ("qwen_image", "heun", ABSOLUTE, None),
    ("sd3", "euler", RELATIVE, None), ("sd35_medium", "heun", RELATIVE, None),
    ("lumina2", "euler", RELATIVE, 14), ("lumina2_gqa", "heun", ABSOLUTE, 14)])
def test_apply_edits_exactly_the_image_qkv_inside_the_window(sae, name, sampler, scale, size):
    """On a real sampling run (cfg 2: cond and uncond rows; two latents with different alphas; euler and the
    2-eval heun): every image q/k/v Linear's output differs from W x + b by exactly alpha * s * W n on the
    image rows of the calls whose sigma is inside the window and is bit-identical everywhere else (Z-Image:
    its text rows and the pad tokens after the image, on a 14x14 latent of 49 tokens padded to 64); the
    text-only Linears (Qwen-Image add_*_proj, SD3 context_block qkv, Z-Image's refiners) never change."""
    inside, outside, worst = check_exact_edit(sae, name, sampler, scale, size)
    assert inside and outside, (inside, outside)


def test_apply_leaves_qwen_image_edit_reference_tokens_alone(sae):
    """Qwen-Image-Edit reference latents (a 6x10 reference on the positive prompt only, appended after the
    image tokens in the image stream): the reference rows keep their to_q/to_k/to_v outputs bit for bit in
    every call, the image rows move exactly."""
    inside, outside, _worst = check_exact_edit(sae, "qwen_image", "euler", RELATIVE,
                                               references=[torch.randn(1, 16, 1, 6, 10)])
    n = dit_testbed.image_tokens("qwen_image")
    assert inside and outside and check_exact_edit.lengths == {n, n + 15}, check_exact_edit.lengths  # 3x5 patches


def test_chained_apply_nodes_add_their_edits(sae):
    """Two Apply nodes on Qwen-Image: one object patch per to_q/to_k/to_v carries both edits, and the image
    rows move by a1 W n1 + a2 W n2 (absolute scale) over the whole run; the first node's MODEL keeps one."""
    model = tiny("qwen_image")
    d = compute(sae, model, "all", k=2)
    first = apply(sae, model, d, index=0, alpha=0.5, start=0.0, end=1.0, scale=ABSOLUTE)
    both = apply(sae, first, d, index=1, alpha=-0.3, start=0.0, end=1.0, scale=ABSOLUTE)
    name = "diffusion_model.transformer_blocks.0.attn.to_k.forward"
    assert len(first.object_patches[name].edits) == 1 and len(both.object_patches[name].edits) == 2
    recorder = Recorder(model)
    try:
        dit_testbed.sample(recorder.wrap(both), "qwen_image", dit_testbed.tiny_dit_conditioning("qwen_image", 1),
                           dit_testbed.tiny_dit_conditioning("qwen_image", 2), dit_testbed.dit_latent("qwen_image"),
                           steps=2)
    finally:
        recorder.remove()
    for _s, _shape, layers, _t in recorder.calls:
        for key, seen in layers.items():
            n = 0.5 * d.layer(key).vectors[0].double() - 0.3 * d.layer(key).vectors[1].double()
            for linear, (x, out) in zip(image_linears(model)[key], seen):
                diff = out.double() - torch.nn.functional.linear(x, linear.weight, linear.bias).double()
                assert torch.allclose(diff, (linear.weight.double() @ n).expand_as(diff), atol=1e-5)


@pytest.mark.parametrize("name", ("qwen_image", "sd3", "lumina2"))
def test_apply_leaves_the_input_model_untouched(sae, name):
    """Apply returns a clone carrying object patches on exactly the image q/k/v Linears; the input MODEL
    (state dict, object patches, options) is as it was before and after sampling the clone, and samples
    bit-identically to before; the edit changes the output."""
    model = tiny(name)
    d = compute(sae, model, "all", k=2)
    cond, neg = dit_testbed.tiny_dit_conditioning(name, 1), dit_testbed.tiny_dit_conditioning(name, 2)
    latent = dit_testbed.dit_latent(name)
    plain = dit_testbed.sample(model, name, cond, neg, latent, steps=3)
    before = snapshot(model)
    edited = apply(sae, model, d, alpha=0.8, start=0.0, end=1.0)
    assert unchanged(before, model) and not model.object_patches
    paths = {id(m): p for p, m in model.model.diffusion_model.named_modules()}
    assert set(edited.object_patches) == {f"diffusion_model.{paths[id(m)]}.forward"
                                          for mods in image_linears(model).values() for m in mods}
    out = dit_testbed.sample(edited, name, cond, neg, latent, steps=3)
    assert not torch.allclose(out, plain)
    assert unchanged(before, model)
    assert torch.equal(dit_testbed.sample(model, name, cond, neg, latent, steps=3), plain)


# ---------------------------------------------------------------------------------------------------
# Bad inputs

@pytest.mark.parametrize("source,target,phrase", [
    ("qwen_image", "flux", "computed on a QwenImage model but this model is Flux"),  # same keys and widths
    ("sd3", "qwen_image", "do not exist with the same width"),
    ("lumina2", "sd3", "do not exist with the same width"),
    ("flux", "lumina2", "do not exist with the same width"),
    ("sd35_medium", "sd3", "do not exist with the same width")])
def test_directions_of_another_family_are_refused(sae, source, target, phrase):
    """Directions computed on one family given to another's Apply: the clear error before sampling (layer
    keys/widths missing, or the same keys and widths of another family), neither input changed."""
    d = compute(sae, tiny(source), "all", k=2)
    model = tiny(target)
    before = snapshot(model)
    expect_error(sae, lambda: apply(sae, model, d), APPLY, "directions", phrase)
    assert unchanged(before, model) and not model.object_patches


# ---------------------------------------------------------------------------------------------------
# The swap through what the adapters provide

def _skip_without_swap_hooks(adapter):
    base = testbed.pack_module("sae_patches.families.base")
    need, have = adapter.min_comfyui.get("swap"), base.comfyui_version()
    if need is not None and (have is None or have < need):
        missing = {"qwen_image": "attn1_patch in its blocks", "lumina2": "block_index in its transformer_options"}
        pytest.skip(f"ComfyUI {base.version_text(have)}: {adapter.display} has no {missing[adapter.name]} (the "
                    f"swap hook needs ComfyUI {base.version_text(need)})")


class CallProbe:
    """attn1_patch (Qwen-Image) or outermost optimized_attention_override (SD3, Lumina2) recording each
    attention call's options and q length; changes nothing."""

    def __init__(self, inner=None):
        self.inner = inner
        self.calls = []

    def __deepcopy__(self, memo):
        return self

    def __call__(self, *args, **kwargs):
        if "extra_options" in kwargs:  # attn1_patch(q, k, v, pe=, attn_mask=, extra_options=)
            self.calls.append((dict(kwargs["extra_options"]), args[0].shape[2]))
            return {}
        func, q = args[0], args[1]
        opts = kwargs.get("transformer_options") or {}
        skip = kwargs.get("skip_reshape", len(args) > 7 and args[7])
        self.calls.append((dict(opts), q.shape[2] if skip else q.shape[1]))
        return self.inner(*args, **kwargs) if self.inner is not None else func(*args[1:], **kwargs)


def _swapped(sae, model, adapter, layers, via_adapter=True):
    import comfy.patcher_extension as pe

    sp = sae("sae_patches.swap_patch")
    window = sp.SwapWindow(0.0, 1.0, False, fallback_sampling=model.get_model_object("model_sampling"))
    m = model.clone()
    if via_adapter:
        adapter.install_swap(m, layers, window)
    else:
        sae("sae_patches.dit_swap").install_joint_swap(m, HOOK[adapter.name], [("double", i) for i in range(2)], window)
    m.add_wrapper_with_key(pe.WrappersMP.PREDICT_NOISE, sp.ROLES_WRAPPER_KEY, sp.GuiderCondsWrapper())
    m.add_wrapper_with_key(pe.WrappersMP.CALC_COND_BATCH, sp.ROLES_WRAPPER_KEY, sp.ChunkRolesWrapper())
    return m


def _pair(sae, family, a, b):
    return sae("nodes.node_swap").PairConditioning.execute(dit_testbed.tiny_dit_conditioning(family, a),
                                                           dit_testbed.tiny_dit_conditioning(family, b)).args[0]


def _run(model, family, cond, neg, lat):
    return testbed.sample(model, cond, neg, lat["samples"], batch_index=lat["batch_index"], steps=2, cfg=2.0,
                          scheduler=dit_testbed.SCHEDULER[family])


@pytest.mark.parametrize("name", ("qwen_image", "sd35_medium", "lumina2"))
def test_swap_through_the_adapter(sae, name):
    """The adapter's hook name is the one install_joint_swap takes for the family; its install_swap on every
    layer samples bit-identically to install_joint_swap on every block (the path tests/test_dit_swap.py checks
    against the explicit reference) and changes the target, not the source; at every attention call of the
    chosen blocks layer_for_call names the block and image_token_slice is the test bed's image range (text
    before it; Z-Image's pad tokens after it), and the input MODEL is untouched."""
    family = FAMILY[name]
    model = tiny(name)
    adapter = sae("sae_patches.families").adapter_for(model, COMPUTE)
    _skip_without_swap_hooks(adapter)
    assert adapter.attention_hook() == HOOK[family]
    before = repr(model.model_options)
    cond, neg = _pair(sae, family, 1, 2), _pair(sae, family, 3, 3)
    lat = sae("nodes.node_swap").MakePairs.execute(dit_testbed.dit_latent(family)).args[0]
    plain = _run(model, family, cond, neg, lat)
    m = _swapped(sae, model, adapter, adapter.layers())
    probe = CallProbe()
    if family == "qwen_image":
        m.set_model_attn1_patch(probe)
    else:
        to = m.model_options["transformer_options"]
        probe.inner = to.get("optimized_attention_override")
        m.model_options["transformer_options"] = {**to, "optimized_attention_override": probe}
    swapped = _run(m, family, cond, neg, lat)
    reference = _run(_swapped(sae, model, adapter, None, via_adapter=False), family, cond, neg, lat)
    assert torch.equal(swapped, reference)
    assert torch.equal(swapped[0], plain[0]) and not torch.allclose(swapped[1], plain[1], atol=1e-4)
    n = dit_testbed.image_tokens(family)
    text = dit_testbed.text_tokens(family)
    seen = set()
    for opts, length in probe.calls:
        key = adapter.layer_for_call(opts)
        if key is None:
            assert family == "lumina2" and length in (text, n)  # Z-Image's refiners: not layers
            continue
        seen.add(key)
        got = adapter.image_token_slice(opts, length)
        if family == "sd3" and length == n:
            assert (got.start, got.stop) == (0, n)  # MMDiT-X image self-attention
        else:
            assert (got.start, got.stop) == (text, text + n), (key, length, got)
            assert length >= got.stop
    assert seen == {"double.0", "double.1"}
    assert repr(model.model_options) == before
