"""Model-family adapters: one per family, answering the same questions (families/base.py).

adapter_for(model, node) picks the adapter of a MODEL's family or raises NodeInputError naming the node, the
model's class and the supported families. Nodes speak to the adapter, never to a family's internals.
"""

from __future__ import annotations

from ...sae_math.errors import NodeInputError, model_name
from .base import FamilyAdapter, QKVSource, TokenLayout
from .flux import FluxAdapter
from .lumina2 import Lumina2Adapter
from .qwen_image import QwenImageAdapter
from .sd3 import SD3Adapter
from .unet import UNetAdapter

# Tried in order; the first whose matches() accepts the diffusion model wins.
ADAPTERS: tuple[type[FamilyAdapter], ...] = (UNetAdapter, FluxAdapter, QwenImageAdapter, SD3Adapter, Lumina2Adapter)

SUPPORTED = ("SD1.x, SD2.x and SDXL UNets; Flux.1 (dev, schnell, Kontext, Fill), Flux.2 and Chroma; Qwen-Image "
             "(and Qwen-Image-Edit); SD3 and SD3.5 (Large, Medium); Lumina 2.0 and Z-Image")

__all__ = ["ADAPTERS", "SUPPORTED", "FamilyAdapter", "QKVSource", "TokenLayout", "adapter_for", "find_adapter"]


def _diffusion_model(model):
    try:
        return model.get_model_object("diffusion_model")
    except Exception:  # noqa: BLE001 - not a ModelPatcher, or no diffusion model: no family
        return None


def find_adapter(model) -> FamilyAdapter | None:
    """The adapter of the MODEL's family, None when the pack knows none."""
    dm = _diffusion_model(model)
    if dm is None:
        return None
    for cls in ADAPTERS:
        if cls.matches(dm):
            return cls(model)
    return None


def adapter_for(model, node: str, capability: str | None = None) -> FamilyAdapter:
    """The adapter of the MODEL's family; NodeInputError (naming node and model class, listing the supported
    families) when there is none. With capability, also adapter.check_supported(node, capability)."""
    adapter = find_adapter(model)
    if adapter is None:
        raise NodeInputError(node, "model", model_name(model),
                             f"this pack does not know this model family's self-attention; supported: {SUPPORTED}")
    if capability is not None:
        adapter.check_supported(node, capability)
    return adapter
