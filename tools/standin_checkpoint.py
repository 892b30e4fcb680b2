"""A stand-in SD1.5 checkpoint: SD1.5's real layer shapes and key names, deterministic random weights.

No real checkpoint can be downloaded here, yet ComfyUI's CheckpointLoaderSimple only recognises models with
the real layout (detection matches model_channels 320, context_dim 768). The UNet, the CLIP-L text encoder
and the VAE are built by ComfyUI's own classes, initialised from seeded generators, and saved with ComfyUI's
own key prefixes (model.diffusion_model.*, cond_stage_model.transformer.text_model.*, first_stage_model.*),
in fp16 (about 2.1 GB). The file lives in the cache, outside git, and is generated only when missing.

    python -m tools.standin_checkpoint [--path FILE] [--force] [--verify]
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from tools.comfy_env import cache_dir, import_comfyui

log = logging.getLogger(__name__)

FILENAME = "sae-standin-sd15.safetensors"
SEED = 20240615
# Scale of the UNet's final conv (out.2). Measured at full size: unscaled, the predicted noise has std ~0.5
# and cond - uncond ~0.2 at every sigma (activations stay below ~2: no fp16 risk); halved, CFG 7 gives a
# guided noise prediction near unit scale, so the UNet (and any attention edit) visibly shapes the image.
UNET_OUT_SCALE = 0.5
# The VAE decoder's last conv: decoded pixels come out around 0.5 +- 0.15, almost none clipped.
VAE_OUT_SCALE = 0.5

# The SD15 entry of comfy/model_detection.py (unet_config_from_diffusers_unet), dtype aside.
SD15_UNET_CONFIG = {
    "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
    "legacy": False, "adm_in_channels": None, "in_channels": 4, "model_channels": 320,
    "num_res_blocks": [2, 2, 2, 2], "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "channel_mult": [1, 2, 4, 4],
    "transformer_depth_middle": 1, "use_linear_in_transformer": False, "context_dim": 768, "num_heads": 8,
    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    "use_temporal_attention": False, "use_temporal_resblock": False,
}
# The SD1.x/SD2.x VAE of comfy/sd.py (VAE.__init__, "default SD1.x/SD2.x VAE parameters").
SD_VAE_DDCONFIG = {
    "double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
    "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0,
}


def default_path() -> Path:
    return cache_dir() / "models" / "checkpoints" / FILENAME


def init_weights_(module, seed: int, scaled: dict[str, float] | None = None) -> None:
    """Deterministic, well-scaled values for every parameter (ComfyUI's ops skip initialisation).

    Matrices, convolution kernels and embeddings: N(0, 1/fan_in); norm scales: 1; biases: N(0, 0.02^2).
    `scaled` multiplies the parameters whose name starts with a given prefix.
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(module.named_parameters()):
            if p.numel() == 0:
                continue
            if p.ndim >= 2:
                fan_in = p[0].numel()
                value = torch.randn(p.shape, generator=gen) / fan_in**0.5
            elif name.endswith("bias"):
                value = 0.02 * torch.randn(p.shape, generator=gen)
            elif p.ndim == 0:  # CLIP logit_scale (not saved)
                value = torch.tensor(4.6052)
            else:  # norm scales
                value = torch.ones(p.shape)
            for prefix, factor in (scaled or {}).items():
                if name.startswith(prefix):
                    value = value * factor
            p.copy_(value.to(p.dtype))


def build_state_dict(seed: int = SEED, dtype=None) -> dict:
    """The full checkpoint state dict, keys exactly as ComfyUI saves an SD1.5 checkpoint."""
    import torch

    import_comfyui()
    import comfy.sd
    import comfy.supported_models
    from comfy.ldm.models.autoencoder import AutoencoderKL

    dtype = dtype or torch.float16
    model_config = comfy.supported_models.SD15(dict(SD15_UNET_CONFIG))
    model_config.set_inference_dtype(dtype, None)
    base = model_config.get_model({})
    init_weights_(base.diffusion_model, seed, {"out.2.": UNET_OUT_SCALE})

    clip = comfy.sd.CLIP(model_config.clip_target(), parameters=0, model_options={"dtype": dtype})
    init_weights_(clip.cond_stage_model, seed + 1)

    vae = AutoencoderKL(ddconfig=dict(SD_VAE_DDCONFIG), embed_dim=4)
    init_weights_(vae, seed + 2, {"decoder.conv_out.": VAE_OUT_SCALE})

    sd = base.state_dict_for_saving(clip.get_sd(), vae.state_dict())
    return {k: v.detach().to(dtype).contiguous() for k, v in sd.items()}


def generate(path: Path, seed: int = SEED) -> Path:
    """Write the checkpoint to `path` (through a temporary name, then an atomic rename)."""
    import_comfyui()
    import comfy.utils

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    sd = build_state_dict(seed)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    metadata = {"sae.standin": "SD1.5 layer shapes, deterministic random weights", "sae.seed": str(seed)}
    try:
        comfy.utils.save_torch_file(sd, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("wrote %s (%.2f GB) in %.1f s", path, path.stat().st_size / 1e9, time.perf_counter() - t0)
    return path


def verify(path: Path) -> str:
    """Load through comfy.sd.load_checkpoint_guess_config (what CheckpointLoaderSimple calls); return the
    detected model config's class name. Raises unless it is SD15 with all three parts."""
    import_comfyui()
    import comfy.sd

    model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(str(path), output_vae=True, output_clip=True)
    name = type(model.model.model_config).__name__
    if name != "SD15" or clip is None or vae is None:
        raise RuntimeError(f"{path} loads as {name} (clip={clip is not None}, vae={vae is not None})")
    return name


def ensure_standin_checkpoint(path: str | os.PathLike | None = None, *, in_process: bool = False) -> Path:
    """The stand-in checkpoint's path, generated first if missing.

    By default generation runs in a child process (`python -m tools.standin_checkpoint`), so the caller
    neither imports ComfyUI nor keeps the ~4 GB the build needs.
    """
    path = Path(path) if path else default_path()
    if path.is_file():
        return path
    if in_process:
        return generate(path)
    repo = Path(__file__).resolve().parent.parent
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(repo), env.get("PYTHONPATH")]))
    subprocess.run([sys.executable, "-m", "tools.standin_checkpoint", "--path", str(path)],
                   check=True, cwd=str(repo), env=env)
    if not path.is_file():
        raise RuntimeError(f"generating {path} failed")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--path", type=Path, default=None, help=f"default: {default_path()}")
    parser.add_argument("--force", action="store_true", help="regenerate even if the file exists")
    parser.add_argument("--verify", action="store_true", help="load it through ComfyUI's checkpoint loader")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(message)s")  # ComfyUI's chatter
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[standin] %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    path = args.path or default_path()
    if args.force or not path.is_file():
        generate(path)
    else:
        log.info("exists: %s", path)
    if args.verify:
        t0 = time.perf_counter()
        log.info("loads as %s (%.1f s)", verify(path), time.perf_counter() - t0)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
