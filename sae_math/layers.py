"""Self-attention layers: naming, resolution level, and the user-facing selection (UNet presets, custom lists).

Pure Python, no ComfyUI import. Which layers a model has is the family adapter's question
(sae_patches/families); this module names and selects them.

UNet layers are named like ComfyUI's attention patch keys: "<block>.<block_id>.<depth>", e.g. "input.4.0",
"middle.0.3", "output.11.0", where <depth> is the position inside the block's transformer_blocks
(ComfyUI's extra_options["block_index"]). DiT layers are "<block_type>.<index>", e.g. "double.3",
"single.0" (Flux: double_blocks.3, single_blocks.0), with level 0 (a DiT attends over one token grid).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_PATH = re.compile(r"^(input_blocks|middle_block|output_blocks)\.(\d+)\.(?:(\d+)\.)?transformer_blocks\.(\d+)$")
_BLOCK = {"input_blocks": "input", "middle_block": "middle", "output_blocks": "output"}


@dataclass(frozen=True)
class LayerInfo:
    """One self-attention layer.

    key: "input.4.0" (UNet) or "double.3" (DiT); module_path: path inside the diffusion model of its
    BasicTransformerBlock (UNet) or its block (DiT: "double_blocks.3"); width: d, the width of the attention
    input (the q/k/v Linear's in_features); level: number of 2x downsamplings between the latent and this
    layer (0 = highest resolution, tokens = (latent_h * latent_w) / 4**level; 0 for every DiT layer).
    block: ("input", 4) / ("double", 3); depth: position inside the block (UNet), the block's index (DiT).
    """

    key: str
    module_path: str
    width: int
    level: int

    @property
    def block(self) -> tuple[str, int]:
        name, block_id = self.key.split(".")[:2]
        return name, int(block_id)

    @property
    def depth(self) -> int:
        parts = self.key.split(".")
        return int(parts[2] if len(parts) > 2 else parts[1])

    @property
    def patch_key(self) -> tuple[str, int, int]:
        """The key ComfyUI's attn1 replace patches use: (block_name, block_id, block_index)."""
        name, block_id = self.block
        return name, block_id, self.depth


def layer_key_from_path(module_path: str) -> str | None:
    """'input_blocks.4.1.transformer_blocks.0' -> 'input.4.0'; 'middle_block.1.transformer_blocks.2' ->
    'middle.0.2'; anything else -> None."""
    m = _PATH.match(module_path)
    if m is None:
        return None
    block, block_id, _, depth = m.groups()
    if block == "middle_block":
        block_id = "0"
    return f"{_BLOCK[block]}.{int(block_id)}.{int(depth)}"


# Execution order of block kinds: a UNet's input blocks, middle, output blocks; a DiT's double-stream
# (joint) blocks, then its single-stream blocks.
_BLOCK_ORDER = {"input": 0, "middle": 1, "output": 2, "double": 3, "single": 4}


def sort_key(layer_key: str):
    """Execution order: UNet input blocks, middle, output blocks; DiT double blocks, then single blocks."""
    name, block_id, *depth = layer_key.split(".")
    return (_BLOCK_ORDER.get(name, len(_BLOCK_ORDER)), name, int(block_id), int(depth[0]) if depth else 0)


# ---------------------------------------------------------------------------------------------------
# Selection

FPE_PRESET = "below latent resolution (FPE default)"  # the saved name (kept for workflows); the rule is fpe_layers()

LAYER_PRESETS = (
    "middle block",
    "all",
    FPE_PRESET,
    "latent resolution",
    "lowest resolution",
    "input blocks",
    "output blocks",
    "custom list",
)

CUSTOM_LIST_HELP = (
    "comma-separated: 'middle', 'input', 'output', a block such as 'input.7' or 'output.3' "
    "(every depth in it), or one layer 'input.7.0'; 'level:N' selects resolution level N "
    "(0 = highest resolution, each level halves the side)"
)


def select_layers(layers: list[LayerInfo], preset: str, custom: str = "") -> list[LayerInfo]:
    """The layers a preset (one of LAYER_PRESETS) names, in execution order.

    Raises ValueError with a message naming the offending value when a preset or custom entry is
    unknown or selects nothing."""
    if not layers:
        raise ValueError("the model has no UNet self-attention layers")
    top = max(layer.level for layer in layers)
    chosen: list[LayerInfo]
    if preset == "all":
        chosen = list(layers)
    elif preset == "middle block":
        chosen = [x for x in layers if x.block[0] == "middle"]
    elif preset == FPE_PRESET:
        chosen = fpe_layers(layers)
    elif preset == "latent resolution":
        chosen = [x for x in layers if x.level == 0]
    elif preset == "lowest resolution":
        chosen = [x for x in layers if x.level == top]
    elif preset == "input blocks":
        chosen = [x for x in layers if x.block[0] == "input"]
    elif preset == "output blocks":
        chosen = [x for x in layers if x.block[0] == "output"]
    elif preset == "custom list":
        chosen = _select_custom(layers, custom)
    else:
        raise ValueError(f"unknown layer preset {preset!r}; choose one of {', '.join(LAYER_PRESETS)}")
    if not chosen:
        raise ValueError(f"layer selection {preset!r} matches no self-attention layer of this model")
    return sorted(chosen, key=lambda x: sort_key(x.key))


def fpe_layers(layers: list[LayerInfo]) -> list[LayerInfo]:
    """Free-Prompt-Editing's default layers: those whose self-attention maps hold at most a quarter of the
    tokens of the model's largest self-attention map, i.e. every resolution level below the
    highest-resolution level that has self-attention.

    FPE (SD1.5, 512 px, 64x64 latent) swaps the maps of at most 32x32 tokens and leaves the 64x64 ones:
    this rule verbatim. Token counts scale with the image (tokens = latent_h * latent_w / 4**level), so
    the ratio, and hence the set of layers, is the same at every image size and needs no latent size:
    SD1.x/2.x: levels 1-3, 11 of 16 layers (everything below the latent resolution); SDXL, which has no
    self-attention at the latent resolution: level 2 only, 60 of 70 layers (at 1024 px its 64x64-token
    level-1 maps are left alone like SD1.5's 64x64 maps at 512 px; at 512 px the same layers, 32x32
    tokens, are left)."""
    if not layers:
        return []
    highest = min(x.level for x in layers)
    return [x for x in layers if x.level > highest]


def _select_custom(layers: list[LayerInfo], custom: str) -> list[LayerInfo]:
    entries = [e.strip() for e in custom.split(",") if e.strip()]
    if not entries:
        raise ValueError(f"'custom list' needs a layer list: {CUSTOM_LIST_HELP}")
    chosen: dict[str, LayerInfo] = {}
    for entry in entries:
        matches = [x for x in layers if _matches(x, entry)]
        if not matches:
            known = ", ".join(x.key for x in layers)
            raise ValueError(f"layer entry {entry!r} matches no self-attention layer; this model has: {known}")
        chosen.update({x.key: x for x in matches})
    return list(chosen.values())


def _matches(layer: LayerInfo, entry: str) -> bool:
    if entry.startswith("level:"):
        try:
            return layer.level == int(entry[len("level:"):])
        except ValueError:
            return False
    parts = entry.split(".")
    return layer.key.split(".")[: len(parts)] == parts
