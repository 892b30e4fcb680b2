"""Nodes for Free-Prompt-Editing: "Self-Attention Swap" and its helpers (pairs latent, pair conditioning,
split). The inversion node is in node_invert.py."""

from __future__ import annotations

import math

import torch
from comfy_api.latest import io

from ..sae_math.errors import NodeInputError
from ..sae_math.layers import CUSTOM_LIST_HELP, FPE_PRESET, LAYER_PRESETS
from ..sae_patches.families import adapter_for
from ..sae_patches.swap_patch import SwapWindow
from .node_directions import CATEGORY
from .node_invert import InversionType

ROWS = ("conditional only", "conditional and unconditional")
FPE_LAYERS = FPE_PRESET


class SelfAttentionSwap(io.ComfyNode):
    DISPLAY = "Self-Attention Swap"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SAEdit_SelfAttentionSwap",
            display_name=cls.DISPLAY,
            category=CATEGORY,
            description=(
                "Free-Prompt-Editing: sample a latent batch of source/target pairs (Make Source/Target Pairs + "
                "Source/Target Conditioning) and each target attends with its source's self-attention maps on "
                "the chosen layers and steps, keeping its own values: the layout of the source, the content of "
                "the target prompt. Cross-attention is untouched. Connect an inversion to edit a real image."),
            inputs=[
                io.Model.Input("model", tooltip="Model to patch (a copy is patched)."),
                io.Combo.Input("layers", options=list(LAYER_PRESETS), default=FPE_LAYERS,
                               tooltip="Self-attention layers whose maps are swapped. FPE default: every level "
                                       "below the model's highest-resolution self-attention level (maps of at "
                                       "most 1/4 of its largest map's tokens): 11 of 16 layers on SD1.x/2.x, "
                                       "60 of 70 on SDXL, the same layers at every image size. On Flux.1/Chroma "
                                       "the same preset selects Stable Flow's 9 vital layers, on Flux.2 every "
                                       "block (docs/dit.md)."),
                io.Float.Input("start", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Swap from this fraction of the denoising (ComfyUI's percent scale, as "
                                       "ControlNet's start_percent; = fraction of the steps on the normal/simple/"
                                       "ddim_uniform schedulers). Counted on the whole schedule: split "
                                       "KSamplerAdvanced runs and denoise < 1 swap where the full run would."),
                io.Float.Input("end", default=0.8, min=0.0, max=1.0, step=0.01,
                               tooltip="...until this fraction (FPE: 0.8; lower keeps less of the source)."),
                io.Combo.Input("rows", options=list(ROWS), default=ROWS[0],
                               tooltip="Swap on the positive conditioning only (FPE; read from the guider, so "
                                       "DualCFGGuider's cond1 and never SAG's extra unconditional pass) or on "
                                       "every conditioning (positive and negative)."),
                io.String.Input("custom_layers", default="", optional=True,
                                tooltip="Used when layers is 'custom list': " + CUSTOM_LIST_HELP
                                        + "; on Flux-family models: 'double', 'single', 'double.3', 'single.0', "
                                          "comma-separated"),
                InversionType.Input("inversion", optional=True,
                                    tooltip="From Invert Latent: edit a real image; the source is reconstructed. "
                                            "On flow models (Flux) the sampler also starts at the inverted "
                                            "latent."),
                io.Boolean.Input("pin_source", default=True, optional=True,
                                 tooltip="With an inversion: hold the source branch on the stored inversion "
                                         "trajectory at every step (FPE's trick; better reconstruction)."),
            ],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def validate_inputs(cls, start=0.0, end=0.8, layers=FPE_LAYERS, custom_layers="", **_):
        if not (0.0 <= start < end <= 1.0):
            return (f"{cls.DISPLAY}: input 'start'/'end' = {start!r}/{end!r}: need 0 <= start < end <= 1 "
                    "(fractions of the denoising; FPE uses 0 to 0.8)")
        if layers == "custom list" and not (custom_layers or "").strip():
            return f"{cls.DISPLAY}: input 'custom_layers' is empty but layers is 'custom list'; {CUSTOM_LIST_HELP}"
        return True

    @classmethod
    def execute(cls, model, layers, start, end, rows, custom_layers="", inversion=None, pin_source=True):
        if not (0.0 <= start < end <= 1.0):
            raise NodeInputError(cls.DISPLAY, "start/end", f"{start}/{end}", "need 0 <= start < end <= 1")
        if rows not in ROWS:
            raise NodeInputError(cls.DISPLAY, "rows", rows, f"choose one of {', '.join(ROWS)}")
        adapter = adapter_for(model, cls.DISPLAY, "swap")
        available = adapter.layers()
        try:
            chosen = adapter.select(available, layers, custom_layers or "")
        except ValueError as e:
            raise NodeInputError(cls.DISPLAY, "layers", layers if layers != "custom list" else custom_layers,
                                 str(e)) from e
        # One window for all of this node's layers: it decides once per model call for all of them.
        window = SwapWindow(start, end, all_chunks=rows != ROWS[0],
                            fallback_sampling=model.get_model_object("model_sampling"))
        m = model.clone()
        adapter.install_self_attention_swap(m, chosen, window, inversion, pin_source)
        return io.NodeOutput(m)


class MakePairs(io.ComfyNode):
    DISPLAY = "Make Source/Target Pairs"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SAEdit_MakePairs",
            display_name=cls.DISPLAY,
            category=CATEGORY,
            description="Turns a latent batch of N into N source/target pairs [s1, t1, s2, t2, ...] that start from "
                        "the same noise (each pair shares a batch_index, so the sampler draws it once).",
            inputs=[io.Latent.Input("latent", tooltip="Empty latent (generated images) or an inverted latent.")],
            outputs=[io.Latent.Output(display_name="pairs")],
        )

    @classmethod
    def execute(cls, latent):
        samples = latent["samples"]
        n = samples.shape[0]
        indices = latent.get("batch_index") or list(range(n))
        out = {k: v for k, v in latent.items() if k not in ("samples", "batch_index", "noise_mask")}
        out["samples"] = samples.repeat_interleave(2, dim=0)
        out["batch_index"] = [i for i in indices for _ in range(2)]
        mask = latent.get("noise_mask")
        if mask is not None:
            out["noise_mask"] = mask.repeat_interleave(2, dim=0) if mask.shape[0] == n and n > 1 else mask
        return io.NodeOutput(out)


