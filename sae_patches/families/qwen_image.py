"""Qwen-Image and its Edit variants (comfy.ldm.qwen_image.model.QwenImageTransformer2DModel, the same block
code on ComfyUI 0.3.75 and 0.33).

Layers: "double.<i>" (transformer_blocks.<i>, every block joint: ComfyUI's block_type "double"). The image
stream has its own separate q/k/v Linears, attn.to_q / to_k / to_v ((inner, D) each; the text stream's are
add_q_proj / add_k_proj / add_v_proj, left alone). Width D = to_q.in_features (Qwen-Image 3072), level 0.

Token rows: the image stream's sequence is [image (N), reference images (R)] (Qwen-Image-Edit appends its
ref_latents after the image tokens, whatever ref_latents_method; "index_timestep_zero" changes only the
modulation of the reference rows): N = T * ceil(H / p) * ceil(W / p) of the latent (B, C, T, H, W), R the
same count summed over the call's ref_latents. Every row before R is an image token, so the edit needs no
text length.

Apply Latent Direction: Z' = Z + alpha * s * n on the image rows of the input of to_q, to_k and to_v (the
modulated, normed image tokens img_modulated, before norm_q / norm_k and RoPE), one object patch per Linear
(linear_edit.LinearInputEdit; the three see the same Z, so each adds W n of its own weight). Needs only
add_object_patch and the APPLY_MODEL wrapper: 0.3.75 and 0.33 alike.

The swap: attn1_patch with img_slice (0.33 only: 0.3.75 has no attn1_patch in the Qwen-Image blocks).
Presets: "all", "custom list" ("double", "double.3"); the FPE default is every block (see dit_common).
"""

from __future__ import annotations

from .base import QKVSource, TokenLayout, linear_in_features
from .dit_common import (
    PREFIX,
    JointBlocksAdapter,
    patch_tokens,
    row_error,
)

_MODEL = ("comfy.ldm.qwen_image.model", "QwenImageTransformer2DModel")
HELP = "comma-separated: 'double' (every transformer block), a block such as 'double.3'"


class QwenImageRows:
    """token_rows rule of LinearInputEdit for to_q/to_k/to_v: the first N rows of [image, reference]."""

    def __init__(self, patch_size: int):
        self.patch_size = int(patch_size)

    def layout(self, call) -> TokenLayout:
        return TokenLayout(image=patch_tokens(call.latent_shape, self.patch_size),
                           reference=sum(patch_tokens(s, self.patch_size) for s in call.reference_shapes if len(s) >= 4))

    def __call__(self, call, length: int) -> slice:
        layout = self.layout(call)
        if length != layout.image + layout.reference:
            raise row_error("Qwen-Image", length, f"the {layout.image} image and {layout.reference} reference tokens "
                                                  "this latent makes")
        return slice(0, layout.image)


class QwenImageAdapter(JointBlocksAdapter):
    name = "qwen_image"
    display = "Qwen-Image"
    help_text = HELP
    capabilities = ("directions", "apply", "swap", "inversion")
    min_comfyui = {"swap": (0, 33, 0), "inversion": (0, 33, 0)}  # attn1_patch in the blocks: 0.33

    @classmethod
    def matches(cls, diffusion_model) -> bool:
        return (type(diffusion_model).__module__, type(diffusion_model).__name__) == _MODEL and bool(
            len(getattr(diffusion_model, "transformer_blocks", ())))

    def layers(self):
        from ...sae_math.layers import LayerInfo

        return [LayerInfo(f"double.{i}", f"transformer_blocks.{i}", int(b.attn.to_q.in_features), 0)
                for i, b in enumerate(self._dm.transformer_blocks)]

    def _paths(self, layer):
        return [f"{layer.module_path}.attn.{name}" for name in ("to_q", "to_k", "to_v")]

    def qkv_source(self, layer):
        return QKVSource(keys=tuple(f"{PREFIX}{p}.weight" for p in self._paths(layer)))

    def attention_inputs(self, key):
        rows = QwenImageRows(self._dm.patch_size)
        layer = self.layer(key)
        return [(p, (0, int(self._dm.get_submodule(p).out_features)), rows) for p in self._paths(layer)]

    def text_width(self):
        return linear_in_features(getattr(self._dm, "txt_in", None))

    # -- for the swap ---------------------------------------------------------------------------------

    def attention_hook(self):
        return "attn1_patch"

    def image_token_slice(self, extra_options, sequence_length):
        """img_slice = [T, T + N + R] of the joint q/k/v (0.33), less the trailing reference tokens."""
        start, stop = extra_options.get("img_slice", (0, sequence_length))
        reference = sum(extra_options.get("reference_image_num_tokens", None) or ())
        return slice(int(start), int(stop) - int(reference))

    def install_attention_patch(self, model, patch):
        model.set_model_attn1_patch(patch)
