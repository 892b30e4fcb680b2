"""What the DiT family adapters other than Flux share (Qwen-Image, SD3/3.5, Lumina2/Z-Image): the layer
presets, the block keys of attention calls, token counts.

Layer keys follow ComfyUI's own block naming (transformer_options["block_type"] / patches_replace["dit"]
keys): every joint block is "double.<i>"; a second self-attention inside block i (SD3.5 Medium's MMDiT-X
x_block.attn2) is "double.<i>.1". A DiT attends over one token grid at every depth, so the UNet presets
that name resolutions or UNet parts have no counterpart and are refused with the reason.
"""

from __future__ import annotations

from ...sae_math.layers import FPE_PRESET, LayerInfo, select_layers
from .base import FamilyAdapter

PREFIX = "diffusion_model."
UNET_ONLY_PRESETS = ("middle block", "latent resolution", "lowest resolution", "input blocks", "output blocks")


def patch_tokens(shape, patch: int) -> int:
    """Tokens of a latent of shape [B, C, (T,) H, W] patchified p x p (ComfyUI pads H, W to the patch size:
    ceil; every frame of a 5-D latent is its own grid, Qwen-Image's T = 1)."""
    h, w = int(shape[-2]), int(shape[-1])
    frames = 1
    for t in shape[2:-2]:
        frames *= int(t)
    return frames * (-(-h // patch)) * (-(-w // patch))


class JointBlocksAdapter(FamilyAdapter):
    """The part Qwen-Image, SD3/3.5 and Lumina2/Z-Image share: one list of joint blocks ("double.<i>"), every
    block the default of both methods (no published vital-layer set adopted for these layouts; docs/dit.md),
    the presets of dit_select. Subclasses set help_text (the custom list's syntax) and answer the rest."""

    help_text = "comma-separated: 'double' (every block), a block such as 'double.3'"

    def __init__(self, model):
        super().__init__(model)
        self._dm = model.get_model_object("diffusion_model")

    def select(self, layers, preset, custom=""):
        return dit_select(layers, preset, custom, lambda: self.default_layers("swap"), self.help_text, self.display)

    def default_layers(self, method):
        return self.layers()

    def custom_list_help(self):
        return self.help_text

    def layer_for_call(self, extra_options):
        return layer_from_block(extra_options)


def dit_select(layers: list[LayerInfo], preset: str, custom: str, default, help_text: str, display: str):
    """'all', the FPE default (default(): the family's swap default) and 'custom list' (select_layers'
    prefix matching: 'double', 'double.3'); UNet presets refused naming what to choose instead."""
    if preset == "all":
        return list(layers)
    if preset == FPE_PRESET:
        return default()
    if preset == "custom list":
        if not custom.strip():
            raise ValueError(f"'custom list' needs a layer list: {help_text}")
        return select_layers(layers, "custom list", custom)
    if preset in UNET_ONLY_PRESETS:
        raise ValueError(f"{preset!r} names a part of a UNet; a {display} transformer's blocks all attend over the "
                         f"same token grid: choose 'all' or 'custom list' ({help_text})")
    raise ValueError(f"unknown layer preset {preset!r}; on {display} models choose 'all', '{FPE_PRESET}' or "
                     "'custom list'")


def layer_from_block(extra_options) -> str | None:
    """"double.<i>" from transformer_options' block_type / block_index, None where they are not set."""
    kind, index = extra_options.get("block_type"), extra_options.get("block_index")
    if kind != "double" or index is None:
        return None
    return f"double.{int(index)}"


def row_error(family: str, length: int, what: str) -> RuntimeError:
    return RuntimeError(f"Apply Latent Direction: a {family} q/k/v input of {length} tokens does not hold {what}; "
                        "this model lays its tokens out differently (please report it, with the model)")
