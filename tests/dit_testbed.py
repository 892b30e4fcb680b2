"""Tiny diffusion transformers built from ComfyUI's own classes, the DiT counterpart of testbed.tiny_model:
the family's real supported_models config and model_base.BaseModel subclass (so its real model_sampling,
latent_format and extra_conds), a shrunken unet_config with the real block layout, deterministic weights.
No checkpoint can be downloaded here.

Families (ComfyUI's own model names; DIT_FAMILIES):
  flux        Flux.1 dev (supported_models.Flux, guidance embedding)     model_base.Flux,     FLUX sampling
  flux2       Flux.2 dev (supported_models.Flux2, guidance embedding)    model_base.Flux2,    FLUX sampling
  chroma      Chroma (supported_models.Chroma)                           model_base.Chroma,   FLUX sampling
  qwen_image  Qwen-Image (supported_models.QwenImage)                    model_base.QwenImage, FLUX sampling
  sd3         SD3.5 Large layout (supported_models.SD3, RMS QK-norm)     model_base.SD3,      FLOW sampling
  lumina2     Z-Image (supported_models.ZImage: the Lumina2 NextDiT as  model_base.Lumina2,  FLOW sampling
              ComfyUI configures Z-Image, z_image_modulation, 32-token padding)
All predict with CONST (rectified flow: x_t = (1 - sigma) x0 + sigma * noise, model output = velocity).

DIT_NOTES holds, per family, where the image stream's self-attention weights are, what QK-norm follows, how
the joint sequence is laid out and which public hooks core offers there (checked on ComfyUI 0.33.0 and 0.3.75).
"""

from __future__ import annotations

import dataclasses
import inspect

import testbed

DIT_FAMILIES = ("flux",)

# Width of the text-encoder output the tiny models take (T5-XXL 4096, Qwen2.5-VL 3584, ... shrunk).
CONTEXT_DIM = 64
# Width of the pooled text vector, where the family takes one (Flux.1: CLIP-L 768; SD3: CLIP-L+G 2048).
POOLED_DIM = {"flux": 32}
# The latent channel count the family's latent_format declares (the tiny model keeps it).
LATENT_CHANNELS = {"flux": 16}
# Default latent side: 64 image tokens for every family (patch 2 on 16x16, Flux.2 patch 1 on 8x8).
LATENT_SIZE = {"flux": 16}
# The scheduler workflows use with euler for the family (ComfyUI's templates).
SCHEDULER = {"flux": "simple"}
# Guidance value a conditioning carries (FluxGuidance / the family's default).
GUIDANCE = {"flux": 3.5}
# The Linear that produces the model output (calibrated to unit std).
OUTPUT_LAYER = {"flux": "final_layer.linear"}

# Where the image stream's self-attention lives and which hooks reach it (ComfyUI 0.33.0 and 0.3.75).
DIT_NOTES = {
    "flux": {
        "blocks": "double_blocks.{i} (depth), then single_blocks.{i} (depth_single_blocks)",
        "qkv_weights": "double: double_blocks.{i}.img_attn.qkv.weight, fused (3*hidden, hidden), rows "
                       "[0:D] q, [D:2D] k, [2D:3D] v (D = hidden), bias (qkv_bias=True); text stream "
                       "txt_attn.qkv separately. single: single_blocks.{i}.linear1.weight (3*hidden + "
                       "mlp_hidden, hidden): only the first 3*hidden rows (q, k, v) feed attention, the rest "
                       "is the MLP input; single blocks carry text and image tokens through the same weights",
        "qk_norm": "RMSNorm per head (img_attn.norm.query_norm / key_norm; single: norm.query_norm / "
                   "key_norm) right after the projection; RoPE (pe) is applied inside attention(), after "
                   "attn1_patch",
        "token_layout": "joint sequence [text (T), image (N), reference images]: img_slice = [T, T + N + R]; "
                        "reference (Kontext) tokens follow the image tokens inside img_slice, counted in "
                        "transformer_options['reference_image_num_tokens']",
        "hooks_033": "attn1_patch(q, k, v, pe=, attn_mask=, extra_options=) in double and single blocks, "
                     "q/k/v joint (B, H, T+N, D) after QK-norm, before RoPE; returns a dict (q, k, v, pe, "
                     "attn_mask); extra_options: img_slice, block_type 'double'/'single', block_index, "
                     "total_blocks. attn1_output_patch(attn (B, T+N, H*D), extra_options) after attention. "
                     "Also optimized_attention_override and patches_replace['dit'][('double_block'|"
                     "'single_block', i)]",
        "hooks_0375": "no attn1_patch / attn1_output_patch, no img_slice, no reference_image_num_tokens; "
                      "optimized_attention_override (transformer_options carries block_type, block_index) "
                      "and patches_replace['dit'] block replaces",
        "reference_tokens": "Kontext: ref_latents appended after the image tokens",
    },
}


