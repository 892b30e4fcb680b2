"""The real-ComfyUI test bed: imports ComfyUI from COMFYUI_PATH, loads this pack through ComfyUI's own
custom-node loader, and builds tiny SD1.x / SD2.x / SDXL UNets from ComfyUI's own model classes with
deterministic random weights (no checkpoint can be downloaded here)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# The pack's pure math imports as a plain package (`import sae_math.eigen`): no ComfyUI needed, and a test
# that imports it this way shows the module is pure (sae_patches/nodes use relative imports beyond
# sae_math and load only as ComfyUI loads the pack: testbed.pack_module). Appended, so ComfyUI's own
# top-level `nodes` module keeps precedence over the pack's nodes/ folder.
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))


def import_comfyui() -> Path:
    """Put ComfyUI on sys.path and force CPU mode before comfy.model_management is imported."""
    path = os.environ.get("COMFYUI_PATH")
    if not path:
        raise RuntimeError("COMFYUI_PATH is not set: run the tests through scripts/test.sh")
    root = Path(path).resolve()
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    comfy.cli_args.args.disable_all_custom_nodes = False
    return root


def load_pack():
    """Load this repository as a custom node, exactly the way ComfyUI's startup does."""
    import_comfyui()
    import nodes  # ComfyUI's nodes.py

    module_name = str(REPO).replace(".", "_x_")
    if module_name not in sys.modules:
        ok = asyncio.run(nodes.load_custom_node(str(REPO)))
        if not ok:
            raise RuntimeError("ComfyUI could not load the pack")
    return sys.modules[module_name]


def pack_module(name: str):
    """A submodule of the pack as ComfyUI loaded it, e.g. pack_module('sae_patches.weights')."""
    import importlib

    pkg = load_pack()
    return importlib.import_module(f"{pkg.__name__}.{name}")


# ----------------------------------------------------------------------------------------------------
# Tiny models with the real architectures (shrunken widths, real block layout).

