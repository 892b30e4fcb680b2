"""The model-family layer (sae_patches/families) and Method A on the Flux family (Flux.1, Flux.2, Chroma),
on tiny models built from ComfyUI's own classes (tests/dit_testbed.py), sampled by ComfyUI's samplers."""

from __future__ import annotations

import pytest
import torch

import dit_testbed
import testbed
from sae_math.direction_window import window_sigmas
from snapshots import snapshot, unchanged

FLUX_FAMILIES = ("flux", "flux2", "chroma")
CONFIG_CLASS = {"flux": "Flux", "flux2": "Flux2", "chroma": "Chroma"}
RELATIVE, ABSOLUTE = "relative to token norm", "absolute (paper)"
APPLY = "Apply Latent Direction (timestep window)"
COMPUTE = "Compute Attention Eigendirections"


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


def qkv_linears(model):
    """{layer key: (the q/k/v Linear, whether it carries text rows too)} of a tiny Flux-family model."""
    dm = model.model.diffusion_model
    out = {f"double.{i}": (b.img_attn.qkv, False) for i, b in enumerate(dm.double_blocks)}
    out.update({f"single.{i}": (b.linear1, True) for i, b in enumerate(dm.single_blocks)})
    return out


# ---------------------------------------------------------------------------------------------------
# Which adapter, which layers, where the weights are

@pytest.mark.parametrize("family", FLUX_FAMILIES)
def test_flux_family_layers_and_qkv_rows(sae, family):
    """A Flux-family model gets the Flux adapter: its double then single blocks as layers "double.i" /
    "single.i" of width D at level 0, and q/k/v as the first 3D rows of img_attn.qkv / linear1."""
    model = dit_testbed.tiny_dit(family)
    adapter = sae("sae_patches.families").adapter_for(model, COMPUTE)
    assert adapter.name == "flux"
    d = model.model.diffusion_model.hidden_size
    layers = adapter.layers()
    assert [x.key for x in layers] == ["double.0", "double.1", "single.0", "single.1"]
    assert {(x.width, x.level) for x in layers} == {(d, 0)}
    double, single = adapter.qkv_source(layers[0]), adapter.qkv_source(layers[2])
    assert double.keys == ("diffusion_model.double_blocks.0.img_attn.qkv.weight",)
    assert single.keys == ("diffusion_model.single_blocks.0.linear1.weight",)
    assert double.rows == single.rows == ((0, d), (d, 2 * d), (2 * d, 3 * d))
    assert model.model.diffusion_model.single_blocks[0].linear1.weight.shape[0] > 3 * d  # the MLP rows follow


def test_unet_adapter_keeps_the_unet_layers(sae):
    """The UNet adapter answers what the pack always found on an SD1.5 UNet: 16 attn1 layers, separate
    to_q/to_k/to_v weights."""
    model = testbed.tiny_model("sd15")
    adapter = sae("sae_patches.families").adapter_for(model, COMPUTE)
    assert adapter.name == "unet"
    layers = adapter.layers()
    assert [x.key for x in layers] == [x.key for x in sae("sae_patches.weights").model_layers(model)]
    source = adapter.qkv_source(layers[0])
    assert source.rows is None and [k.rsplit(".", 2)[-2] for k in source.keys] == ["to_q", "to_k", "to_v"]


def test_unknown_family_is_refused_naming_model_and_families(sae):
    """A MODEL whose family the pack does not know (AuraFlow's MMDiT here): every model node names itself,
    the model's class and the supported families."""
    model = dit_testbed.tiny_unknown_dit()
    for fn, name in ((lambda: compute(sae, model), COMPUTE),):
        expect_error(sae, fn, name, "model", "'AuraFlow'", "supported: SD1.x, SD2.x and SDXL UNets", "Flux.1",
                     "Qwen-Image", "SD3", "Z-Image")


@pytest.mark.parametrize("family", ("flux",))
def test_flux_presets(sae, family):
    """'all' and the FPE default select every block; a custom list selects by block kind or block; UNet
    presets are refused with the reason and what to choose instead."""
    model = dit_testbed.tiny_dit(family)
    adapter = sae("sae_patches.families").adapter_for(model, COMPUTE)
    layers = adapter.layers()
    keys = [x.key for x in layers]
    assert [x.key for x in adapter.select(layers, "all")] == keys
    assert [x.key for x in adapter.select(layers, "below latent resolution (FPE default)")] == keys
    assert [x.key for x in adapter.select(layers, "custom list", "single, double.1")] == ["double.1", "single.0",
                                                                                        "single.1"]
    for preset in ("middle block", "input blocks", "output blocks", "latent resolution", "lowest resolution"):
        with pytest.raises(ValueError, match="choose 'all' or 'custom list'"):
            adapter.select(layers, preset)
    expect_error(sae, lambda: compute(sae, model, "middle block"), COMPUTE, "layers", "names a part of a UNet")


