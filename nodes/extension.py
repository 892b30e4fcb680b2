"""The ComfyExtension that registers every node of the pack."""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from .node_apply import ApplyLatentDirection
from .node_batch import BATCH_NODES
from .node_demo_model import DEMO_MODEL_NODES
from .node_directions import (
    ComputeAttentionEigendirections,
    LoadAttentionDirections,
    SaveAttentionDirections,
    register_folder,
)
from .node_invert import INVERT_NODES
from .node_swap import SWAP_NODES

NODES: list[type[io.ComfyNode]] = [
    ComputeAttentionEigendirections,
    ApplyLatentDirection,
    SaveAttentionDirections,
    LoadAttentionDirections,
    *SWAP_NODES,
    *INVERT_NODES,
    *BATCH_NODES,
    *DEMO_MODEL_NODES,
]


class SelfAttentionEditExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        # ComfyUI 0.3.75 does not call ComfyExtension.on_load; this runs once when the pack is loaded.
        register_folder()
        return list(NODES)
