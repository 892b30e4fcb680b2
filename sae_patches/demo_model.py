"""The shapes-world demo model: a small SD1.x built from ComfyUI's own classes, described by its file.

ComfyUI's checkpoint loaders cannot detect a model this small (SD15 detection needs model_channels 320 and
context_dim 768; VAE and CLIP detection assume their full sizes), so the file carries its architecture as
JSON metadata (`sae.architecture`) and this module builds the three parts from it:

  MODEL  comfy.supported_models.SD15 with the file's unet_config (head layout overridden: SD15 forces 8 heads)
         -> BaseModel (eps prediction, SD1.x noise schedule, SD15 latent format) -> ModelPatcher
  CLIP   comfy.sd.CLIP over SD1Tokenizer + SD1ClipModel, a CLIPTextModel of the file's width/depth
  VAE    comfy.sd.VAE over AutoencoderKL with the file's ddconfig (downscale 8, 4 latent channels)

so EmptyLatentImage, VAEEncode/VAEDecode, CLIPTextEncode and every core sampler work unchanged, and every
pack node sees an SD1.x UNet. The training (tools/train_shapes.py) uses the same builders.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import comfy.model_management
import comfy.model_patcher
import comfy.sd
import comfy.sd1_clip
import comfy.supported_models
import comfy.supported_models_base
import comfy.utils
import torch

ARCHITECTURE_KEY = "sae.architecture"
FORMAT = "sae-shapes-demo-1"

# The committed demo checkpoint and its sha256 (checked at load: a corrupted or replaced file fails loudly).
EMBEDDED_FILENAME = "shapes-demo-sd1.safetensors"
EMBEDDED_PATH = Path(__file__).resolve().parent.parent / "models" / EMBEDDED_FILENAME
EMBEDDED_SHA256 = "8b5817bf1b0993cd908ec0642e9cf15b044aa937473b3374f6ab8a683885a270"

# Sizes chosen for what a 2-core CPU can train (tools/train_shapes.py; measurements in docs/shapes-model.md).
DEFAULT_ARCHITECTURE = {
    "format": FORMAT,
    "image_size": 64,
    "unet": {
        "use_checkpoint": False, "image_size": 8, "in_channels": 4, "out_channels": 4,
        "model_channels": 32, "num_res_blocks": [1, 1, 1], "channel_mult": [1, 2, 2],
        "transformer_depth": [1, 1, 1], "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1],
        "transformer_depth_middle": 1, "use_spatial_transformer": True, "use_linear_in_transformer": False,
        "legacy": False, "context_dim": 64, "adm_in_channels": None,
        "use_temporal_attention": False, "use_temporal_resblock": False,
        # SD's attention has 40-64 channels per head; SD15's extra config would force 8 heads of 8.
        "num_heads": -1, "num_head_channels": 32,
    },
    "clip": {"hidden_size": 64, "intermediate_size": 256, "num_attention_heads": 4, "num_hidden_layers": 2},
    "vae": {
        "double_z": True, "z_channels": 4, "resolution": 64, "in_channels": 3, "out_ch": 3, "ch": 32,
        "ch_mult": [1, 2, 2, 4], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0,
    },
}


def model_config(arch: dict) -> comfy.supported_models.SD15:
    """ComfyUI's SD15 model config for this architecture (SD1.x schedule, eps, SD15 latent format)."""
    unet = dict(arch["unet"])
    config = comfy.supported_models.SD15(unet)
    # BASE.__init__ copied SD15.unet_extra_config (8 heads) over ours; put the file's head layout back.
    config.unet_config["num_heads"] = unet["num_heads"]
    config.unet_config["num_head_channels"] = unet["num_head_channels"]
    return config


def build_base_model(arch: dict, dtype: torch.dtype = torch.float32, device=None):
    """comfy.model_base.BaseModel (weights uninitialised: ComfyUI's ops skip initialisation)."""
    config = model_config(arch)
    config.set_inference_dtype(dtype, None)
    return config.get_model({}, device=device)


