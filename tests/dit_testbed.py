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

DIT_FAMILIES = ("flux", "flux2", "chroma", "qwen_image", "sd3", "lumina2")

# Width of the text-encoder output the tiny models take (T5-XXL 4096, Qwen2.5-VL 3584, ... shrunk).
CONTEXT_DIM = 64
# Width of the pooled text vector, where the family takes one (Flux.1: CLIP-L 768; SD3: CLIP-L+G 2048).
POOLED_DIM = {"flux": 32, "sd3": 64}
# The latent channel count the family's latent_format declares (the tiny model keeps it).
LATENT_CHANNELS = {"flux": 16, "flux2": 128, "chroma": 16, "qwen_image": 16, "sd3": 16, "lumina2": 16}
# Default latent side: 64 image tokens for every family (patch 2 on 16x16, Flux.2 patch 1 on 8x8).
LATENT_SIZE = {"flux": 16, "flux2": 8, "chroma": 16, "qwen_image": 16, "sd3": 16, "lumina2": 16}
# The scheduler workflows use with euler for the family (ComfyUI's templates).
SCHEDULER = {"flux": "simple", "flux2": "simple", "chroma": "beta", "qwen_image": "simple", "sd3": "sgm_uniform",
             "lumina2": "simple"}
# Guidance value a conditioning carries (FluxGuidance / the family's default).
GUIDANCE = {"flux": 3.5, "flux2": 4.0}
# The Linear that produces the model output (calibrated to unit std).
OUTPUT_LAYER = {"flux": "final_layer.linear", "flux2": "final_layer.linear", "chroma": "final_layer.linear",
                "qwen_image": "proj_out", "sd3": "final_layer.linear", "lumina2": "final_layer.linear"}

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
    "flux2": {
        "blocks": "as flux (model class comfy.ldm.flux.model.Flux, image_model 'flux2'); modulation is global "
                  "(double_stream_modulation_img/txt, single_stream_modulation), no per-block mod weights",
        "qkv_weights": "as flux, without biases: double_blocks.{i}.img_attn.qkv.weight (3*hidden, hidden) rows "
                       "q|k|v; single_blocks.{i}.linear1.weight first 3*hidden rows (the rest: 2 * mlp_hidden "
                       "SiLU-gated MLP rows)",
        "qk_norm": "as flux (RMSNorm per head, then RoPE with 4 axes [t, h, w, text index])",
        "token_layout": "[text (left-padded with zeros to 512 tokens by model_base.Flux2.extra_conds), image, "
                        "reference images]; img_slice = [512, 512 + N + R] for a prompt of <= 512 tokens",
        "hooks_033": "as flux (same DoubleStreamBlock / SingleStreamBlock code)",
        "hooks_0375": "as flux on 0.3.75 (Flux2 exists there: supported_models.Flux2, model_base.Flux2)",
        "reference_tokens": "yes: ref_latents (default_ref_method 'index', time index offset 10 per image) after "
                            "the image tokens; reference_image_num_tokens on 0.33",
    },
    "chroma": {
        "blocks": "double_blocks.{i}, single_blocks.{i}: Flux's DoubleStreamBlock/SingleStreamBlock with "
                  "modulation=False (modulations come from distilled_guidance_layer)",
        "qkv_weights": "as flux: double_blocks.{i}.img_attn.qkv.weight fused q|k|v (with bias); "
                       "single_blocks.{i}.linear1.weight first 3*hidden rows",
        "qk_norm": "as flux",
        "token_layout": "[text, image]: img_slice = [T, T + N]",
        "hooks_033": "as flux (the same block classes)",
        "hooks_0375": "as flux on 0.3.75",
        "reference_tokens": "none (Chroma._forward takes no ref_latents)",
    },
    "qwen_image": {
        "blocks": "transformer_blocks.{i} (num_layers), all joint (block_type 'double')",
        "qkv_weights": "separate: transformer_blocks.{i}.attn.to_q / to_k / to_v (.weight (inner, dim), .bias); "
                       "text stream add_q_proj / add_k_proj / add_v_proj",
        "qk_norm": "attn.norm_q / norm_k (RMSNorm per head; text: norm_added_q / norm_added_k) after the "
                   "projection; RoPE (apply_rope1) after attn1_patch",
        "token_layout": "[text, image, reference images]: img_slice = [T, T + N + R]",
        "hooks_033": "attn1_patch(q, k, v, pe=, attn_mask=, extra_options=) with joint q/k/v (B, H, T+N, D) "
                     "after QK-norm, before RoPE; extra_options img_slice, block_type 'double', block_index; "
                     "NO attn1_output_patch. Also optimized_attention_override, patches_replace['dit']"
                     "[('double_block', i)] and patches['double_block'] (after each block)",
        "hooks_0375": "no attn1_patch; optimized_attention_override (block_type/block_index set), "
                      "patches_replace['dit'] double_block replaces",
        "reference_tokens": "Qwen-Image-Edit: ref_latents after the image tokens (index method), "
                            "reference_image_num_tokens on 0.33",
    },
    "sd3": {
        "blocks": "joint_blocks.{i} (depth): context_block (text) + x_block (image); the last context_block is "
                  "pre_only",
        "qkv_weights": "joint_blocks.{i}.x_block.attn.qkv.weight fused (3*hidden, hidden) rows q|k|v, bias; "
                       "text: context_block.attn.qkv. SD3.5 Medium (MMDiT-X) adds x_block.attn2.qkv, an "
                       "image-only self-attention in x_block_self_attn_layers (a second attention call)",
        "qk_norm": "x_block.attn.ln_q / ln_k (RMSNorm per head, SD3.5; none on SD3.0); no RoPE (absolute "
                   "pos_embed added to the patches), so a swap needs no position argument",
        "token_layout": "[text (registers first if any), image]: image tokens at [T, T + N]; no img_slice",
        "hooks_033": "no attn1_patch; optimized_attention_override called with q/k/v (B, T+N, H*D) (no "
                     "skip_reshape), heads=; transformer_options carries NO block_type/block_index: identify "
                     "the block with a patches_replace['dit'][('double_block', i)] replace",
        "hooks_0375": "the same on 0.3.75",
        "reference_tokens": "none",
    },
    "lumina2": {
        "blocks": "context_refiner.{i} (text only), noise_refiner.{i} (image only), then layers.{i} (joint)",
        "qkv_weights": "layers.{i}.attention.qkv.weight fused ((n_heads + 2 n_kv_heads) * head_dim, dim), no "
                       "bias: rows [0:Hq*D] q, then Hkv*D k, Hkv*D v (grouped-query in Lumina 2.0: 24 q / 8 kv "
                       "heads; Z-Image 30 / 30); same layout in the refiners",
        "qk_norm": "attention.q_norm / k_norm (RMSNorm per head), fused with RoPE at inference "
                   "(comfy.quant_ops.ck.rms_rope), before the attention call",
        "token_layout": "joint [text padded to a multiple of 32 (cap_pad_token), image padded to a multiple of "
                        "32 (x_pad_token)]: image tokens at [T_pad, T_pad + N], padding after them",
        "hooks_033": "no attn1_patch; optimized_attention_override (q/k/v (B, H, N, D), skip_reshape) in every "
                     "refiner and main layer; transformer_options block_type 'double' and block_index only in "
                     "the main layers; no patches_replace['dit']; patches['double_block'] / "
                     "patches['noise_refiner'] run after a layer",
        "hooks_0375": "optimized_attention_override only (no block_index, no block patches)",
        "reference_tokens": "Z-Image omni: ref_latents embedded BEFORE the main image (each with its caption), "
                            "at timestep 0",
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
    if family == "flux2":
        return {"image_model": "flux2", "in_channels": 128, "out_channels": 128, "vec_in_dim": None,
                "context_in_dim": CONTEXT_DIM, "hidden_size": 64, "mlp_ratio": 3.0, "num_heads": 2,
                "depth": 2, "depth_single_blocks": 2, "axes_dim": [8, 8, 8, 8], "theta": 2000,
                "patch_size": 1, "qkv_bias": False, "guidance_embed": True, "global_modulation": True,
                "mlp_silu_act": True, "ops_bias": False, "default_ref_method": "index", "ref_index_scale": 10.0,
                "txt_ids_dims": [3], "yak_mlp": False, "txt_norm": False}
    if family == "chroma":
        # in/out_channels count the patchified latent (16 * 2 * 2); in_dim 64 = timestep 16 + guidance 16 +
        # modulation index 32 (fixed by Chroma.forward_orig); out_dim = hidden_size.
        return {"image_model": "chroma", "in_channels": 64, "out_channels": 64, "context_in_dim": CONTEXT_DIM,
                "hidden_size": 64, "mlp_ratio": 4.0, "num_heads": 2, "depth": 2, "depth_single_blocks": 2,
                "axes_dim": [4, 14, 14], "theta": 10000, "patch_size": 2, "qkv_bias": True, "in_dim": 64,
                "out_dim": 64, "hidden_dim": 64, "n_layers": 2, "txt_ids_dims": [], "vec_in_dim": None}
    if family == "qwen_image":
        return {"image_model": "qwen_image", "patch_size": 2, "in_channels": 64, "out_channels": 16,
                "num_layers": 2, "attention_head_dim": 32, "num_attention_heads": 2,
                "joint_attention_dim": CONTEXT_DIM, "axes_dims_rope": (4, 14, 14), "default_ref_method": "index"}
    if family == "sd3":
        # MMDiT fixes head_dim 64: hidden = 64 * depth, heads = depth. SD3.5 Large layout (RMS QK-norm, no
        # MMDiT-X attn2); a learned pos_embed table of 16x16 patches (the real one: 192x192).
        return {"in_channels": 16, "out_channels": 16, "patch_size": 2, "depth": 2, "input_size": None,
                "adm_in_channels": POOLED_DIM["sd3"],
                "context_embedder_config": {"target": "torch.nn.Linear",
                                            "params": {"in_features": CONTEXT_DIM, "out_features": 128}},
                "num_patches": 256, "pos_embed_max_size": 16, "qk_norm": "rms", "pos_embed_scaling_factor": None,
                "x_block_self_attn_layers": []}
    if family == "lumina2":
        # Z-Image (ComfyUI's ZImage config of the Lumina2 NextDiT): n_kv_heads = n_heads, z_image_modulation,
        # time_scale 1000, rope_theta 256, text and image padded to a multiple of 32 tokens by pad tokens.
        # dim cannot go below 256: z_image_modulation's t_embedder gives 256 features, the blocks' adaLN takes
        # min(dim, 256). 2 heads of 128 (Z-Image's head dim), its RoPE axes.
        return {"image_model": "lumina2", "patch_size": 2, "in_channels": 16, "dim": 256, "cap_feat_dim": CONTEXT_DIM,
                "n_layers": 2, "n_refiner_layers": 2, "n_heads": 2, "n_kv_heads": 2, "qk_norm": True,
                "axes_dims": [32, 48, 48], "axes_lens": [1536, 512, 512], "rope_theta": 256.0,
                "ffn_dim_multiplier": 8.0 / 3.0, "z_image_modulation": True, "time_scale": 1000.0,
                "pad_tokens_multiple": 32}
    raise ValueError(f"unknown DiT family {family!r}")


def _config_class(family: str):
    import comfy.supported_models as sm

    return {"flux": sm.Flux, "flux2": sm.Flux2, "chroma": sm.Chroma, "qwen_image": sm.QwenImage, "sd3": sm.SD3,
            "lumina2": sm.ZImage}[family]


def _unet_class(family: str):
    import comfy.ldm.chroma.model
    import comfy.ldm.flux.model
    import comfy.ldm.lumina.model
    import comfy.ldm.modules.diffusionmodules.mmdit
    import comfy.ldm.qwen_image.model

    return {"flux": comfy.ldm.flux.model.Flux, "flux2": comfy.ldm.flux.model.Flux,
            "chroma": comfy.ldm.chroma.model.Chroma,
            "qwen_image": comfy.ldm.qwen_image.model.QwenImageTransformer2DModel,
            "sd3": comfy.ldm.modules.diffusionmodules.mmdit.MMDiT, "lumina2": comfy.ldm.lumina.model.NextDiT}[family]


QK_SHARPNESS = 3.0
# The QK-norm modules of every family (Flux/Chroma, Qwen-Image image and text, SD3, Lumina2).
_QK_NORM_NAMES = ("query_norm", "key_norm", "norm_q", "norm_k", "norm_added_q", "norm_added_k", "ln_q", "ln_k",
                  "q_norm", "k_norm")


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
        if getattr(module, "pos_embed", None) is not None:
            # SD3's position table is a buffer ComfyUI leaves empty: the 2-D sin-cos table it was trained from.
            from comfy.ldm.modules.diffusionmodules.mmdit import get_2d_sincos_pos_embed_torch

            side = round(module.pos_embed.shape[1] ** 0.5)
            module.pos_embed.copy_(get_2d_sincos_pos_embed_torch(module.pos_embed.shape[2], side, side).unsqueeze(0))


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


def _tiny_base(family: str, dtype, overrides=None):
    config_cls = _config_class(family)
    unet_config = {**_accepted(_unet_class(family), {**_tiny_dit_config(family), **(overrides or {})}), "dtype": dtype}
    model_config = config_cls(unet_config)
    model_config.unet_config.update(unet_config)
    model_config.set_inference_dtype(dtype, None)
    return model_config.get_model({})


def tiny_dit(family: str = "flux", seed: int = 0, dtype=None, overrides=None):
    """A ModelPatcher around a tiny DiT of the given family, built by ComfyUI's own classes (CPU).

    dtype (default float32): the weights' dtype; weights are initialised and calibrated in float32, then
    cast. overrides: unet_config entries replacing the tiny config's (VARIANTS: Lumina 2.0's grouped-query
    heads, SD3.5 Medium's MMDiT-X self-attention)."""
    import torch

    testbed.import_comfyui()
    import comfy.model_management
    import comfy.model_patcher

    base = _tiny_base(family, torch.float32, overrides)
    init_dit_weights_(base.diffusion_model, seed)
    base.eval()
    calibrate_dit_output_(base, family)
    if dtype is not None and dtype != torch.float32:
        state = base.diffusion_model.state_dict()
        base = _tiny_base(family, dtype, overrides)
        base.diffusion_model.load_state_dict({k: v.to(dtype) for k, v in state.items()})
        base.eval()
    device = comfy.model_management.get_torch_device()
    return comfy.model_patcher.ModelPatcher(base, load_device=device, offload_device=device)


# Layouts of the same families the default tiny configs do not show: tiny_dit(family, overrides=...).
VARIANTS = {
    # Lumina 2.0's grouped-query attention (24 q / 8 kv heads there): 4 q heads of 64, 2 kv heads.
    "lumina2_gqa": ("lumina2", {"n_heads": 4, "n_kv_heads": 2, "axes_dims": [16, 24, 24]}),
    # SD3.5 Medium (MMDiT-X): x_block.attn2, an image-only self-attention, in block 0.
    "sd35_medium": ("sd3", {"x_block_self_attn_layers": [0]}),
}


def tiny_variant(name: str, seed: int = 0):
    """tiny_dit of a VARIANTS entry."""
    family, overrides = VARIANTS[name]
    return tiny_dit(family, seed, overrides=overrides)


def tiny_unknown_dit(seed: int = 0):
    """A ModelPatcher around a tiny AuraFlow MMDiT (comfy.ldm.aura.mmdit, supported_models.AuraFlow): a DiT
    family the pack has no adapter for, for the refusal tests. Not sampled (its weights stay random)."""
    import torch

    testbed.import_comfyui()
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models as sm

    unet_config = {"in_channels": 4, "out_channels": 4, "patch_size": 2, "dim": 64, "n_layers": 2,
                   "n_double_layers": 1, "n_heads": 2, "global_conddim": 64, "cond_seq_dim": CONTEXT_DIM,
                   "max_seq": 64, "dtype": torch.float32}
    model_config = sm.AuraFlow(unet_config)
    model_config.unet_config.update(unet_config)
    model_config.set_inference_dtype(torch.float32, None)
    base = model_config.get_model({})
    testbed.init_weights_(base.diffusion_model, seed)
    device = comfy.model_management.get_torch_device()
    return comfy.model_patcher.ModelPatcher(base, load_device=device, offload_device=device)


def tiny_dit_conditioning(family: str, seed: int, tokens: int = 8, batch: int = 1):
    """A CONDITIONING list as the family's text encoder node would give it (random token embeddings of
    width CONTEXT_DIM, the pooled vector where the family takes one, its guidance value)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    cond = torch.randn((batch, tokens, CONTEXT_DIM), generator=gen)
    # CLIPTextEncode always sets pooled_output (None where the encoder has none; ComfyUI 0.3.75's
    # model_base.Flux.encode_adm reads the key unconditionally).
    extra = {"pooled_output": None}
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
    """Text tokens before the image tokens in the joint sequence, for a conditioning of `tokens` tokens:
    Flux.2's extra_conds left-pads the text to 512 tokens; Z-Image pads it to a multiple of 32."""
    if family == "flux2":
        return max(tokens, 512)
    if family == "lumina2":
        return -(-tokens // 32) * 32
    return tokens


def heads_and_head_dim(family: str) -> tuple[int, int]:
    """(heads, head dim) of the tiny model's joint attention."""
    config = _tiny_dit_config(family)
    if family == "qwen_image":
        return config["num_attention_heads"], config["attention_head_dim"]
    if family == "sd3":
        return config["depth"], 64
    if family == "lumina2":
        return config["n_heads"], config["dim"] // config["n_heads"]
    return config["num_heads"], config["hidden_size"] // config["num_heads"]


def indexed_attention_calls(family: str) -> list[tuple[str, int]]:
    """(block_type, block_index) that transformer_options carries at the attention calls of one forward
    where core sets them (ComfyUI 0.33; on 0.3.75 Flux/Chroma/Qwen-Image only). SD3 sets none."""
    config = _tiny_dit_config(family)
    if family in ("flux", "flux2", "chroma"):
        return ([("double", i) for i in range(config["depth"])]
                + [("single", i) for i in range(config["depth_single_blocks"])])
    if family == "qwen_image":
        return [("double", i) for i in range(config["num_layers"])]
    if family == "lumina2":  # main layers only: the refiners run before block_index is set
        return [("double", i) for i in range(config["n_layers"])]
    return []


def attention_calls_per_forward(family: str) -> int:
    """optimized_attention calls of one model forward: one per joint block; Z-Image also runs its
    context refiner (text only) and noise refiner (image only) layers first."""
    config = _tiny_dit_config(family)
    if family == "sd3":
        return config["depth"] + len(config["x_block_self_attn_layers"])
    if family == "lumina2":
        return 2 * config["n_refiner_layers"] + config["n_layers"]
    return len(indexed_attention_calls(family))