def _accepted(model_cls, config: dict) -> dict:
    """The entries of config the installed ComfyUI's model class takes: Flux/Chroma take a params
    dataclass (FluxParams gained txt_ids_dims, yak_mlp, txt_norm after 0.3.75); the others take keywords."""
    params_cls = {"Flux": "FluxParams", "Chroma": "ChromaParams"}.get(model_cls.__name__)
    if params_cls is not None:
        names = {f.name for f in dataclasses.fields(getattr(inspect.getmodule(model_cls), params_cls))}
    else:
        sig = inspect.signature(model_cls.__init__)
        if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
            return dict(config)
        names = set(sig.parameters)
    return {k: v for k, v in config.items() if k in names or k == "image_model"}


def _tiny_dit_config(family: str) -> dict:
    """The shrunken unet_config: the family's real block types and options (as model_detection would
    set them for the real checkpoint), widths 64-128, 2 heads, 2 blocks of each kind."""
    if family == "flux":
        return {"image_model": "flux", "in_channels": 16, "out_channels": 16, "vec_in_dim": POOLED_DIM["flux"],
                "context_in_dim": CONTEXT_DIM, "hidden_size": 64, "mlp_ratio": 4.0, "num_heads": 2,
                "depth": 2, "depth_single_blocks": 2, "axes_dim": [4, 14, 14], "theta": 10000,
                "patch_size": 2, "qkv_bias": True, "guidance_embed": True, "txt_ids_dims": [],
                "yak_mlp": False, "txt_norm": False}
    raise ValueError(f"unknown DiT family {family!r}")


def _config_class(family: str):
    import comfy.supported_models as sm

    return {"flux": sm.Flux}[family]


def _unet_class(family: str):
    import comfy.ldm.flux.model

    return {"flux": comfy.ldm.flux.model.Flux}[family]


QK_SHARPNESS = 3.0
_QK_NORM_NAMES = ("query_norm", "key_norm")


