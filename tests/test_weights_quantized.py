"""Reading self-attention weights the way the model samples with them: scaled-fp8 checkpoints and
QuantizedTensor weights (dequantized, scales applied), LoRA patches applied once on them, q/k/v of one
layer on one device in one dtype, lazily loaded weights, and the solve device.

Quantized models are built the way ComfyUI loads a quantized checkpoint in the version under test:
a state dict in the checkpoint's format goes through the version's own conversion (0.33:
comfy.utils.convert_old_quants / detect_layer_quantization -> MixedPrecisionOps with QuantizedTensor
weights; 0.3.75: model_config.scaled_fp8 -> scaled_fp8_ops with a per-Linear scale_weight, or
model_config.layer_quant_config -> MixedPrecisionOps) into a tiny real-architecture UNet. The reference is
a float32 model holding the dequantized weights.

What needs a GPU (skipped here without one): solving on CUDA, weights resident on the GPU beside
patched ones on the CPU, and ModelPatcherDynamic with a CUDA load device (its constructor needs
comfy_aimdo's native library; on a CPU load device it returns a plain ModelPatcher)."""

import json

import pytest
import torch

import testbed

PREFIX = "diffusion_model."
QKV = (".attn1.to_q.weight", ".attn1.to_k.weight", ".attn1.to_v.weight")
# Directions of the quantized model against the float model of its dequantized weights. Both are read
# to the same float32 values, so the answers are observed bit-identical; the tolerance leaves room for a
# dequantization kernel that rounds differently (one float32 ulp of the weights moves a direction by far
# less than 1e-5 rad on these well-separated spectra).
ANGLE = 1e-5
VALUE_RTOL = 1e-6


def comfy():
    testbed.import_comfyui()
    import comfy.model_base
    import comfy.model_management
    import comfy.model_patcher
    import comfy.ops
    import comfy.supported_models
    import comfy.supported_models_base
    import comfy.utils

    return comfy


def new_quant_api() -> bool:
    """0.33: quantized checkpoints load through model_config.quant_config (comfy_quant per layer)."""
    return hasattr(comfy().supported_models_base.BASE, "quant_config")


def float_state(family="sd15"):
    """The tiny model's UNet state dict (float32, deterministic weights)."""
    return {k: v.detach().clone() for k, v in testbed.tiny_model(family).model.diffusion_model.state_dict().items()}


def attn_keys(sd):
    return sorted(k for k in sd if k.endswith(QKV))


def load_unet(sd, configure=None, family="sd15", dtype=torch.float32, manual_cast=None, assign=False):
    """A ModelPatcher around a tiny UNet of the family, its weights loaded from sd (keys without prefix)
    by BaseModel.load_model_weights, as ComfyUI's checkpoint loaders do. configure(model_config, sd)
    runs before the model is built (where ComfyUI's detection sets the quantization config)."""
    c = comfy()
    config_cls = {"sd15": c.supported_models.SD15, "sdxl": c.supported_models.SDXL}[family]
    unet_config = {**testbed._tiny_unet_config(family), "dtype": dtype}
    model_config = config_cls(unet_config)
    model_config.unet_config.update(unet_config)
    model_config.set_inference_dtype(dtype, manual_cast)
    sd = {PREFIX + k: v for k, v in sd.items()}
    if configure is not None:
        sd = configure(model_config, sd)
    base = model_config.get_model({})
    base.load_model_weights(sd, PREFIX, **({"assign": True} if assign else {}))
    base.eval()
    device = c.model_management.get_torch_device()
    return c.model_patcher.ModelPatcher(base, load_device=device, offload_device=device)


def scaled_fp8_checkpoint(sd):
    """A "scaled fp8" checkpoint (ComfyUI's format before QuantizedTensor): q/k/v weights stored as
    float8_e4m3fn with a per-tensor `scale_weight`, and the `scaled_fp8` marker. Returns (checkpoint, the
    float32 state dict of the dequantized weights)."""
    ckpt, deq = dict(sd), dict(sd)
    for k in attn_keys(sd):
        scale = (sd[k].abs().amax() / 448.0).float()  # the full fp8 range: raw values are ~100x the weights
        q = (sd[k] / scale).to(torch.float8_e4m3fn)
        ckpt[k] = q
        ckpt[k[:-len("weight")] + "scale_weight"] = scale
        deq[k] = q.float() * scale
    ckpt["scaled_fp8"] = torch.tensor([], dtype=torch.float8_e4m3fn)
    return ckpt, deq


