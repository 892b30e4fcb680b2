"""The "Self-Attention Swap" patch: an attn1 replace per chosen layer, and the optional wrapper that holds
the source rows on a stored inversion trajectory. Needs ComfyUI at call time only."""

from __future__ import annotations

import torch

from .attention_rows import tiles_per_unet_row
from .errors import NodeInputError
from .swap_math import copy_rows, pair_rows, step_window_active

PIN_WRAPPER_KEY = "self_attention_edit.pin_source"
CHECK_WRAPPER_KEY = "self_attention_edit.swap_check"
SWAP_NODE = "Self-Attention Swap"


def _optimized_attention(q, k, v, extra_options):
    from comfy.ldm.modules.attention import optimized_attention

    return optimized_attention(q, k, v, extra_options["n_heads"], attn_precision=extra_options.get("attn_precision"))


def _sigma(extra_options) -> float | None:
    sigmas = extra_options.get("sigmas")
    return None if sigmas is None else float(sigmas.max())


def tiled_pairs(rows: int, extra_options, edit_chunks) -> tuple[list[int], list[int]]:
    """(target rows, source rows) of q/k. Another patch may have split each UNet row into `tiles` rows
    before us (HyperTile: "(b nh nw) (h w) c", tiles of one image contiguous): tile j of a target then
    attends with tile j of its source, the same image region, which is the swap done tile by tile."""
    tiles = tiles_per_unet_row(rows, extra_options.get("original_shape"), SWAP_NODE)
    targets, sources = pair_rows(rows // tiles, list(extra_options.get("cond_or_uncond", [0])), edit_chunks)
    if tiles == 1:
        return targets, sources
    return ([t * tiles + j for t in targets for j in range(tiles)],
            [s * tiles + j for s in sources for j in range(tiles)])


class SelfAttentionSwapPatch:
    """attn1 replace for one layer: target rows attend with their source rows' q and k (own v) during
    steps [start, end) of the sampling, for the cond/uncond chunks in edit_chunks; otherwise plain
    attention. `inner`: an attn1 replace another node had put on this layer, called instead of ComfyUI's
    attention so both act."""

    def __init__(self, start: float, end: float, edit_chunks: frozenset[int], inner=None):
        self.start, self.end = float(start), float(end)
        self.edit_chunks = frozenset(edit_chunks)
        self.inner = inner

    def to(self, device_or_dtype):
        if self.inner is not None and hasattr(self.inner, "to"):
            return SelfAttentionSwapPatch(self.start, self.end, self.edit_chunks, self.inner.to(device_or_dtype))
        return self

    def active(self, extra_options) -> bool:
        sigma = _sigma(extra_options)
        schedule = extra_options.get("sample_sigmas")
        if sigma is None or schedule is None:
            return True
        return step_window_active(sigma, schedule, self.start, self.end)

    def __call__(self, q, k, v, extra_options):
        if self.active(extra_options):
            # q and k may be tiled differently (HyperTile tiles the query side only): pair each on its own.
            q = copy_rows(q, *tiled_pairs(q.shape[0], extra_options, self.edit_chunks))
            k = copy_rows(k, *tiled_pairs(k.shape[0], extra_options, self.edit_chunks))
        if self.inner is not None:
            return self.inner(q, k, v, extra_options)
        return _optimized_attention(q, k, v, extra_options)


class PinSourceToTrajectory:
    """WrappersMP.APPLY_MODEL wrapper: before each model evaluation, the source rows' x is replaced by the
    stored inversion latent at that sigma (linear in sigma between stored points), which is FPE's way of
    keeping the source branch on the inversion path so the real image is reconstructed.

    sigmas: (S+1,) ascending; latents: (S+1, N, C, H, W) in the model's (process_latent_in) space."""

    def __init__(self, sigmas: torch.Tensor, latents: torch.Tensor):
        self.sigmas = sigmas.double().cpu()
        self.latents = latents

    def latent_at(self, sigma: float) -> torch.Tensor:
        s = self.sigmas
        if sigma <= s[0]:
            return self.latents[0]
        if sigma >= s[-1]:
            return self.latents[-1]
        i = int(torch.searchsorted(s, torch.tensor(sigma, dtype=torch.float64)).item())
        lo, hi = s[i - 1].item(), s[i].item()
        w = (sigma - lo) / (hi - lo)
        if w < 1e-6:
            return self.latents[i - 1]
        if w > 1 - 1e-6:
            return self.latents[i]
        return torch.lerp(self.latents[i - 1].float(), self.latents[i].float(), w).to(self.latents.dtype)

    def __call__(self, executor, x, t, c_concat, c_crossattn, control, transformer_options, *args, **kwargs):
        cond_or_uncond = transformer_options.get("cond_or_uncond", [0])
        rows = x.shape[0]
        batch = rows // max(len(cond_or_uncond), 1)
        pairs = batch // 2
        n = self.latents.shape[1]
        if batch % 2 or (n != pairs and n != 1):
            raise ValueError(f"Self-Attention Swap: the inversion holds {n} image(s) but the latent batch has {batch} "
                             f"elements ({pairs} pairs); invert the same images that make the pairs")
        x = x.clone()
        for r in range(0, rows):
            e = r % batch
            if e % 2 == 0:
                x[r] = self.latent_at(float(t[r])).to(x)[(e // 2) % n]
        return executor(x, t, c_concat, c_crossattn, control, transformer_options, *args, **kwargs)


def expected_widths(unet) -> tuple[int | None, int | None]:
    """(text-embedding width the cross-attention takes, width of the UNet's `y` input or None) read from
    the modules themselves, so it is right for every family and for fine-tunes."""
    context = None
    for name, module in unet.named_modules():
        if name.endswith("attn2") and hasattr(module, "to_k"):
            context = int(module.to_k.weight.shape[1])
            break
    adm = None
    label_emb = getattr(unet, "label_emb", None)
    if label_emb is not None:
        first = label_emb[0][0] if isinstance(label_emb[0], torch.nn.Sequential) else label_emb[0]
        adm = int(first.weight.shape[1]) if hasattr(first, "weight") and first.weight.ndim == 2 else None
    return context, adm


class SwapInputCheck:
    """WrappersMP.DIFFUSION_MODEL wrapper: checks what the sampler feeds a swapped model before the UNet
    runs. The swap node cannot see the latent or the conditioning (they go to the sampler), so without
    this, an unpaired batch or conditioning from another model family fails deep inside the UNet with a
    shape error, or worse, pairs the wrong rows. Immutable."""

    def __init__(self, context_width: int | None, adm_width: int | None):
        self.context_width = context_width
        self.adm_width = adm_width

    def __deepcopy__(self, memo):
        return self

    def __call__(self, executor, x, timesteps, context, y, control, transformer_options, *args, **kwargs):
        chunks = len(transformer_options.get("cond_or_uncond") or [0])
        rows = x.shape[0]
        if rows % chunks == 0 and (rows // chunks) % 2:
            raise NodeInputError(
                SWAP_NODE, "latent_image (of the sampler)", f"batch {rows // chunks}",
                "the latent batch cannot be split into source/target pairs; a swap samples pairs "
                "[s1, t1, s2, t2, ...]: make the sampler's latent with 'Make Source/Target Pairs'")
        if context is not None and self.context_width and context.shape[-1] != self.context_width:
            raise NodeInputError(
                SWAP_NODE, "positive/negative (of the sampler)", f"text width {context.shape[-1]}",
                f"this model's cross-attention takes text embeddings of width {self.context_width}; the "
                "conditioning comes from another model family's text encoder (e.g. SD1.5 CLIP on an SDXL "
                "model): encode source and target prompts with this checkpoint's CLIP, then 'Source/Target "
                "Conditioning'")
        if y is not None and self.adm_width and y.shape[-1] != self.adm_width:
            raise NodeInputError(
                SWAP_NODE, "positive/negative (of the sampler)", f"pooled/size vector width {y.shape[-1]}",
                f"this model expects a vector input of width {self.adm_width} (pooled text + size "
                "embeddings); the conditioning comes from another model family: encode source and target "
                "prompts with this checkpoint's CLIP")
        return executor(x, timesteps, context, y, control, transformer_options, *args, **kwargs)