def _pad_tokens(a: torch.Tensor, b: torch.Tensor):
    """Equal token counts by repeating each to the least common multiple, as ComfyUI batches conds."""
    la, lb = a.shape[1], b.shape[1]
    if la == lb:
        return a, b
    lcm = la * lb // math.gcd(la, lb)
    return a.repeat(1, lcm // la, 1), b.repeat(1, lcm // lb, 1)


class PairConditioning(io.ComfyNode):
    DISPLAY = "Source/Target Conditioning"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SAEdit_PairConditioning",
            display_name=cls.DISPLAY,
            category=CATEGORY,
            description="One CONDITIONING whose batch is [source, target]; ComfyUI repeats it over the pairs "
                        "latent, so every source row gets the source prompt and every target row the target.",
            inputs=[
                io.Conditioning.Input("source", tooltip="Prompt of the original image (empty for a real photo)."),
                io.Conditioning.Input("target", tooltip="The edited prompt."),
            ],
            outputs=[io.Conditioning.Output()],
        )

    @classmethod
    def execute(cls, source, target):
        for name, cond in (("source", source), ("target", target)):
            if not cond:
                raise NodeInputError(cls.DISPLAY, name, "empty conditioning",
                                     f"connect the {name} prompt's CLIP Text Encode (an empty prompt '' is fine "
                                     "for the source of a real photo)")
        if len(source) != len(target):
            raise NodeInputError(cls.DISPLAY, "target", f"{len(target)} entries",
                                 f"source has {len(source)} conditioning entries; combine them the same way")
        out = []
        for (cs, es), (ct, et) in zip(source, target):
            if cs.shape[0] != 1 or ct.shape[0] != 1:
                raise NodeInputError(cls.DISPLAY, "source", f"batch {cs.shape[0]}/{ct.shape[0]}",
                                     "each prompt must encode to a batch of 1")
            if cs.shape[-1] != ct.shape[-1]:
                raise NodeInputError(cls.DISPLAY, "target", f"width {ct.shape[-1]}",
                                     f"source and target come from different text encoders (width {cs.shape[-1]} vs "
                                     f"{ct.shape[-1]}); encode both with the same CLIP")
            cs, ct = _pad_tokens(cs, ct)
            extra = dict(et)
            ps, pt = es.get("pooled_output"), et.get("pooled_output")
            if (ps is None) != (pt is None):
                raise NodeInputError(cls.DISPLAY, "source", "pooled_output",
                                     "only one of source/target carries a pooled output; encode both with the same CLIP")
            if ps is not None:
                extra["pooled_output"] = torch.cat([ps, pt])
            out.append([torch.cat([cs, ct]), extra])
        return io.NodeOutput(out)


class SplitPairs(io.ComfyNode):
    DISPLAY = "Split Source/Target"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SAEdit_SplitPairs",
            display_name=cls.DISPLAY,
            category=CATEGORY,
            description="Separates a decoded pairs batch [s1, t1, s2, t2, ...] into the sources and the targets.",
            inputs=[io.Image.Input("images", tooltip="Decoded images of a pairs latent.")],
            outputs=[io.Image.Output(display_name="source"), io.Image.Output(display_name="target")],
        )

    @classmethod
    def execute(cls, images):
        if images.shape[0] % 2:
            raise NodeInputError(cls.DISPLAY, "images", f"batch {images.shape[0]}",
                                 "a pairs batch has an even size; decode the latent of the swap sampler")
        return io.NodeOutput(images[0::2], images[1::2])


SWAP_NODES = [SelfAttentionSwap, MakePairs, PairConditioning, SplitPairs]