def configure_scaled_fp8(model_config, sd):
    """What each version's loader does with the scaled_fp8 marker."""
    c = comfy()
    if new_quant_api():
        sd, _ = c.utils.convert_old_quants(sd, PREFIX, metadata={})  # -> comfy_quant + weight_scale
        model_config.quant_config = c.utils.detect_layer_quantization(sd, PREFIX)
    else:
        model_config.scaled_fp8 = sd.pop(PREFIX + "scaled_fp8").dtype  # as comfy.model_detection does
    return sd


FORMATS_033 = {  # checkpoint format name -> comfy.quant_ops layout
    "float8_e4m3fn": "TensorCoreFP8E4M3Layout",
    "nvfp4": "TensorCoreNVFP4Layout",
    "mxfp8": "TensorCoreMXFP8Layout",
    "int8_tensorwise": "TensorWiseINT8Layout",
}


def quantized_checkpoint(sd, fmt):
    """A mixed-precision checkpoint whose q/k/v weights are in `fmt`, and the dequantized state dict.
    0.33: each weight quantized by comfy.quant_ops.QuantizedTensor.from_float and written with its own
    state_dict() (weight, weight_scale, ...), plus the layer's comfy_quant entry. 0.3.75: fp8 weight and
    weight_scale, the layers listed in model_config.layer_quant_config (see configure_quantized)."""
    c = comfy()
    import comfy.quant_ops as quant_ops

    ckpt, deq = dict(sd), dict(sd)
    for k in attn_keys(sd):
        layer = k[:-len(".weight")]
        if new_quant_api():
            qt = quant_ops.QuantizedTensor.from_float(sd[k], FORMATS_033[fmt])
            del ckpt[k]
            ckpt.update(qt.state_dict(k))
            ckpt[layer + ".comfy_quant"] = torch.tensor(list(json.dumps({"format": fmt}).encode()), dtype=torch.uint8)
            deq[k] = qt.dequantize().float()
        else:
            scale = (sd[k].abs().amax() / 448.0).float()
            ckpt[k] = (sd[k] / scale).to(torch.float8_e4m3fn)
            ckpt[layer + ".weight_scale"] = scale
            deq[k] = c.quant_ops.QuantizedTensor(ckpt[k], "TensorCoreFP8Layout",
                                                  {"scale": scale, "orig_dtype": torch.float32}).dequantize()
    return ckpt, deq


def configure_quantized(model_config, sd):
    c = comfy()
    if new_quant_api():
        model_config.quant_config = c.utils.detect_layer_quantization(sd, PREFIX)
    else:
        model_config.layer_quant_config = {
            k[len(PREFIX):-len(".weight_scale")]: {"format": "float8_e4m3fn"} for k in sd if k.endswith(".weight_scale")}
    return sd


def formats():
    return list(FORMATS_033) if new_quant_api() else ["float8_e4m3fn"]


def compute(sae, model, layers="all", k=4):
    return sae("nodes.node_directions").ComputeAttentionEigendirections.execute(model, layers, k, "").args[0]


def assert_same_directions(a, b, angle=ANGLE, rtol=VALUE_RTOL):
    assert a.keys == b.keys
    for x, y in zip(a.layers, b.layers):
        torch.testing.assert_close(x.values.double(), y.values.double(), rtol=rtol, atol=0)
        assert float(testbed.principal_angles(x.vectors, y.vectors).max()) < angle, x.key


def stored_attn_weight(model):
    return model.model.diffusion_model.middle_block[1].transformer_blocks[0].attn1.to_q.weight


def test_scaled_fp8_checkpoint_gives_the_directions_of_its_dequantized_weights(sae):
    """A scaled-fp8 checkpoint, loaded the way this ComfyUI version loads one, gives the directions of its
    dequantized float weights: the per-tensor scale is applied (ignoring it would scale every eigenvalue
    by 1/scale^2, about 1e4 here, and turn the weights into the raw fp8 codes)."""
    ckpt, deq = scaled_fp8_checkpoint(float_state())
    quantized = load_unet(ckpt, configure_scaled_fp8, manual_cast=torch.float32)
    w = stored_attn_weight(quantized)
    assert w.dtype == torch.float8_e4m3fn or type(w).__name__ == "QuantizedTensor", "the test needs stored fp8"
    assert_same_directions(compute(sae, quantized), compute(sae, load_unet(deq)))


