"""The Flux family: Flux.1 (dev, schnell, Kontext, Fill), Flux.2 and Chroma, which all run ComfyUI's
comfy.ldm.flux.layers DoubleStreamBlock / SingleStreamBlock (comfy.ldm.flux.model.Flux for Flux.1 and
Flux.2, comfy.ldm.chroma.model.Chroma for Chroma; the same block code on ComfyUI 0.3.75 and 0.33).

Layers: "double.<i>" (double_blocks.<i>: the image stream's own attention input and q/k/v, img_attn.qkv,
fused (3D, D), rows [0, D) q, [D, 2D) k, [2D, 3D) v; the text stream has its own txt_attn.qkv, left alone)
then "single.<i>" (single_blocks.<i>: text and image tokens through one linear1 of (3D + mlp, D), whose
first 3D rows are q, k, v and the rest the MLP input). Width D = hidden_size (Flux.1 3072), level 0.

Token rows: the double blocks' image stream holds [image (N), reference images (R)], the single blocks'
joint sequence [text (T), image (N), reference (R)]; N = ceil(H / p) * ceil(W / p) of the latent
(p = patch_size), R the same count summed over the call's ref_latents (Kontext, Flux.2 edit). The image
rows are the N rows before the trailing R in both, which needs no text length.

Apply Latent Direction: Z' = Z + alpha * s * n on the image rows of the q/k/v Linear's input (the
modulated, normed image tokens, before QK-norm and RoPE), through an object patch on that Linear's forward
(linear_edit.LinearInputEdit). "Relative to token norm": s = mean over the image tokens of ||z||, z the
Linear's input rows of those tokens (per row of the batch), as on UNets with the attn1 input. Needs only
add_object_patch and the APPLY_MODEL wrapper: ComfyUI 0.3.75 and 0.33 alike.

Layer presets: "all" and "custom list" ("double", "single", "double.3", "single.0", several separated by
commas); the FPE preset (its saved name kept) selects the family's literature default, default_layers
("swap"): a DiT attends over one token grid at every depth, so FPE's rule "levels below the
highest-resolution one" has no counterpart. "middle block", "input blocks", "output blocks", "latent
resolution" and "lowest resolution" name UNet parts and are refused with the reason.

Swap default (docs/dit.md): on the Flux.1 layout (19 double + 38 single blocks: Flux.1 dev/schnell/
Kontext/Fill, Chroma) Stable Flow's vital layers of FLUX.1-dev (Avrahami et al., CVPR 2025; their code:
double blocks 0, 1, 17, 18 and single blocks 25, 28, 53, 54, 56 counted over all 57, i.e. single 6, 9,
34, 35, 37); on any other layout (Flux.2, tiny test models) no published set exists and every block is
swapped. Window: FPE's 0 to 0.8 (base.default_swap_window).

Swap hook: attn1_patch (ComfyUI 0.33: the double and single blocks pass the joint q/k/v with img_slice,
block_type, block_index); layers as ("double", i) / ("single", i).
"""

from __future__ import annotations

from ...sae_math.layers import FPE_PRESET, LayerInfo, select_layers
from .base import FamilyAdapter, QKVSource, TokenLayout, linear_in_features

PREFIX = "diffusion_model."
_MODEL_MODULES = ("comfy.ldm.flux.model", "comfy.ldm.chroma.model")
_BLOCK_MODULE = "comfy.ldm.flux.layers"

CUSTOM_LIST_HELP_DIT = ("comma-separated: 'double' (every double-stream block), 'single' (every single-stream "
                        "block), a block such as 'double.3' or 'single.0'")
# Stable Flow's vital layers of FLUX.1-dev (19 double + 38 single blocks), as (block type, index).
FLUX1_LAYOUT = (19, 38)
STABLE_FLOW_VITAL = (("double", 0), ("double", 1), ("double", 17), ("double", 18),
                     ("single", 6), ("single", 9), ("single", 34), ("single", 35), ("single", 37))
UNET_ONLY_PRESETS = ("middle block", "latent resolution", "lowest resolution", "input blocks", "output blocks")