# ---------------------------------------------------------------------------------------------------
# Directions

@pytest.mark.parametrize("family", FLUX_FAMILIES)
def test_flux_directions_equal_float64_reference(sae, family):
    """Directions on every double and single block are the top eigenvectors of C = W^T W over the image
    stream's q/k/v rows (img_attn.qkv; linear1's first 3D rows only), within the solver's angle bound of a
    float64 eigendecomposition, eigenvalues to 1e-5, sign canonical, family recorded."""
    eigen = sae("sae_math.eigen")
    model = dit_testbed.tiny_dit(family)
    d = compute(sae, model, "all", k=4)
    assert d.model_family == CONFIG_CLASS[family]
    linears = qkv_linears(model)
    assert d.keys == list(linears)
    width = model.model.diffusion_model.hidden_size
    for layer in d.layers:
        w = linears[layer.key][0].weight.detach().double()[: 3 * width]
        values, vectors = torch.linalg.eigh(w.T @ w)
        ref_values, ref_vectors = values.flip(0)[:4], vectors.flip(1)[:, :4].T
        assert torch.allclose(layer.values.double(), ref_values, rtol=1e-5), layer.key
        assert testbed.principal_angles(layer.vectors, ref_vectors).max() <= eigen.ANGLE_TOL, layer.key
        top = layer.vectors.abs().argmax(dim=1)
        assert (layer.vectors[torch.arange(4), top] > 0).all()  # largest-magnitude coordinate positive
        assert (layer.width, layer.level) == (width, 0)


def test_flux_directions_exclude_the_mlp_rows(sae):
    """Changing linear1's MLP rows (through a weight patch, as a LoRA would) leaves a single block's
    directions as they were; changing its q rows changes them: only the attention rows define C."""
    model = dit_testbed.tiny_dit("flux")
    base = compute(sae, model, "custom list", k=3, custom="single.0")
    weight = model.model.diffusion_model.single_blocks[0].linear1.weight
    d = model.model.diffusion_model.hidden_size
    key = "diffusion_model.single_blocks.0.linear1.weight"
    mlp_only, q_too = model.clone(), model.clone()
    bump = torch.zeros_like(weight)
    bump[3 * d:] = 0.5
    mlp_only.add_patches({key: (bump,)}, 1.0)
    bump_q = torch.zeros_like(weight)
    bump_q[:d] = torch.randn(d, weight.shape[1], generator=torch.Generator().manual_seed(3))
    q_too.add_patches({key: (bump_q,)}, 1.0)
    assert torch.equal(compute(sae, mlp_only, "custom list", k=3, custom="single.0").layers[0].vectors,
                       base.layers[0].vectors)
    assert not torch.allclose(compute(sae, q_too, "custom list", k=3, custom="single.0").layers[0].values,
                              base.layers[0].values)


def test_flux_directions_save_and_load(sae, tmp_path):
    """Flux directions go through the same file format: keys, values, vectors and model_family survive."""
    directions = sae("sae_math.directions")
    d = compute(sae, dit_testbed.tiny_dit("flux"), "all", k=2)
    path = tmp_path / "flux.safetensors"
    d.save(str(path))
    back = directions.AttnDirections.load(str(path))
    assert back.model_family == "Flux" and back.keys == d.keys
    for a, b in zip(back.layers, d.layers):
        assert torch.equal(a.vectors, b.vectors) and torch.equal(a.values, b.values) and a.width == b.width


# ---------------------------------------------------------------------------------------------------
# Apply on Flux: exactly the image tokens' q/k/v inputs, inside the window