@pytest.mark.parametrize("fmt", ["float8_e4m3fn", "nvfp4", "mxfp8", "int8_tensorwise"])
def test_quantized_tensor_weights_give_the_directions_of_their_dequantized_weights(sae, fmt):
    """QuantizedTensor q/k/v weights (0.33: fp8, nvfp4, mxfp8, int8; 0.3.75: its fp8 layout) read as
    their dequantize(): the directions equal those of a float model holding the dequantized weights."""
    if fmt not in formats():
        pytest.skip(f"ComfyUI 0.3.75's comfy.quant_ops has only the fp8 layout (TensorCoreFP8Layout), no {fmt}")
    ckpt, deq = quantized_checkpoint(float_state(), fmt)
    quantized = load_unet(ckpt, configure_quantized, manual_cast=torch.float32)
    assert type(stored_attn_weight(quantized)).__name__ == "QuantizedTensor", "the test needs QuantizedTensor weights"
    assert_same_directions(compute(sae, quantized), compute(sae, load_unet(deq)))


@pytest.mark.parametrize("kind", ["scaled_fp8", "quantized_tensor"])
def test_lora_on_quantized_weights_is_applied_once(sae, kind):
    """A weight patch on a quantized to_k gives the directions of dequantized + patch (the scale applied
    before the patch, the patch once); loading the patched clone (ComfyUI then writes the patched,
    re-quantized weight into the shared module and keeps the original as backup) changes nothing.
    Everything runs in inference mode, as in ComfyUI's executor (loading, sampling and the node alike):
    0.3.75's fp8 re-quantization and its QuantizedTensor moves need it."""
    with torch.inference_mode():
        _lora_on_quantized_weights_is_applied_once(sae, kind)


def _lora_on_quantized_weights_is_applied_once(sae, kind):
    ckpt, deq = (scaled_fp8_checkpoint(float_state()) if kind == "scaled_fp8"
                 else quantized_checkpoint(float_state(), "float8_e4m3fn"))
    configure = configure_scaled_fp8 if kind == "scaled_fp8" else configure_quantized
    quantized = load_unet(ckpt, configure, manual_cast=torch.float32)
    key = "middle_block.1.transformer_blocks.0.attn1.to_k.weight"
    diff = torch.randn(deq[key].shape, generator=torch.Generator().manual_seed(4)) * 0.2
    lora = quantized.clone()
    lora.add_patches({PREFIX + key: (diff,)}, 0.5)
    expected = load_unet({**deq, key: deq[key] + 0.5 * diff})

    before = compute(sae, lora, "middle block")
    assert_same_directions(before, compute(sae, expected, "middle block"))
    testbed.sample(lora, testbed.tiny_conditioning("sd15", 1), testbed.tiny_conditioning("sd15", 2),
                   testbed.empty_latent(1), steps=2)
    sae("sae_patches.weights").EIGEN_CACHE.clear()  # recompute from the weights, not from the cache
    after = compute(sae, lora, "middle block")
    assert torch.equal(after.layers[0].vectors, before.layers[0].vectors)
    assert torch.equal(after.layers[0].values, before.layers[0].values)
    plain = compute(sae, quantized, "middle block")
    assert not torch.allclose(plain.layers[0].values, before.layers[0].values), "the patch must show"