def _tokens(shape, patch: int) -> int:
    """Image tokens of a latent of shape [..., H, W] (ComfyUI pads to the patch size: ceil)."""
    h, w = int(shape[-2]), int(shape[-1])
    return ((h + patch // 2) // patch) * ((w + patch // 2) // patch)


class FluxImageRows:
    """token_rows rule of linear_edit.LinearInputEdit on a Flux-family model: the image rows of a q/k/v
    Linear's input sequence of length L are the N rows before the trailing R reference rows. image_stream:
    the double blocks' img_attn.qkv (L must be N + R) or the single blocks' linear1 (L = T + N + R)."""

    def __init__(self, patch_size: int, image_stream: bool):
        self.patch_size = int(patch_size)
        self.image_stream = bool(image_stream)

    def layout(self, call) -> TokenLayout:
        image = _tokens(call.latent_shape, self.patch_size)
        reference = sum(_tokens(s, self.patch_size) for s in call.reference_shapes if len(s) >= 3)
        return TokenLayout(image=image, reference=reference)

    def __call__(self, call, length: int) -> slice:
        layout = self.layout(call)
        start = length - layout.reference - layout.image
        if start < 0 or (self.image_stream and start != 0):
            raise RuntimeError(
                f"Apply Latent Direction: a Flux {'double' if self.image_stream else 'single'}-block sequence of "
                f"{length} tokens does not hold the {layout.image} image tokens and {layout.reference} reference "
                "tokens this latent makes; this model lays its tokens out differently from Flux (please report "
                "it, with the model)")
        return slice(start, length - layout.reference)


class FluxAdapter(FamilyAdapter):
    name = "flux"
    display = "Flux-family (Flux.1, Flux.2, Chroma)"
    capabilities = ("directions", "apply", "swap", "inversion")
    # The joint-attention swap needs attn1_patch with img_slice in the Flux blocks (not in 0.3.75); the
    # flow inversion is gated with it (the swap is what uses it; DiT support starts at 0.33).
    min_comfyui = {"swap": (0, 33, 0), "inversion": (0, 33, 0)}

    def __init__(self, model):
        super().__init__(model)
        self._dm = model.get_model_object("diffusion_model")

    @classmethod
    def matches(cls, diffusion_model) -> bool:
        if type(diffusion_model).__module__ not in _MODEL_MODULES:
            return False
        blocks = list(getattr(diffusion_model, "double_blocks", [])) + list(getattr(diffusion_model, "single_blocks", []))
        return bool(blocks) and all(type(b).__module__ == _BLOCK_MODULE for b in blocks)

    @property
    def width(self) -> int:
        return int(self._dm.hidden_size)

    def layers(self) -> list[LayerInfo]:
        d = self.width
        return ([LayerInfo(f"double.{i}", f"double_blocks.{i}", d, 0) for i in range(len(self._dm.double_blocks))]
                + [LayerInfo(f"single.{i}", f"single_blocks.{i}", d, 0) for i in range(len(self._dm.single_blocks))])

    def select(self, layers, preset, custom=""):
        if preset == "all":
            return list(layers)
        if preset == FPE_PRESET:
            return self.default_layers("swap")
        if preset == "custom list":
            if not custom.strip():
                raise ValueError(f"'custom list' needs a layer list: {CUSTOM_LIST_HELP_DIT}")
            return select_layers(layers, "custom list", custom)
        if preset in UNET_ONLY_PRESETS:
            raise ValueError(
                f"{preset!r} names a part of a UNet; a Flux-family transformer has double-stream and single-stream "
                "blocks that all attend over the same token grid: choose 'all' or 'custom list' "
                f"({CUSTOM_LIST_HELP_DIT})")
        raise ValueError(f"unknown layer preset {preset!r}; on Flux-family models choose 'all', "
                         f"'{FPE_PRESET}' or 'custom list'")

    def layout(self) -> tuple[int, int]:
        """(double blocks, single blocks)."""
        return len(self._dm.double_blocks), len(self._dm.single_blocks)

    def default_layers(self, method):
        layers = self.layers()
        if method == "swap" and self.layout() == FLUX1_LAYOUT:
            vital = {f"{kind}.{i}" for kind, i in STABLE_FLOW_VITAL}
            return [x for x in layers if x.key in vital]
        return layers

    def custom_list_help(self):
        return CUSTOM_LIST_HELP_DIT

    def _linear_path(self, layer: LayerInfo) -> str:
        return f"{layer.module_path}.img_attn.qkv" if layer.block[0] == "double" else f"{layer.module_path}.linear1"

    def qkv_source(self, layer):
        d = layer.width
        return QKVSource(keys=(f"{PREFIX}{self._linear_path(layer)}.weight",), rows=((0, d), (d, 2 * d), (2 * d, 3 * d)))

    def attention_inputs(self, key):
        layer = self.layer(key)
        rows = FluxImageRows(int(self._dm.patch_size), layer.block[0] == "double")
        return [(self._linear_path(layer), (0, 3 * layer.width), rows)]

    def text_width(self):
        return linear_in_features(getattr(self._dm, "txt_in", None))

    # -- for the swap ---------------------------------------------------------------------------------

    def attention_hook(self):
        return "attn1_patch"

    def layer_for_call(self, extra_options):
        kind, index = extra_options.get("block_type"), extra_options.get("block_index")
        if kind not in ("double", "single") or index is None:
            return None
        return f"{kind}.{int(index)}"

    def image_token_slice(self, extra_options, sequence_length):
        """The image tokens of the joint q/k/v an attn1_patch sees (0.33): img_slice = [T, T + N + R] holds
        the reference tokens at its end (transformer_options["reference_image_num_tokens"])."""
        start, stop = extra_options.get("img_slice", (0, sequence_length))
        reference = sum(extra_options.get("reference_image_num_tokens", None) or ())
        return slice(int(start), int(stop) - int(reference))

    def swap_hook(self):
        return "attn1_patch"

    def install_attention_patch(self, model, patch):
        model.set_model_attn1_patch(patch)  # Flux blocks read transformer_options["patches"]["attn1_patch"]
