"""The model-family adapter: what the nodes ask of a model, answered once per family.

A node never looks inside a diffusion model itself. It asks `adapter_for(model, node)` (families/__init__.py)
for the adapter of the MODEL's family and speaks to that:

    adapter = adapter_for(model, NODE)            # NodeInputError naming node and model class if unsupported
    adapter.check_supported(NODE, "apply")        # NodeInputError if this ComfyUI lacks the family's hooks
    layers = adapter.layers()                     # [LayerInfo], execution order
    chosen = adapter.select(layers, preset, custom)   # ValueError with the reason (the node wraps it)
    source = adapter.qkv_source(layer)            # where q/k/v weights are (weights.layer_weights reads them)
    adapter.install_direction(clone, patch)       # Apply Latent Direction's edit on the clone
    adapter.install_input_probe(clone, obs, keys) # the spread probe (sae_patches/input_probe.py)
    adapter.text_width()                          # width of the text embeddings the model takes

DiT adapters answer attention_inputs(key) (the q/k/v Linears of a layer, their q/k/v output columns, the
image-row rule): install_direction and install_input_probe are built on it by default; the UNet adapter
uses attn1 patches instead.

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

Self-Attention Swap through the adapter (nodes/node_swap.py calls only select() and install_swap()):

    chosen = adapter.select(adapter.layers(), preset, custom)   # FPE_PRESET: default_layers("swap")
    window = swap_patch.SwapWindow(start, end, all_chunks, fallback_sampling=model_sampling)
    m = model.clone()
    adapter.install_self_attention_swap(m, chosen, window, inversion, pin_source)

install_self_attention_swap (here, shared by every family) calls install_swap(m, chosen, window), the
family's part, then installs what every family needs: swap_patch's GuiderCondsWrapper / ChunkRolesWrapper (which
chunk is the positive one), with an inversion PinSourceToTrajectory (pin_source) and, on a
rectified-flow model_sampling, inversion.FlowStartFromLatent (the sampler starts at the inverted
latent, not at zeros). The default install_swap is the joint-attention swap of DiTs
(sae_patches/dit_swap.install_joint_swap), driven by two answers an adapter gives:
  - swap_hook() -> one of dit_swap.HOOKS: "attn1_patch" (core passes the joint q/k/v to
    transformer_options["patches"]["attn1_patch"]: Flux.1/Flux.2/Chroma, Qwen-Image; ComfyUI 0.33),
    "mmdit" (SD3/3.5: block marker in patches_replace["dit"] + optimized_attention_override) or
    "lumina" (Lumina2/Z-Image: optimized_attention_override reading block_type/block_index). Default:
    attention_hook() when that is one of these names.
  - swap_layers(layers) -> the (block_type, block_index) pairs the hook sees for the chosen LayerInfos,
    each block once. Default: from keys "<block_type>.<index>[.<n>]" ("double.3", "double.3.1" ->
    ("double", 3)).
A DiT adapter therefore needs, for the swap: capabilities containing "swap" (and min_comfyui["swap"]
where its hook needs a newer ComfyUI), layers(), select() (mapping FPE_PRESET to default_layers("swap"),
the family's literature default, documented in docs/dit.md) and swap_hook() (or an attention_hook() that
returns a dit_swap.HOOKS name); swap_layers() only when its keys are not "<type>.<index>[.<n>]". The
UNet adapter overrides install_swap (attn1 replaces per layer key and the text-width check).
default_swap_window() -> (start, end): the family's recommended window (the node's widgets default to
FPE's 0 to 0.8; docs/dit.md gives each family's).

Invert Latent: check_supported(node, "inversion") only; inversion.invert picks DDIM inversion or the
reversed flow ODE from the model_sampling itself.
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


def linear_in_features(module) -> int | None:
    """in_features of a Linear-like module (ComfyUI's ops subclass nn.Linear; other layers: the weight's
    columns), None for anything else."""
    width = getattr(module, "in_features", None)
    if width is None:
        weight = getattr(module, "weight", None)
        width = weight.shape[-1] if getattr(weight, "ndim", 0) == 2 else None
    return None if width is None else int(width)


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

    def layer(self, key: str) -> LayerInfo:
        """The layer of layers() with this key (KeyError if none). The index is built once per adapter:
        attention_inputs asks for every layer of a model in turn (Apply, the spread probe)."""
        index = self.__dict__.get("_layer_index")
        if index is None:
            index = self._layer_index = {x.key: x for x in self.layers()}
        return index[key]

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

    def attention_inputs(self, key: str) -> list:
        """DiTs: [(path of a q/k/v Linear in the diffusion model, (start, stop) of its q/k/v output columns,
        token_rows rule (call, sequence length) -> slice of the image rows)] of layer `key`: where the image
        tokens' self-attention input enters (Apply's edit, the spread probe)."""
        raise NotImplementedError

    def install_direction(self, model, patch) -> None:
        """Install a direction_patch.LatentDirectionPatch on a clone (model), through the patcher only.
        The window wrappers (direction_patch.install_window_wrappers) are installed here too. Default (DiTs):
        object patches on the Linears of attention_inputs (linear_edit.LinearInputEdit)."""
        from ..linear_edit import install_linear_edits

        install_linear_edits(model, patch, self.attention_inputs)

    def install_input_probe(self, model, observer, keys) -> None:
        """Show the image tokens' self-attention input z (rows, tokens, d) of the layers `keys` to
        observer(layer key, z, sigma, t) on every model call of the clone `model` (sigma, t: the call's
        highest noise level and the timestep the model is fed there), leaving the output as it is (the
        spread measurement, sae_patches/input_probe.py). Default
        (DiTs): linear_edit.LinearInputProbe on the first Linear of attention_inputs."""
        from ..linear_edit import install_linear_probes

        install_linear_probes(model, observer, keys, self.attention_inputs)

    def text_width(self) -> int | None:
        """Width of the text embeddings the model takes (its text input Linear's in_features), None when it
        cannot be read (the swap checks the sampler's conditioning against it)."""
        return None

    # -- for the swap (see the module docstring) ------------------------------------------------------

    def attention_hook(self) -> str:
        raise NotImplementedError

    def layer_for_call(self, extra_options) -> str | None:
        raise NotImplementedError

    def image_token_slice(self, extra_options, sequence_length: int) -> slice:
        raise NotImplementedError

    def install_attention_patch(self, model, patch) -> None:
        raise NotImplementedError

    # -- Self-Attention Swap (see the module docstring) -----------------------------------------------

    def swap_hook(self) -> str:
        """The dit_swap hook of this family's joint-attention swap (dit_swap.HOOKS)."""
        from ..dit_swap import HOOKS

        hook = self.attention_hook()
        if hook not in HOOKS:
            raise NotImplementedError(f"{type(self).__name__} must define swap_hook() (one of {HOOKS}); "
                                      f"attention_hook() is {hook!r}")
        return hook

    def swap_layers(self, layers: list[LayerInfo]) -> list[tuple[str, int]]:
        """(block_type, block_index) pairs the swap hook sees for the chosen layers, in order, each once.
        Default: LayerInfo.block of keys "<block_type>.<index>[.<n>]" (dit_common's rule; a second
        self-attention "double.3.1" is the same block as "double.3")."""
        out: list[tuple[str, int]] = []
        for layer in layers:
            kind, index = layer.key.split(".")[:2]
            pair = (kind, int(index))
            if pair not in out:
                out.append(pair)
        return out

    def default_swap_window(self) -> tuple[float, float]:
        """(start, end) fractions of the denoising recommended for the swap on this family."""
        return 0.0, 0.8  # FPE (Liu et al. 2024): self-attention swapped over the first 80% of the steps

    def install_swap(self, model, layers: list[LayerInfo], window) -> None:
        """The family's part: register the swap of the chosen layers on the clone `model` (DiTs: the
        joint-attention swap through swap_hook() and swap_layers())."""
        from ..dit_swap import install_joint_swap

        install_joint_swap(model, self.swap_hook(), self.swap_layers(layers), window,
                           model.get_model_object("diffusion_model"), self.text_width(), self.display)

    def install_self_attention_swap(self, model, chosen: list[LayerInfo], window, inversion=None,
                                    pin_source: bool = True) -> None:
        """Self-Attention Swap on the clone `model` (the caller cloned it; the input MODEL is never touched):
        the family's hooks for the chosen layers with the node's SwapWindow, then the wrappers every family
        shares (one of each per model, however many swap nodes are chained)."""
        import comfy.patcher_extension as pe

        from ..inversion import install_flow_start
        from ..swap_patch import (
            PIN_WRAPPER_KEY,
            ROLES_WRAPPER_KEY,
            ChunkRolesWrapper,
            GuiderCondsWrapper,
            PinSourceToTrajectory,
        )

        self.install_swap(model, chosen, window)
        # Which chunk is the positive one, read from the guider (DualCFGGuider and SAG's extra pass do
        # not put it at cond_or_uncond 0), and the model_sampling in force for the window.
        model.remove_wrappers_with_key(pe.WrappersMP.PREDICT_NOISE, ROLES_WRAPPER_KEY)
        model.add_wrapper_with_key(pe.WrappersMP.PREDICT_NOISE, ROLES_WRAPPER_KEY, GuiderCondsWrapper())
        model.remove_wrappers_with_key(pe.WrappersMP.CALC_COND_BATCH, ROLES_WRAPPER_KEY)
        model.add_wrapper_with_key(pe.WrappersMP.CALC_COND_BATCH, ROLES_WRAPPER_KEY, ChunkRolesWrapper())
        if inversion is not None and pin_source:
            model.remove_wrappers_with_key(pe.WrappersMP.APPLY_MODEL, PIN_WRAPPER_KEY)
            model.add_wrapper_with_key(pe.WrappersMP.APPLY_MODEL, PIN_WRAPPER_KEY,
                                       PinSourceToTrajectory(inversion.sigmas, inversion.latents,
                                                             inversion.check_schedule))
        if inversion is not None:
            install_flow_start(model)  # no-op unless the model_sampling is rectified flow