def test_one_layer_comes_back_in_one_dtype_on_one_device(sae):
    """fp16 originals beside a patched (float32) to_k: all three come back float32 on the solve device,
    the originals upcast exactly; an unpatched layer keeps its stored fp16 (hashed as stored). The
    directions are those of the float64 eigendecomposition of exactly these weights."""
    weights = sae("sae_patches.weights")
    model = testbed.tiny_model("sd15", dtype=torch.float16)
    attn = model.model.diffusion_model.middle_block[1].transformer_blocks[0].attn1
    key = PREFIX + "middle_block.1.transformer_blocks.0.attn1.to_k.weight"
    diff = torch.randn(attn.to_k.weight.shape, generator=torch.Generator().manual_seed(2)) * 0.1
    lora = model.clone()
    lora.add_patches({key: (diff,)}, 1.0)
    layers = weights.select_layers(weights.model_layers(lora), "all", "")
    got = weights.layer_weights(lora, layers)
    q, k, v = got["middle.0.0"]
    assert {w.dtype for w in (q, k, v)} == {torch.float32}
    assert {w.device for w in (q, k, v)} == {weights.solve_device(lora)}
    assert torch.equal(q, attn.to_q.weight.float()) and torch.equal(v, attn.to_v.weight.float())
    torch.testing.assert_close(k, attn.to_k.weight.float() + diff, rtol=0, atol=1e-6)
    assert {w.dtype for w in got["input.1.0"]} == {torch.float16}

    s = torch.cat([q, k, v]).double()
    vals, vecs = torch.linalg.eigh(s.T @ s)
    d = compute(sae, lora, "middle block", 3).layers[0]
    torch.testing.assert_close(d.values.double(), vals.flip(0)[:3], rtol=1e-6, atol=0)
    assert testbed.principal_angles(d.vectors, vecs.flip(1)[:, :3].T).max() < 1e-6


def test_lazily_loaded_weights_read_in_the_model_dtype(sae):
    """0.33's dynamic VRAM loads a checkpoint with assign=True: the tensor keeps the file's dtype (here
    float32) while the model computes in its model dtype (fp16, weight_comfy_model_dtype). The directions
    equal those of the same checkpoint loaded the ordinary way (cast to fp16 at load)."""
    import inspect

    c = comfy()
    if "assign" not in inspect.signature(c.model_base.BaseModel.load_model_weights).parameters:
        pytest.skip("this ComfyUI (0.3.75) has no lazy loading: load_model_weights has no assign, modules "
                    "record no model dtype")
    sd = float_state()
    ordinary = load_unet(sd, dtype=torch.float16)
    lazy = load_unet(sd, dtype=torch.float16, assign=True)
    module = lazy.model.diffusion_model.middle_block[1].transformer_blocks[0].attn1.to_q
    assert module.weight_comfy_model_dtype == torch.float16
    assert module.weight.dtype == torch.float32, "the test needs a weight stored in the file's dtype"
    a, b = compute(sae, lazy), compute(sae, ordinary)
    for x, y in zip(a.layers, b.layers):
        assert torch.equal(x.vectors, y.vectors) and torch.equal(x.values, y.values)


def test_solve_device_follows_the_configuration_not_the_residency(sae):
    """The solve device is the MODEL's load device when it is a usable CUDA device, else the CPU: a
    patcher configured for a GPU on a machine without one (or an MPS/other load device) solves on the
    CPU, with the same answer as the CPU patcher."""
    weights = sae("sae_patches.weights")
    c = comfy()
    model = testbed.tiny_model("sd15")
    assert weights.solve_device(model) == torch.device("cpu")
    for device in (torch.device("cuda", 0), torch.device("mps"), torch.device("meta")):
        other = c.model_patcher.ModelPatcher(model.model, load_device=device, offload_device=torch.device("cpu"))
        expected = device if device.type == "cuda" and torch.cuda.is_available() else torch.device("cpu")
        assert weights.solve_device(other) == expected
    if not torch.cuda.is_available():
        gpu_configured = c.model_patcher.ModelPatcher(model.model, load_device=torch.device("cuda", 0),
                                                      offload_device=torch.device("cpu"))
        a, b = compute(sae, gpu_configured, "middle block"), compute(sae, model, "middle block")
        assert torch.equal(a.layers[0].vectors, b.layers[0].vectors)


def test_cache_keeps_answers_of_different_solve_devices_apart(sae):
    """An answer cached for another solve device (same weights, same k) is never served: a GPU answer
    and a CPU answer differ in the last bits, and which one a workflow gets must not depend on what ran
    before it."""
    weights = sae("sae_patches.weights")
    model = testbed.tiny_model("sd15")
    first = compute(sae, model, "middle block", 3)
    layers = weights.select_layers(weights.model_layers(model), "middle block", "")
    fingerprint = weights.fingerprints(weights.layer_weights(model, layers))["middle.0.0"]
    weights.EIGEN_CACHE.clear()
    width = first.layers[0].width
    weights.EIGEN_CACHE.put(fingerprint, torch.full((3,), 7.0), torch.eye(3, width), "cuda:0:Some GPU")
    again = compute(sae, model, "middle block", 3)
    assert weights.EIGEN_CACHE.misses == 1, "the other device's entry is not this one's"
    assert torch.equal(again.layers[0].vectors, first.layers[0].vectors)
    assert weights.EIGEN_CACHE.get(fingerprint, 3, "cuda:0:Some GPU")[0][0] == 7.0