class LinearRecorder:
    """Forward hooks on the test's own tiny model: each q/k/v Linear's input and output per model call,
    with the sigma of that call (a pre-hook on the diffusion model: Flux is fed t = sigma)."""

    def __init__(self, model):
        self.calls = []  # (sigma per row (tensor), reference tokens, {layer key: (x, out)})
        self.handles = []
        dm = model.model.diffusion_model
        self.patch = dm.patch_size
        self.handles.append(dm.register_forward_pre_hook(self._start, with_kwargs=True))
        for key, (linear, _) in qkv_linears(model).items():
            self.handles.append(linear.register_forward_hook(self._hook(key)))

    def _start(self, _module, args, kwargs):
        refs = kwargs.get("ref_latents") or ()
        tokens = sum(-(-r.shape[-2] // self.patch) * -(-r.shape[-1] // self.patch) for r in refs)
        self.calls.append((args[1].detach().clone(), tokens, {}))

    def _hook(self, key):
        def hook(_module, args, out):
            self.calls[-1][2][key] = (args[0].detach().clone(), out.detach().clone())
        return hook

    def remove(self):
        for h in self.handles:
            h.remove()


def expected_shift(x, linear, direction, alphas, relative, rows_slice, width):
    """alpha_r * s_r * W[:3D] n for every row r on the image rows (s_r: mean norm of its image rows of x)."""
    z = x[:, rows_slice].double()
    scale = z.norm(dim=-1).mean(dim=-1) if relative else torch.ones(z.shape[0], dtype=torch.float64)
    wn = linear.weight.detach().double()[: 3 * width] @ direction.double()
    return (alphas.double() * scale)[:, None, None] * wn[None, None, :]


def check_exact_edit(sae, family, sampler, scale, cond, neg, batch=2):
    """Sample with an Apply node (alpha per latent: 0.4, -0.7; window 0.5..0.8) and check every recorded q/k/v
    Linear call against W x + b: the edit region moved by alpha * s * W n, the rest bit-identical.
    Returns (calls inside the window, calls outside, the set of reference-token counts seen)."""
    model = dit_testbed.tiny_dit(family)
    d = compute(sae, model, "all", k=2)
    edited = apply(sae, model, d, index=1, start=0.5, end=0.8, scale=scale, sweep="0.4, -0.7")
    low, high = window_sigmas(model.get_model_object("model_sampling"), 0.5, 0.8)
    width = model.model.diffusion_model.hidden_size
    image = dit_testbed.image_tokens(family)
    recorder = LinearRecorder(model)
    try:
        dit_testbed.sample(edited, family, cond, neg, dit_testbed.dit_latent(family, batch=batch), steps=6, cfg=2.0,
                           sampler=sampler)
    finally:
        recorder.remove()
    inside_calls = outside_calls = 0
    linears = qkv_linears(model)
    for sigmas, reference, layers in recorder.calls:
        assert set(layers) == set(linears)
        rows = sigmas.shape[0]
        # compared in float64, as the patch compares the host value of each float32 sigma
        inside = (sigmas.double() > low) & (sigmas.double() < high)
        alphas = torch.tensor([0.4, -0.7] * (rows // 2)) * inside
        inside_calls += int(inside.all())
        outside_calls += int(not inside.any())
        for key, (x, out) in layers.items():
            linear, joint = linears[key]
            plain = torch.nn.functional.linear(x, linear.weight, linear.bias)
            length = x.shape[1]
            img = slice(length - reference - image, length - reference)
            if not joint:
                assert length == image + reference  # the double blocks' image stream: image + reference rows
            diff = out.double() - plain.double()
            want = torch.zeros_like(diff)
            edit_region = torch.zeros_like(diff, dtype=torch.bool)
            if inside.any():
                vector = d.layer(key).vectors[1]
                want[:, img, : 3 * width] = expected_shift(x, linear, vector, alphas, scale == RELATIVE, img, width)
                edit_region[inside.nonzero().flatten()[:, None], img, : 3 * width] = True
            assert torch.equal(out[~edit_region], plain[~edit_region]), key  # untouched: bit for bit
            assert torch.allclose(diff, want, atol=1e-5 * (1 + want.abs().max().item())), key
    assert sae("sae_patches.direction_patch").current_call() is None  # the call context ends with the call
    return inside_calls, outside_calls, {reference for _s, reference, _l in recorder.calls}


@pytest.mark.parametrize("family,sampler,scale", [("flux", "euler", RELATIVE), ("flux", "heun", ABSOLUTE),
                                                  ("flux2", "dpmpp_2m", RELATIVE), ("chroma", "euler", RELATIVE)])
def test_apply_edits_exactly_the_image_qkv_inside_the_window(sae, family, sampler, scale):
    """On a real sampling run (cfg 2: cond and uncond rows; two latents with different alphas): every q/k/v
    Linear's output differs from W x + b by exactly alpha * s * W n (q, k, v columns) on the image rows of
    the calls whose sigma is inside the window, and is bit-identical everywhere else: text rows, the
    MLP columns of linear1, the calls outside the window."""
    cond, neg = dit_testbed.tiny_dit_conditioning(family, 1), dit_testbed.tiny_dit_conditioning(family, 2)
    inside, outside, references = check_exact_edit(sae, family, sampler, scale, cond, neg)
    assert inside and outside and references == {0}, (inside, outside, references)


def test_apply_leaves_reference_image_tokens_alone(sae):
    """Flux Kontext-style reference latents (a 6x10 reference on the positive prompt only: cond and uncond
    then run as separate calls with different sequences): the reference tokens after the image tokens keep
    their q/k/v in every call, the image tokens move exactly."""
    cond = dit_testbed.tiny_dit_conditioning("flux", 1)
    cond = [[cond[0][0], {**cond[0][1], "reference_latents": [torch.randn(1, 16, 6, 10)]}]]
    inside, outside, references = check_exact_edit(sae, "flux", "euler", RELATIVE, cond,
                                                   dit_testbed.tiny_dit_conditioning("flux", 2))
    assert inside and outside and references == {0, 15}, (inside, outside, references)  # 3 x 5 reference patches


def test_chained_apply_nodes_add_their_edits_on_flux(sae):
    """Two Apply nodes on the same layers: one object patch per Linear carries both edits, and the image
    q/k/v inputs move by a1 n1 + a2 n2 (absolute scale) inside the window; the first node's output MODEL
    keeps its one edit."""
    model = dit_testbed.tiny_dit("flux")
    d = compute(sae, model, "all", k=2)
    first = apply(sae, model, d, index=0, alpha=0.5, start=0.0, end=1.0, scale=ABSOLUTE)
    both = apply(sae, first, d, index=1, alpha=-0.3, start=0.0, end=1.0, scale=ABSOLUTE)
    name = "diffusion_model.double_blocks.0.img_attn.qkv.forward"
    assert len(first.object_patches[name].edits) == 1 and len(both.object_patches[name].edits) == 2
    recorder = LinearRecorder(model)
    try:
        dit_testbed.sample(both, "flux", dit_testbed.tiny_dit_conditioning("flux", 1),
                           dit_testbed.tiny_dit_conditioning("flux", 2), dit_testbed.dit_latent("flux"), steps=2)
    finally:
        recorder.remove()
    width = model.model.diffusion_model.hidden_size
    image = dit_testbed.image_tokens("flux")
    for _sigmas, _reference, layers in recorder.calls:
        for key, (x, out) in layers.items():
            linear = qkv_linears(model)[key][0]
            n = 0.5 * d.layer(key).vectors[0].double() - 0.3 * d.layer(key).vectors[1].double()
            shift = linear.weight.detach().double()[: 3 * width] @ n
            diff = out.double() - torch.nn.functional.linear(x, linear.weight, linear.bias).double()
            assert torch.allclose(diff[:, -image:, : 3 * width], shift.expand(diff.shape[0], image, -1), atol=1e-5)
            assert torch.equal(diff[:, : x.shape[1] - image], torch.zeros_like(diff[:, : x.shape[1] - image]))


def test_apply_on_flux_leaves_the_input_model_untouched(sae):
    """Apply returns a clone carrying object patches; the input MODEL (state dict, object patches,
    options) is exactly as it was, before and after sampling the clone, and samples as before."""
    model = dit_testbed.tiny_dit("flux")
    d = compute(sae, model, "all", k=2)
    cond, neg = dit_testbed.tiny_dit_conditioning("flux", 1), dit_testbed.tiny_dit_conditioning("flux", 2)
    latent = dit_testbed.dit_latent("flux")
    plain = dit_testbed.sample(model, "flux", cond, neg, latent, steps=3)
    before = snapshot(model)
    edited = apply(sae, model, d, alpha=0.8, start=0.0, end=1.0)
    assert unchanged(before, model) and not model.object_patches
    assert set(edited.object_patches) == {f"diffusion_model.{p}.forward" for p in (
        "double_blocks.0.img_attn.qkv", "double_blocks.1.img_attn.qkv", "single_blocks.0.linear1",
        "single_blocks.1.linear1")}
    out = dit_testbed.sample(edited, "flux", cond, neg, latent, steps=3)
    assert not torch.allclose(out, plain)
    assert unchanged(before, model)
    assert torch.equal(dit_testbed.sample(model, "flux", cond, neg, latent, steps=3), plain)


# ---------------------------------------------------------------------------------------------------
# Bad inputs

def test_directions_of_another_family_are_refused(sae):
    """UNet directions on a Flux model and Flux directions on a UNet: the Apply node's clear error, naming
    the layers that do not exist, before sampling; neither input changes."""
    flux, unet = dit_testbed.tiny_dit("flux"), testbed.tiny_model("sd15")
    unet_dirs, flux_dirs = compute(sae, unet, "all", k=2), compute(sae, flux, "all", k=2)
    before = snapshot(flux), snapshot(unet)
    msg = expect_error(sae, lambda: apply(sae, flux, unet_dirs), APPLY, "directions", "do not exist with the same width",
                       "compute the directions on this model")
    assert "middle.0.0" in msg
    msg = expect_error(sae, lambda: apply(sae, unet, flux_dirs), APPLY, "directions", "do not exist with the same width")
    assert "double.0" in msg
    assert unchanged(before[0], flux) and unchanged(before[1], unet)


def test_flux_directions_on_another_flux_family_are_refused(sae):
    """Flux.1 directions on Chroma (same block names and widths here): refused as another family's."""
    d = compute(sae, dit_testbed.tiny_dit("flux"), "all", k=2)
    expect_error(sae, lambda: apply(sae, dit_testbed.tiny_dit("chroma"), d), APPLY, "directions",
                 "computed on a Flux model but this model is Chroma")


def test_swap_and_inversion_on_flux_say_what_is_missing(sae):
    """Self-Attention Swap and Invert Latent on a Flux model where this ComfyUI lacks the swap's hook
    (0.3.75): a clear refusal naming the node and the model class, instead of a failure inside the model.
    (On 0.33 both work: tests/test_dit_nodes.py.)"""
    import comfyui_version

    if tuple(int(x) for x in comfyui_version.__version__.split(".")[:2]) >= (0, 33):
        pytest.skip(f"ComfyUI {comfyui_version.__version__}: the swap and inversion work on Flux "
                    "(tests/test_dit_nodes.py)")
    model = dit_testbed.tiny_dit("flux")
    swap = sae("nodes.node_swap").SelfAttentionSwap
    expect_error(sae, lambda: swap.execute(model, "below latent resolution (FPE default)", 0.0, 0.8,
                                           "conditional only", "", None, True),
                 "Self-Attention Swap", "model", "'Flux'")
    invert = sae("nodes.node_invert").InvertLatent
    expect_error(sae, lambda: invert.execute(model, dit_testbed.tiny_dit_conditioning("flux", 1),
                                             dit_testbed.dit_latent("flux"), 2, "normal"),
                 "Invert Latent (DDIM)", "model", "'Flux'")


def test_version_gate_names_the_version(sae):
    """A capability whose hooks need a newer ComfyUI is refused naming the needed and the running version."""
    base = sae("sae_patches.families.base")
    adapter = sae("sae_patches.families").adapter_for(dit_testbed.tiny_dit("flux"), COMPUTE)

    class Gated(type(adapter)):
        capabilities = ("directions",)
        min_comfyui = {"directions": (99, 0, 0)}

    gated = Gated(adapter.model)
    expect_error(sae, lambda: gated.check_supported(COMPUTE, "directions"), COMPUTE, "model",
                 "needs ComfyUI 99.0.0 or newer", f"not in ComfyUI {base.version_text(base.comfyui_version())}")
    adapter.check_supported(COMPUTE, "directions")  # Method A needs nothing newer than the running ComfyUI


def test_apply_on_a_bf16_flux_model(sae):
    """A bf16 Flux model (weights and activations in bf16): directions are computed (upcast), the edit runs
    in the model's dtype, and inside the window the image q/k/v move by alpha * s * W n to bf16 accuracy."""
    model = dit_testbed.tiny_dit("flux", dtype=torch.bfloat16)
    d = compute(sae, model, "all", k=2)
    edited = apply(sae, model, d, alpha=0.5, start=0.0, end=1.0, scale=ABSOLUTE)
    recorder = LinearRecorder(model)
    try:
        out = dit_testbed.sample(edited, "flux", dit_testbed.tiny_dit_conditioning("flux", 1),
                                 dit_testbed.tiny_dit_conditioning("flux", 2), dit_testbed.dit_latent("flux"), steps=2)
    finally:
        recorder.remove()
    assert torch.isfinite(out).all()
    width = model.model.diffusion_model.hidden_size
    _sigmas, _reference, layers = recorder.calls[0]
    x, got = layers["double.0"]
    linear = qkv_linears(model)["double.0"][0]
    assert got.dtype == torch.bfloat16
    shift = 0.5 * (linear.weight.double()[: 3 * width] @ d.layer("double.0").vectors[0].double())
    diff = got.double() - torch.nn.functional.linear(x, linear.weight, linear.bias).double()
    scale = got.double().abs().max()
    assert (diff - shift).abs().max() < 0.02 * scale  # bf16 rounding of W x + b and W d (image stream: all rows)
