"""The model-family adapter: what the nodes ask of a model, answered once per family.

A node never looks inside a diffusion model itself. It asks `adapter_for(model, node)` (families/__init__.py)
for the adapter of the MODEL's family and speaks to that:

    adapter = adapter_for(model, NODE)            # NodeInputError naming node and model class if unsupported
    adapter.check_supported(NODE, "apply")        # NodeInputError if this ComfyUI lacks the family's hooks
    layers = adapter.layers()                     # [LayerInfo], execution order
    chosen = adapter.select(layers, preset, custom)   # ValueError with the reason (the node wraps it)
    source = adapter.qkv_source(layer)            # where q/k/v weights are (weights.layer_weights reads them)
    adapter.install_direction(clone, patch)       # Apply Latent Direction's edit on the clone

An adapter is built per node call around the MODEL it was given and is never stored in a patch: patches keep
only what they need (layer keys, vectors, row rules), so they do not hold a ModelPatcher.

Capabilities (check_supported): "directions" (Compute Attention Eigendirections), "apply" (Apply Latent
Direction), "swap" (Self-Attention Swap), "inversion" (Invert Latent).

For the swap on DiTs (the joint-attention swap builds on these; see FluxAdapter for Flux):
  - attention_hook() says which public hook reaches the image tokens' q/k: "attn1_replace" (UNet: an attn1
    replace per layer key, q/k/v of the image tokens only), "attn1_patch" (Flux double/single blocks and
    Qwen-Image on ComfyUI 0.33: a transformer_options["patches"]["attn1_patch"] callable gets the JOINT
    q, k, v (B, H, L, Dh) after QK-norm, before RoPE, and extra_options with img_slice, block_type,
    block_index), or "attention_override" (families whose blocks call optimized_attention with
    transformer_options but have no attn1_patch: SD3.5, Lumina2/Z-Image).
  - layer_for_call(extra_options) -> layer key of the attention call a hook sees ("double.3"), or None.
  - image_token_slice(extra_options, sequence_length) -> slice of the image tokens inside the joint
    sequence a hook sees (text tokens and reference-image tokens excluded).
  - install_attention_patch(clone, patch) registers a hook callable of the attention_hook() kind on the
    clone through the patcher (UNet: not used; the UNet swap installs its attn1 replaces itself).
"""

from __future__ import annotations

from dataclasses import dataclass

from ...sae_math.errors import NodeInputError
from ...sae_math.layers import LayerInfo

CAPABILITIES = ("directions", "apply", "swap", "inversion")


@dataclass(frozen=True)
class QKVSource:
    """Where one layer's q, k and v projection weights are.

    keys: state-dict keys of the ModelPatcher ("diffusion_model.<path>.weight"): three (q, k, v separate,
    each (inner, d)) or one (fused: rows of one (out, d) weight). rows: for a fused weight, the row ranges
    (start, stop) of q, k and v inside it (Flux double blocks: img_attn.qkv (3D, D): (0, D), (D, 2D),
    (2D, 3D); Flux single blocks: linear1 (3D + mlp, D): the same first 3D rows, the rest feeds the MLP);
    None for separate weights. C = sum over the three of W^T W, (d, d)."""

    keys: tuple[str, ...]
    rows: tuple[tuple[int, int], tuple[int, int], tuple[int, int]] | None = None


@dataclass(frozen=True)
class TokenLayout:
    """The token rows of one model call's sequences, counted as the family's forward builds them.

    image: tokens of the latent being denoised; reference: reference-image tokens appended after them
    (Kontext, Flux.2 edit; left alone by every edit); text: text tokens, None where the call does not tell
    (the single-stream rows are then located from the end of the sequence)."""

    image: int
    reference: int = 0
    text: int | None = None


def comfyui_version() -> tuple[int, ...] | None:
    """The running ComfyUI's version as a tuple of ints, None when it cannot be read."""
    try:
        import comfyui_version
    except ImportError:
        return None
    try:
        return tuple(int(p) for p in str(comfyui_version.__version__).split(".")[:3])
    except (AttributeError, ValueError):
        return None


def version_text(version: tuple[int, ...] | None) -> str:
    return ".".join(str(p) for p in version) if version else "unknown"


class FamilyAdapter:
    """One model family. Subclasses answer every method; the defaults refuse with clear messages."""

    #: short id ("unet", "flux"), recorded nowhere (directions record the model config class, model_family)
    name = "base"
    #: what users call the family, for messages
    display = "model"
    #: capability -> oldest ComfyUI version (tuple) whose public hooks it needs; missing: any version
    min_comfyui: dict[str, tuple[int, ...]] = {}
    #: capabilities this pack implements for the family
    capabilities: tuple[str, ...] = ()

    def __init__(self, model):
        self.model = model

    # -- identification -------------------------------------------------------------------------------

    @classmethod
    def matches(cls, diffusion_model) -> bool:
        """Whether a diffusion model module (ModelPatcher.get_model_object("diffusion_model")) is this family's."""
        raise NotImplementedError

    def check_supported(self, node: str, capability: str) -> None:
        """NodeInputError naming the node, the model class and what to do when this pack cannot do
        `capability` on this family, or when the running ComfyUI lacks the hooks it needs."""
        from ...sae_math.errors import model_name

        if capability not in self.capabilities:
            raise NodeInputError(node, "model", model_name(self.model),
                                 f"{node} is not available yet for {self.display} models (this pack does "
                                 f"{', '.join(self.capabilities) or 'nothing'} on them)")
        need = self.min_comfyui.get(capability)
        have = comfyui_version()
        if need is not None and (have is None or have < need):
            raise NodeInputError(node, "model", model_name(self.model),
                                 f"{node} on {self.display} models needs ComfyUI {version_text(need)} or newer "
                                 f"(the hooks it uses are not in ComfyUI {version_text(have)}); update ComfyUI")

    # -- layers ---------------------------------------------------------------------------------------

    def layers(self) -> list[LayerInfo]:
        """Every self-attention layer of the image tokens, in execution order."""
        raise NotImplementedError

    def select(self, layers: list[LayerInfo], preset: str, custom: str = "") -> list[LayerInfo]:
        """The layers a preset of sae_math.layers.LAYER_PRESETS names on this family (ValueError with the
        reason when the preset means nothing here or selects nothing)."""
        raise NotImplementedError

    def default_layers(self, method: str) -> list[LayerInfo]:
        """The family's default layer set for a method: "swap" (the FPE-equivalent default: what
        FPE_PRESET selects), "directions"."""
        raise NotImplementedError

    def custom_list_help(self) -> str:
        """How to write a custom layer list on this family (for tooltips and errors)."""
        raise NotImplementedError

    # -- weights --------------------------------------------------------------------------------------

    def qkv_source(self, layer: LayerInfo) -> QKVSource:
        raise NotImplementedError

    # -- Apply Latent Direction -----------------------------------------------------------------------

    def install_direction(self, model, patch) -> None:
        """Install a direction_patch.LatentDirectionPatch on a clone (model), through the patcher only.
        The window wrappers (direction_patch.install_window_wrappers) are installed here too."""
        raise NotImplementedError

    # -- for the swap (see the module docstring) ------------------------------------------------------

    def attention_hook(self) -> str:
        raise NotImplementedError

    def layer_for_call(self, extra_options) -> str | None:
        raise NotImplementedError

    def image_token_slice(self, extra_options, sequence_length: int) -> slice:
        raise NotImplementedError

    def install_attention_patch(self, model, patch) -> None:
        raise NotImplementedError
