"""SD3 / SD3.5 (Large, Large Turbo, Medium): comfy.ldm.modules.diffusionmodules.mmdit.MMDiT (model_base.SD3
builds its OpenAISignatureMMDITWrapper subclass; the same block code on ComfyUI 0.3.75 and 0.33).

Layers: "double.<i>" (joint_blocks.<i>: the image half x_block's joint attention, x_block.attn.qkv, fused
(3D, D), rows [0, D) q, [D, 2D) k, [2D, 3D) v as mmdit.split_qkv cuts them; the text half context_block
has its own attn.qkv, left alone) and, on SD3.5 Medium (MMDiT-X), "double.<i>.1" for the blocks listed in
x_block_self_attn_layers: x_block.attn2.qkv, an image-only self-attention of the same block (its own
layer: its own weights and directions). Width D = hidden_size, level 0.

Token rows: x_block's q/k/v Linears see the image tokens only (B, N, D): text and registers go through
context_block, and the joint sequence [context, x] is built after the projections. Every row is an image
token (checked against N = ceil(H / p) * ceil(W / p) of the latent).

Apply Latent Direction: Z' = Z + alpha * s * n on the input of x_block.attn.qkv (and attn2.qkv for
"double.<i>.1"): the modulated, normed image tokens, before ln_q / ln_k (SD3.5's RMS QK-norm); SD3 has no
RoPE. Needs only add_object_patch and the APPLY_MODEL wrapper: 0.3.75 and 0.33 alike.

The swap: dit_swap's "mmdit" hook (a patches_replace["dit"] double_block marker and
optimized_attention_override), which works on 0.3.75 too; choosing "double.<i>" or "double.<i>.1" swaps
block i, i.e. both its joint attention and its MMDiT-X self-attention. Presets as dit_common.
"""

from __future__ import annotations

from .base import QKVSource, linear_in_features
from .dit_common import PREFIX, JointBlocksAdapter, patch_tokens, row_error

_MODULE = "comfy.ldm.modules.diffusionmodules.mmdit"
HELP = ("comma-separated: 'double' (every joint block, with SD3.5 Medium's image self-attention layers), a block "
        "such as 'double.3' (with 'double.3.1', its x_block.attn2, where the model has one)")


class SD3ImageRows:
    """token_rows rule for x_block's qkv: all N rows (the image stream alone)."""

    def __init__(self, patch_size: int):
        self.patch_size = int(patch_size)

    def __call__(self, call, length: int) -> slice:
        image = patch_tokens(call.latent_shape, self.patch_size)
        if length != image:
            raise row_error("SD3", length, f"the {image} image tokens this latent makes")
        return slice(0, length)


class SD3Adapter(JointBlocksAdapter):
    name = "sd3"
    display = "SD3/SD3.5"
    help_text = HELP
    capabilities = ("directions", "apply", "swap", "inversion")
    min_comfyui = {"inversion": (0, 33, 0)}  # the swap's "mmdit" hooks exist on 0.3.75 as well

    @classmethod
    def matches(cls, diffusion_model) -> bool:
        mro = [(c.__module__, c.__name__) for c in type(diffusion_model).__mro__]
        return (_MODULE, "MMDiT") in mro and bool(len(getattr(diffusion_model, "joint_blocks", ())))

    def layers(self):
        from ...sae_math.layers import LayerInfo

        out = []
        for i, block in enumerate(self._dm.joint_blocks):
            x = block.x_block
            out.append(LayerInfo(f"double.{i}", f"joint_blocks.{i}", int(x.attn.qkv.in_features), 0))
            if getattr(x, "x_block_self_attn", False):
                out.append(LayerInfo(f"double.{i}.1", f"joint_blocks.{i}", int(x.attn2.qkv.in_features), 0))
        return out

    @staticmethod
    def _path(layer):
        return f"{layer.module_path}.x_block.{'attn2' if layer.key.count('.') == 2 else 'attn'}.qkv"

    def qkv_source(self, layer):
        d = layer.width
        return QKVSource(keys=(f"{PREFIX}{self._path(layer)}.weight",), rows=((0, d), (d, 2 * d), (2 * d, 3 * d)))

    def attention_inputs(self, key):
        layer = self.layer(key)
        return [(self._path(layer), (0, 3 * layer.width), SD3ImageRows(self._dm.patch_size))]

    def text_width(self):
        return linear_in_features(getattr(self._dm, "context_embedder", None))  # nn.Identity without a config: None

    # -- for the swap ---------------------------------------------------------------------------------

    def attention_hook(self):
        return "mmdit"

    def layer_for_call(self, extra_options):
        """The block MMDiTBlockMarker named in the attention call's transformer_options (SD3 sets no
        block_index itself); None outside a marked block."""
        from ..dit_swap import BLOCK_KEY

        mark = extra_options.get(BLOCK_KEY)
        return None if mark is None else f"{mark[0][0]}.{int(mark[0][1])}"

    def image_token_slice(self, extra_options, sequence_length):
        """Joint call: [text + registers, image] -> the last N; MMDiT-X self-attention: all of it."""
        from ..dit_swap import mmdit_image_range

        where = mmdit_image_range(extra_options, sequence_length)
        if where is None:
            raise ValueError(f"an SD3 attention call of {sequence_length} tokens outside a marked block")
        return slice(where[1], where[2])