def test_dynamic_patcher_on_a_cpu_load_device_is_a_plain_patcher():
    """ModelPatcherDynamic (0.33) reroutes a CPU load device to a plain ModelPatcher: on a CPU machine no
    weight is ever read through dynamic VRAM. (With a CUDA load device its constructor needs comfy_aimdo's
    native library, i.e. a GPU: see test_dynamic_patcher_reads_like_the_plain_one.)"""
    c = comfy()
    if not hasattr(c.model_patcher, "ModelPatcherDynamic"):
        pytest.skip("ComfyUI 0.3.75 has no ModelPatcherDynamic")
    model = testbed.tiny_model("sd15")
    cpu = torch.device("cpu")
    patcher = c.model_patcher.ModelPatcherDynamic(model.model, load_device=cpu, offload_device=cpu)
    assert type(patcher) is c.model_patcher.ModelPatcher and not patcher.is_dynamic()


# ----------------------------------------------------------------------------------------------------
# GPU only (skipped on CPU machines).

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@needs_cuda
def test_gpu_solve_is_independent_of_residency_and_agrees_with_the_cpu(sae):
    """On a GPU-configured MODEL the directions are solved on the GPU, the same bits before and after
    the model is loaded onto it (weights then resident on the GPU, a LoRA-patched one computed there
    too), returned on the CPU, and within the solver's accuracy contract of the CPU solve."""
    weights, eigen = sae("sae_patches.weights"), sae("sae_math.eigen")
    c = comfy()
    model = testbed.tiny_model("sd15")
    gpu = c.model_patcher.ModelPatcher(model.model, load_device=torch.device("cuda", 0),
                                       offload_device=torch.device("cpu"))
    key = PREFIX + "middle_block.1.transformer_blocks.0.attn1.to_k.weight"
    gpu.add_patches({key: (torch.randn(stored_attn_weight(gpu).shape, generator=torch.Generator().manual_seed(1)),)}, 0.1)
    assert weights.solve_device(gpu).type == "cuda"
    before = compute(sae, gpu, "all", 4)
    gpu.load(torch.device("cuda", 0), full_load=True)  # weights resident on the GPU, the patch written in
    try:
        weights.EIGEN_CACHE.clear()
        after = compute(sae, gpu, "all", 4)
    finally:
        gpu.unpatch_model(torch.device("cpu"))
    cpu = weights.compute_directions(gpu, "all", "", 4, device="cpu")
    for x, y, z in zip(before.layers, after.layers, cpu.layers):
        assert x.vectors.device.type == "cpu"
        assert torch.equal(x.vectors, y.vectors) and torch.equal(x.values, y.values)
        assert float(testbed.principal_angles(x.vectors, z.vectors).max()) < 2 * eigen.ANGLE_TOL


@needs_cuda
def test_dynamic_patcher_reads_like_the_plain_one(sae):
    """A ModelPatcherDynamic (0.33, CUDA load device) with a LoRA gives the directions of a plain
    ModelPatcher with the same patch, bit for bit (same weights, same solve device)."""
    c = comfy()
    if not hasattr(c.model_patcher, "ModelPatcherDynamic"):
        pytest.skip("ComfyUI 0.3.75 has no ModelPatcherDynamic")
    import comfy_aimdo.control

    if not comfy_aimdo.control.init():
        pytest.skip("comfy_aimdo could not initialise on this GPU")
    model = testbed.tiny_model("sd15")
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    key = PREFIX + "middle_block.1.transformer_blocks.0.attn1.to_v.weight"
    diff = torch.randn(stored_attn_weight(model).shape, generator=torch.Generator().manual_seed(3)) * 0.1
    out = []
    for cls in (c.model_patcher.ModelPatcherDynamic, c.model_patcher.ModelPatcher):
        patcher = cls(model.model, load_device=cuda, offload_device=cpu)
        patcher.add_patches({key: (diff,)}, 1.0)
        out.append(compute(sae, patcher, "all", 4))
    assert out[0].model_fingerprint == out[1].model_fingerprint
    for x, y in zip(*[o.layers for o in out]):
        assert torch.equal(x.vectors, y.vectors)