def _tiny_unet_config(family: str) -> dict:
    import torch

    common = {
        "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
        "legacy": False, "dtype": torch.float32, "in_channels": 4, "model_channels": 32,
        "use_temporal_attention": False, "use_temporal_resblock": False,
    }
    if family == "sd15":
        return {**common, "adm_in_channels": None, "num_res_blocks": [2, 2, 2, 2],
                "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "channel_mult": [1, 2, 4, 4],
                "transformer_depth_middle": 1, "use_linear_in_transformer": False, "context_dim": 64,
                "num_heads": 8, "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0]}
    if family == "sd20":
        return {**common, "adm_in_channels": None, "num_res_blocks": [2, 2, 2, 2],
                "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "channel_mult": [1, 2, 4, 4],
                "transformer_depth_middle": 1, "use_linear_in_transformer": True, "context_dim": 64,
                "num_head_channels": 16, "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0]}
    if family == "sdxl":
        return {**common, "num_classes": "sequential", "adm_in_channels": 2816, "num_res_blocks": [2, 2, 2],
                "transformer_depth": [0, 0, 1, 1, 2, 2], "channel_mult": [1, 2, 4],
                "transformer_depth_middle": 2, "use_linear_in_transformer": True, "context_dim": 64,
                "num_head_channels": 16, "transformer_depth_output": [0, 0, 0, 1, 1, 1, 2, 2, 2]}
    raise ValueError(family)


# Block layout, depths and head structure are the real ones (SD1.5/SD2.x: 16 attn1 layers, SDXL here 2/1
# transformers per level instead of 2/10, so 2*2+2*2 + 2 + 3*1+3*2... see test_layers); widths shrunk.
FAMILIES = ("sd15", "sd20", "sdxl")


SELF_ATTENTION_SHARPNESS = 3.0


def init_weights_(module, seed: int) -> None:
    """ComfyUI's ops skip initialisation: give every parameter a deterministic, well-scaled value."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(module.named_parameters()):
            if p.numel() == 0:
                continue
            if p.ndim >= 2:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=gen) / fan_in**0.5)
                if ".attn1.to_q." in name or ".attn1.to_k." in name:
                    # Trained self-attention is peaked (it links each token to a few related ones: layout);
                    # unit-scale random q/k give near-uniform maps that carry no structure to swap.
                    p.mul_(SELF_ATTENTION_SHARPNESS)
            elif name.endswith("bias"):
                p.copy_(0.02 * torch.randn(p.shape, generator=gen))
            else:  # norm scales
                p.copy_(1.0 + 0.05 * torch.randn(p.shape, generator=gen))


def calibrate_output_(base, family: str) -> None:
    """Scale the UNet's last conv so the predicted noise has unit std at sigma = 1, like a trained model.
    (Random weights give an output ~1000x too small: the sampler would then ignore the model, prompts and
    attention alike.)"""
    import torch

    gen = torch.Generator().manual_seed(1234)
    x = torch.randn((2, 4, 16, 16), generator=gen)
    cond = tiny_conditioning(family, 1234, batch=2)
    kwargs = {}
    if family == "sdxl":
        kwargs["y"] = torch.randn((2, 2816), generator=gen)
    with torch.no_grad():
        out = base.diffusion_model(x, torch.full((2,), 500.0), context=cond[0][0], **kwargs)
        last = base.diffusion_model.out[-1]
        last.weight.mul_(1.0 / out.std())
        last.bias.mul_(1.0 / out.std())


def _tiny_base(family: str, dtype, manual_cast_dtype=None):
    import comfy.supported_models as sm

    config_cls = {"sd15": sm.SD15, "sd20": sm.SD20, "sdxl": sm.SDXL}[family]
    unet_config = {**_tiny_unet_config(family), "dtype": dtype}
    model_config = config_cls(unet_config)
    # The family's unet_extra_config (num_heads / num_head_channels) was written over ours: restore the
    # shrunken head layout so tiny widths still have several heads.
    model_config.unet_config.update(unet_config)
    model_config.set_inference_dtype(dtype, manual_cast_dtype)
    return model_config.get_model({})


def tiny_model(family: str = "sd15", seed: int = 0, dtype=None, manual_cast_dtype=None):
    """A ModelPatcher around a tiny UNet of the given family, built by ComfyUI's own classes.

    dtype (default float32): the weights' and the UNet's dtype, e.g. torch.float16 / torch.bfloat16 as
    ComfyUI runs half-precision checkpoints; manual_cast_dtype: ComfyUI's "weights in dtype, compute in
    this" mode. The weights are the float32 model's, cast (initialised and calibrated in float32)."""
    import torch

    import_comfyui()
    import comfy.model_management
    import comfy.model_patcher

    base = _tiny_base(family, torch.float32)
    init_weights_(base.diffusion_model, seed)
    base.eval()
    calibrate_output_(base, family)
    if dtype is not None and dtype != torch.float32:
        state = base.diffusion_model.state_dict()
        base = _tiny_base(family, dtype, manual_cast_dtype)
        base.diffusion_model.load_state_dict({k: v.to(dtype) for k, v in state.items()})
        base.eval()
    device = comfy.model_management.get_torch_device()
    return comfy.model_patcher.ModelPatcher(base, load_device=device, offload_device=device)


def tiny_conditioning(family: str, seed: int, tokens: int = 77, batch: int = 1):
    """A CONDITIONING list as CLIPTextEncode would give it (random token embeddings)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    cond = torch.randn((batch, tokens, 64), generator=gen)
    extra = {}
    if family == "sdxl":
        extra = {"pooled_output": torch.randn((batch, 1280), generator=gen), "width": 256, "height": 256}
    return [[cond, extra]]


def sample(model, positive, negative, latent, *, seed=0, steps=6, cfg=4.0, sampler="euler",
           scheduler="normal", denoise=1.0, batch_index=None):
    """Run ComfyUI's own KSampler path (comfy.sample.sample) and return the denoised latent."""
    import comfy.sample

    noise = comfy.sample.prepare_noise(latent, seed, batch_index)
    return comfy.sample.sample(model, noise, steps, cfg, sampler, scheduler, positive, negative, latent,
                               denoise=denoise, seed=seed)


def empty_latent(batch=1, size=16):
    import torch

    return torch.zeros((batch, 4, size, size))


# ----------------------------------------------------------------------------------------------------
# Observing attention patches from the outside (used to check where and when a patch acts).

class InputRecorder:
    """A pair of attn1_patch callables around other patches: `before` remembers the self-attention input
    each layer receives, `after` records whether it was changed by the patches between them, together
    with the UNet timestep (computed independently from extra_options['sigmas']) and the row."""

    def __init__(self, model_sampling):
        self.model_sampling = model_sampling
        self.seen = {}
        self.events = []  # (layer key, timestep (float), row, changed (bool), max abs change)

    def before(self, n, context, value, extra_options):
        self.seen[id(extra_options.get("block")), extra_options.get("block_index")] = (n, context, value)
        return n, context, value

    def after(self, n, context, value, extra_options):
        block = extra_options["block"]
        key = f"{block[0]}.{block[1]}.{extra_options.get('block_index', 0)}"
        n0, c0, v0 = self.seen.pop((id(block), extra_options.get("block_index")))
        sigmas = extra_options["sigmas"]
        t = self.model_sampling.timestep(sigmas).repeat(n.shape[0] // sigmas.shape[0])
        for row in range(n.shape[0]):
            diffs = [(a[row] - b[row]).abs().max().item() for a, b in ((n, n0), (context, c0), (value, v0))]
            self.events.append((key, float(t[row]), row, max(diffs) > 0, diffs))
        return n, context, value


def with_recorder(model, patch_fn):
    """Clone model, put recorder.before, then whatever patch_fn(clone) -> patched adds, then recorder.after."""
    rec = InputRecorder(model.get_model_object("model_sampling"))

    # Plain functions: ComfyUI deep-copies model_options on clone, which would copy a bound method's
    # object (two recorders); functions are copied by reference.
    def before(*args):
        return rec.before(*args)

    def after(*args):
        return rec.after(*args)

    m = model.clone()
    m.set_model_attn1_patch(before)
    m = patch_fn(m)
    m = m.clone()
    m.set_model_attn1_patch(after)
    return m, rec


def principal_angles(a, b):
    """Angle (radians) between corresponding rows of a and b, ignoring sign and norm (float64)."""
    import torch

    a = a.double() / a.double().norm(dim=-1, keepdim=True)
    b = b.double() / b.double().norm(dim=-1, keepdim=True)
    dot = (a * b).sum(-1).abs()
    perp = (a - (a * b).sum(-1, keepdim=True) * b).norm(dim=-1)
    return torch.atan2(perp, dot)