def init_dit_weights_(module, seed: int) -> None:
    """testbed.init_weights_ (seeded, 1/sqrt(fan_in) matrices), then the QK-norm scales times
    sqrt(QK_SHARPNESS): with QK-norm the logit scale is set by those scales, not by W_q/W_k, and trained
    DiTs have peaked image-image maps. Buffers left uninitialised by ComfyUI's ops are filled too."""
    import torch

    testbed.init_weights_(module, seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim == 1 and any(f"{n}." in name for n in _QK_NORM_NAMES):
                p.mul_(QK_SHARPNESS**0.5)


def _conds_for(base, positive, noise):
    """The keyword conds BaseModel.apply_model gets for one conditioning, through the model's own
    extra_conds (padding, guidance, num_tokens ...), as the sampler would build them."""
    import torch

    cond, extra = positive[0]
    out = base.extra_conds(cross_attn=cond, noise=noise, device=torch.device("cpu"), **extra)
    return {k: v.process_cond(batch_size=noise.shape[0], device=torch.device("cpu")).cond for k, v in out.items()}


def calibrate_dit_output_(base, family: str) -> None:
    """Scale the output Linear so the predicted velocity has unit std at sigma = 0.5 (random weights give
    an output far from that: the sampler would then ignore the model)."""
    import torch

    gen = torch.Generator().manual_seed(1234)
    latent = dit_latent(family, batch=2)["samples"]
    x = torch.randn(latent.shape, generator=gen)
    conds = _conds_for(base, tiny_dit_conditioning(family, 1234, batch=2), x)
    layer = base.diffusion_model.get_submodule(OUTPUT_LAYER[family])
    seen = []
    handle = layer.register_forward_hook(lambda _m, _i, out: seen.append(out.std()))
    try:
        with torch.no_grad():
            base.apply_model(x, torch.full((2,), 0.5), **conds)
    finally:
        handle.remove()
    with torch.no_grad():
        layer.weight.mul_(1.0 / seen[0])
        if layer.bias is not None:
            layer.bias.mul_(1.0 / seen[0])


def _tiny_base(family: str, dtype):
    config_cls = _config_class(family)
    unet_config = {**_accepted(_unet_class(family), _tiny_dit_config(family)), "dtype": dtype}
    model_config = config_cls(unet_config)
    model_config.unet_config.update(unet_config)
    model_config.set_inference_dtype(dtype, None)
    return model_config.get_model({})


def tiny_dit(family: str = "flux", seed: int = 0, dtype=None):
    """A ModelPatcher around a tiny DiT of the given family, built by ComfyUI's own classes (CPU).

    dtype (default float32): the weights' dtype; weights are initialised and calibrated in float32, then
    cast."""
    import torch

    testbed.import_comfyui()
    import comfy.model_management
    import comfy.model_patcher

    base = _tiny_base(family, torch.float32)
    init_dit_weights_(base.diffusion_model, seed)
    base.eval()
    calibrate_dit_output_(base, family)
    if dtype is not None and dtype != torch.float32:
        state = base.diffusion_model.state_dict()
        base = _tiny_base(family, dtype)
        base.diffusion_model.load_state_dict({k: v.to(dtype) for k, v in state.items()})
        base.eval()
    device = comfy.model_management.get_torch_device()
    return comfy.model_patcher.ModelPatcher(base, load_device=device, offload_device=device)


def tiny_dit_conditioning(family: str, seed: int, tokens: int = 8, batch: int = 1):
    """A CONDITIONING list as the family's text encoder node would give it (random token embeddings of
    width CONTEXT_DIM, the pooled vector where the family takes one, its guidance value)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    cond = torch.randn((batch, tokens, CONTEXT_DIM), generator=gen)
    extra = {}
    if family in POOLED_DIM:
        extra["pooled_output"] = torch.randn((batch, POOLED_DIM[family]), generator=gen)
    if family in GUIDANCE:
        extra["guidance"] = GUIDANCE[family]
    return [[cond, extra]]


def dit_latent(family: str, batch: int = 1, size: int | None = None):
    """An empty LATENT dict with the family's channel count (and Qwen-Image's frame axis)."""
    import torch

    size = size or LATENT_SIZE[family]
    shape = (batch, LATENT_CHANNELS[family], size, size)
    if family == "qwen_image":  # Wan21 latent format: 3 latent dimensions, (B, C, T, H, W)
        shape = (batch, LATENT_CHANNELS[family], 1, size, size)
    return {"samples": torch.zeros(shape)}


def image_tokens(family: str, size: int | None = None) -> int:
    """Image tokens of a square latent of the given side (before any padding)."""
    size = size or LATENT_SIZE[family]
    patch = _tiny_dit_config(family).get("patch_size", 2)
    return (size // patch) ** 2


def sample(model, family: str, positive, negative, latent, *, seed=0, steps=3, cfg=2.0, sampler="euler",
           scheduler=None, denoise=1.0):
    """testbed.sample with the family's usual scheduler; latent is a LATENT dict."""
    return testbed.sample(model, positive, negative, latent["samples"], seed=seed, steps=steps, cfg=cfg,
                          sampler=sampler, scheduler=scheduler or SCHEDULER[family], denoise=denoise)


def text_tokens(family: str, tokens: int = 8) -> int:
    """Text tokens in the joint sequence for a conditioning of `tokens` tokens (before the image tokens)."""
    return tokens


def heads_and_head_dim(family: str) -> tuple[int, int]:
    """(heads, head dim) of the tiny model's joint attention."""
    config = _tiny_dit_config(family)
    return config["num_heads"], config["hidden_size"] // config["num_heads"]


def indexed_attention_calls(family: str) -> list[tuple[str, int]]:
    """(block_type, block_index) that transformer_options carries at each attention call of one forward,
    for the calls where core sets them."""
    config = _tiny_dit_config(family)
    return ([("double", i) for i in range(config["depth"])]
            + [("single", i) for i in range(config["depth_single_blocks"])])


def attention_calls_per_forward(family: str) -> int:
    """optimized_attention calls of one model forward."""
    return len(indexed_attention_calls(family))