def clip_model_options(arch: dict, dtype: torch.dtype | None = None) -> dict:
    options = {"clip_l_model_config": dict(arch["clip"])}
    if dtype is not None:
        options["dtype"] = dtype
    return options


def build_clip(arch: dict, dtype: torch.dtype | None = None) -> comfy.sd.CLIP:
    target = comfy.supported_models_base.ClipTarget(comfy.sd1_clip.SD1Tokenizer, comfy.sd1_clip.SD1ClipModel)
    return comfy.sd.CLIP(target, model_options=clip_model_options(arch, dtype))


def vae_config(arch: dict) -> dict:
    return {"params": {"embed_dim": 4, "ddconfig": dict(arch["vae"])}}


def split_state_dict(sd: dict) -> tuple[dict, dict, dict]:
    """(unet, clip, vae) state dicts from a checkpoint with ComfyUI's SD1.x key prefixes (`sd` unchanged:
    state_dict_prefix_replace pops the keys it moves, so each call gets its own copy)."""
    def part(prefix):
        return comfy.utils.state_dict_prefix_replace(dict(sd), {prefix: ""}, filter_keys=True)

    return part("model.diffusion_model."), part("cond_stage_model."), part("first_stage_model.")


def read_architecture(path: str | Path) -> dict:
    """The architecture in a demo checkpoint's metadata; ValueError naming the file if it has none."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    text = metadata.get(ARCHITECTURE_KEY)
    if text is None:
        raise ValueError(f"{path} has no '{ARCHITECTURE_KEY}' metadata: it is not a shapes-world demo "
                         "checkpoint (load ordinary checkpoints with Load Checkpoint)")
    arch = json.loads(text)
    if arch.get("format") != FORMAT:
        raise ValueError(f"{path}: unknown demo model format {arch.get('format')!r}, expected {FORMAT!r}")
    return arch


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_demo_checkpoint(path: str | Path, expected_sha256: str | None = None):
    """(ModelPatcher, CLIP, VAE) from a demo checkpoint, each placed as ComfyUI places its parts."""
    path = Path(path)
    if expected_sha256 is not None:
        actual = sha256_of(path)
        if actual != expected_sha256:
            raise ValueError(f"{path}: sha256 {actual} does not match the expected {expected_sha256}; "
                             "the file is damaged or not the one this version of the pack ships")
    arch = read_architecture(path)
    sd = comfy.utils.load_torch_file(str(path))
    unet_sd, _, vae_sd = split_state_dict(sd)

    config = model_config(arch)
    load_device = comfy.model_management.get_torch_device()
    dtype = comfy.model_management.unet_dtype(model_params=comfy.utils.calculate_parameters(unet_sd),
                                              supported_dtypes=config.supported_inference_dtypes)
    config.set_inference_dtype(dtype, comfy.model_management.unet_manual_cast(dtype, load_device))
    base = config.get_model({}, device=comfy.model_management.unet_offload_device())
    missing, unexpected = base.diffusion_model.load_state_dict(unet_sd, strict=False)
    _check_keys("UNet", path, missing, unexpected)
    model = comfy.model_patcher.ModelPatcher(base, load_device=load_device,
                                             offload_device=comfy.model_management.unet_offload_device())

    clip = build_clip(arch)
    # SD15's own key mapping (cond_stage_model.transformer.text_model.* -> clip_l.transformer.text_model.*).
    clip_sd = config.process_clip_state_dict(dict(sd))
    missing, unexpected = clip.load_sd(clip_sd, full_model=True)
    # Not saved by ComfyUI for SD1.x checkpoints: the projection and logit scale (unused by SD1.x).
    missing = [k for k in missing if not k.endswith(("text_projection.weight", "logit_scale"))]
    _check_keys("text encoder", path, missing, unexpected)

    vae = comfy.sd.VAE(sd=vae_sd, config=copy.deepcopy(vae_config(arch)))
    return model, clip, vae


def _check_keys(part: str, path: Path, missing, unexpected) -> None:
    if missing or unexpected:
        raise ValueError(f"{path}: the {part} weights do not match the architecture in its metadata "
                         f"(missing {list(missing)[:5]}, unexpected {list(unexpected)[:5]})")
