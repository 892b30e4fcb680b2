"""Lumina 2.0 and Z-Image: comfy.ldm.lumina.model.NextDiT (supported_models.Lumina2 / ZImage; the same layer
code on ComfyUI 0.3.75 and 0.33; Z-Image's pixel-space variant, another class, is not matched).

Layers: "double.<i>" (layers.<i>, the main joint layers: ComfyUI's block_type "double"), q/k/v from
attention.qkv, fused ((Hq + 2 Hkv) * Dh, D) without bias: rows [0, Hq Dh) q, then Hkv Dh rows k, then Hkv Dh
rows v (grouped-query attention in Lumina 2.0: three row ranges of different sizes; Z-Image Hq = Hkv).
Width D = dim, level 0. The refiners are not layers: context_refiner is text only, and noise_refiner, an
image-only self-attention that runs before the main layers, has no block_index in transformer_options, so
the swap cannot address it; Method A keeps to the same main layers, so one layer list means the same
blocks for both methods.

Token rows: each main layer's qkv sees the joint sequence [text (padded to pad_tokens_multiple on Z-Image;
Z-Image Omni: reference captions and images too), main image (N tokens, then padding to the multiple)];
the main image is always last. Image rows: [L - Np, L - Np + N), N = ceil(H / p) * ceil(W / p), Np = N
padded to the multiple (joint_swap.padded_image_tokens); the pad tokens are left alone.

Apply Latent Direction: Z' = Z + alpha * s * n on those rows of attention.qkv's input (the modulated
attention_norm1 output, before q_norm / k_norm and RoPE). Needs only add_object_patch and the APPLY_MODEL
wrapper: 0.3.75 and 0.33 alike. The swap: dit_swap's "lumina" hook (optimized_attention_override reading
block_type / block_index): 0.33 only.
"""

from __future__ import annotations

from ...sae_math.joint_swap import padded_image_tokens
from .base import QKVSource, linear_in_features
from .dit_common import (
    PREFIX,
    JointBlocksAdapter,
    patch_tokens,
    row_error,
)

_MODEL = ("comfy.ldm.lumina.model", "NextDiT")
HELP = "comma-separated: 'double' (every main joint layer), a layer such as 'double.3'"


class LuminaImageRows:
    """token_rows rule of LinearInputEdit for a main layer's qkv: the N image rows of the trailing Np."""

    def __init__(self, patch_size: int, multiple: int | None):
        self.patch_size = int(patch_size)
        self.multiple = multiple

    def __call__(self, call, length: int) -> slice:
        h, w = call.latent_shape[-2], call.latent_shape[-1]
        image = patch_tokens(call.latent_shape, self.patch_size)
        padded = padded_image_tokens(h, w, self.patch_size, self.multiple)
        if padded > length:
            raise row_error("Lumina2/Z-Image", length, f"the {padded} (padded) image tokens this latent makes")
        return slice(length - padded, length - padded + image)


class Lumina2Adapter(JointBlocksAdapter):
    name = "lumina2"
    display = "Lumina2/Z-Image"
    help_text = HELP
    # Invert Latent: the reversed flow ODE as on every flow family. On the tiny random Z-Image of the tests
    # the first step's fixed point needs a first sigma <= ~0.02 (150 steps) to converge; the node warns with
    # the residual when it does not (inversion.invert).
    capabilities = ("directions", "apply", "swap", "inversion")
    min_comfyui = {"swap": (0, 33, 0), "inversion": (0, 33, 0)}  # block_index in transformer_options: 0.33

    @classmethod
    def matches(cls, diffusion_model) -> bool:
        return (type(diffusion_model).__module__, type(diffusion_model).__name__) == _MODEL and bool(
            len(getattr(diffusion_model, "layers", ())))

    def layers(self):
        from ...sae_math.layers import LayerInfo

        return [LayerInfo(f"double.{i}", f"layers.{i}", int(b.attention.qkv.in_features), 0)
                for i, b in enumerate(self._dm.layers)]

    def row_ranges(self, layer):
        """((0, Hq Dh), (Hq Dh, (Hq + Hkv) Dh), ((Hq + Hkv) Dh, (Hq + 2 Hkv) Dh)) of layer's qkv."""
        attn = self._dm.get_submodule(f"{layer.module_path}.attention")
        q = int(attn.n_local_heads) * int(attn.head_dim)
        kv = int(attn.n_local_kv_heads) * int(attn.head_dim)
        return (0, q), (q, q + kv), (q + kv, q + 2 * kv)

    def qkv_source(self, layer):
        return QKVSource(keys=(f"{PREFIX}{layer.module_path}.attention.qkv.weight",), rows=self.row_ranges(layer))

    def attention_inputs(self, key):
        layer = self.layer(key)
        rows = LuminaImageRows(self._dm.patch_size, getattr(self._dm, "pad_tokens_multiple", None))
        return [(f"{layer.module_path}.attention.qkv", (0, self.row_ranges(layer)[2][1]), rows)]

    def text_width(self):
        embedder = getattr(self._dm, "cap_embedder", None)  # Sequential(RMSNorm, Linear)
        return linear_in_features(embedder[-1] if embedder is not None and len(embedder) else None)

    # -- for the swap ---------------------------------------------------------------------------------

    def attention_hook(self):
        return "lumina"

    def image_token_slice(self, extra_options, sequence_length):
        """The main image's N tokens of a main-layer attention call (the latent's shape from the swap's
        SwapLatentShape wrapper; the pad tokens after them excluded, though the swap moves them with the
        image: they are the image stream's)."""
        from ..dit_swap import LATENT_SHAPE_KEY

        shape = extra_options.get(LATENT_SHAPE_KEY)
        if shape is None:
            raise ValueError("no latent shape in transformer_options (the swap's SwapLatentShape wrapper sets it)")
        p, multiple = int(self._dm.patch_size), getattr(self._dm, "pad_tokens_multiple", None)
        padded = padded_image_tokens(shape[-2], shape[-1], p, multiple)
        start = sequence_length - padded
        return slice(start, start + patch_tokens(shape, p))
