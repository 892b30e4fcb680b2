"""SD1.x / SD2.x / SDXL UNets: self-attention is attn1 of every BasicTransformerBlock (ComfyUI's
openaimodel.UNetModel), reached by attn1_patch / attn1 replace with keys (block, block_id, depth)."""

from __future__ import annotations

from ...sae_math.layers import (
    CUSTOM_LIST_HELP,
    LayerInfo,
    fpe_layers,
    layer_key_from_path,
    select_layers,
    sort_key,
)
from .base import FamilyAdapter, QKVSource

PREFIX = "diffusion_model."


def attn1_replaces(model) -> dict:
    return model.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn1", {})


def swap_keys(model, available, chosen) -> list[tuple]:
    """The attn1 replace keys to register. A block whose every depth is chosen gets the block-wide key
    (block, id): a node that temporarily replaces a whole block for an extra pass (core PAG puts an
    identity attention on ("middle", 0)) then overrides the swap for that pass only, as it intends;
    an exact key would silently win over it. Exact keys are kept where a depth is chosen alone or where
    another node already holds that exact key (ComfyUI looks up the exact key first, so only an exact
    key can call through it)."""
    replaces = attn1_replaces(model)
    depths: dict[tuple, set] = {}
    for layer in available:
        depths.setdefault(layer.block, set()).add(layer.depth)
    keys = []
    for block in dict.fromkeys(x.block for x in chosen):
        mine = [x for x in chosen if x.block == block]
        whole = {x.depth for x in mine} == depths[block]
        exact = [x.patch_key for x in mine if not whole or x.patch_key in replaces]
        keys += exact
        if whole and len(exact) < len(mine):
            keys.append(block)
    return keys


def _resolution_levels(unet) -> dict[tuple[str, int], int]:
    """(block name, block id) -> level, from where the UNet down- and upsamples."""
    def has(module, cls_name):
        return any(type(m).__name__ == cls_name for m in module.modules())

    levels: dict[tuple[str, int], int] = {}
    level = 0
    for i, block in enumerate(getattr(unet, "input_blocks", [])):
        if has(block, "Downsample"):
            level += 1
        levels[("input", i)] = level
    levels[("middle", 0)] = level
    for i, block in enumerate(getattr(unet, "output_blocks", [])):
        levels[("output", i)] = level
        if has(block, "Upsample"):
            level -= 1
    return levels


def discover_layers(unet) -> list[LayerInfo]:
    """Every self-attention layer of an SD-family UNet, in execution order. Empty for other models
    (duck-typed: works on the module tree, no ComfyUI import)."""
    levels = _resolution_levels(unet)
    found = []
    for path, module in unet.named_modules():
        key = layer_key_from_path(path)
        if key is None or not hasattr(module, "attn1"):
            continue
        width = module.attn1.to_q.weight.shape[1]
        name, block_id, _ = key.split(".")
        found.append(LayerInfo(key=key, module_path=path, width=int(width), level=levels[(name, int(block_id))]))
    return sorted(found, key=lambda x: sort_key(x.key))


class UNetAdapter(FamilyAdapter):
    name = "unet"
    display = "SD1.x/SD2.x/SDXL UNet"
    capabilities = ("directions", "apply", "swap", "inversion")

    def __init__(self, model, layers: list[LayerInfo] | None = None):
        super().__init__(model)
        self._layers = layers

    @classmethod
    def matches(cls, diffusion_model) -> bool:
        return bool(discover_layers(diffusion_model))

    def layers(self) -> list[LayerInfo]:
        if self._layers is None:
            self._layers = discover_layers(self.model.get_model_object("diffusion_model"))
        return list(self._layers)

    def select(self, layers, preset, custom=""):
        return select_layers(layers, preset, custom)

    def default_layers(self, method):
        if method == "swap":
            return fpe_layers(self.layers())
        return select_layers(self.layers(), "middle block")

    def custom_list_help(self):
        return CUSTOM_LIST_HELP

    def qkv_source(self, layer):
        base = f"{PREFIX}{layer.module_path}.attn1"
        return QKVSource(keys=tuple(f"{base}.{proj}.weight" for proj in ("to_q", "to_k", "to_v")))

    def install_direction(self, model, patch):
        from ..direction_patch import install_window_wrappers

        install_window_wrappers(model)
        model.set_model_attn1_patch(patch)

    def install_input_probe(self, model, observer, keys):
        from ..input_probe import Attn1InputProbe

        model.set_model_attn1_patch(Attn1InputProbe(observer, model.get_model_object("model_sampling"), keys))

    def text_width(self):
        from ..swap_patch import expected_widths

        return expected_widths(self.model.get_model_object("diffusion_model"))[0]

    def attention_hook(self):
        return "attn1_replace"

    def layer_for_call(self, extra_options):
        block = extra_options.get("block")
        if block is None:
            return None
        return f"{block[0]}.{block[1]}.{extra_options.get('block_index', 0)}"

    def image_token_slice(self, extra_options, sequence_length):
        return slice(0, sequence_length)  # attn1 of a UNet sees image tokens only

    def install_swap(self, model, layers, window):
        """FPE's swap as attn1 replaces (keys from swap_keys, calling through the replace another node put
        on that layer: exact key first, then the block-wide 2-tuple key, ComfyUI's lookup order), and SwapInputCheck: pairs batch and text widths checked before the UNet runs. `model` is
        the clone; the replaces already there are read from it (a clone shares them with its input)."""
        import comfy.patcher_extension as pe

        from ..swap_patch import CHECK_WRAPPER_KEY, SelfAttentionSwapPatch, SwapInputCheck, expected_widths

        edit_chunks = frozenset({0, 1}) if window.all_chunks else frozenset({0})
        available = self.layers()
        replaces = dict(attn1_replaces(model))
        for key in swap_keys(model, available, layers):
            inner = (replaces.get(key) or replaces.get(key[:2])) if len(key) == 3 else replaces.get(key)
            model.set_model_attn1_replace(SelfAttentionSwapPatch(window.start, window.end, edit_chunks, inner, window),
                                          *key)
        model.remove_wrappers_with_key(pe.WrappersMP.DIFFUSION_MODEL, CHECK_WRAPPER_KEY)
        model.add_wrapper_with_key(pe.WrappersMP.DIFFUSION_MODEL, CHECK_WRAPPER_KEY,
                                   SwapInputCheck(*expected_widths(model.get_model_object("diffusion_model"))))
