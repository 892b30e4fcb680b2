"""The "Self-Attention Swap" patch: an attn1 replace per chosen layer, and the optional wrapper that holds
the source rows on a stored inversion trajectory. Needs ComfyUI at call time only."""

from __future__ import annotations

import logging

import torch

from ..sae_math.attention_rows import POSITIVE, chunk_kinds, chunk_roles, tiles_per_unet_row
from ..sae_math.errors import NodeInputError
from ..sae_math.swap_math import pair_rows, row_index, sigma_in_window

PIN_WRAPPER_KEY = "self_attention_edit.pin_source"
CHECK_WRAPPER_KEY = "self_attention_edit.swap_check"
ROLES_WRAPPER_KEY = "self_attention_edit.swap_roles"
# model_options key (top level) through which the PREDICT_NOISE wrapper hands the guider's named conds
# to the CALC_COND_BATCH wrapper, and transformer_options key through which that one hands each UNet
# call's SwapCallInfo to the attn1 replaces.
GUIDER_KEY = "self_attention_edit.guider_conds"
CALL_INFO_KEY = "self_attention_edit.swap_call"
SWAP_NODE = "Self-Attention Swap"

log = logging.getLogger("self_attention_edit")
_NO_RUN = object()


def _optimized_attention(q, k, v, extra_options):
    from comfy.ldm.modules.attention import optimized_attention

    # transformer_options (extra_options is a copy of it, plus n_heads/dim_head/attn_precision) carries
    # an optimized_attention_override another node may have set; ComfyUI's wrap_attn calls it only when
    # the options come with the call (0.3.75 and 0.33 alike).
    return optimized_attention(q, k, v, extra_options["n_heads"], attn_precision=extra_options.get("attn_precision"),
                               transformer_options=extra_options)


# ---------------------------------------------------------------------------------------------------
# Which chunks of a UNet call are the positive ones (sampling-level wrappers)

class _GuiderConds:
    """The guider's named conds ({"positive": [...], "negative": [...], ...}), in an object rather than a
    dict so that model_options copies (copy_nested_dicts) keep the very lists, whose identity names them."""

    def __init__(self, conds):
        self.conds = conds

    def __deepcopy__(self, memo):
        return self


class SwapCallInfo:
    """What one calc_cond_batch call tells the swap's attn1 replaces: roles (chunk_roles: one per entry
    of its conds list, or None when unknown) and the model_sampling in force (for the step window).
    A new object per call: its identity keys the replaces' per-call cache."""

    def __init__(self, roles, model_sampling):
        self.roles = roles
        self.model_sampling = model_sampling

    def __deepcopy__(self, memo):
        return self


class GuiderCondsWrapper:
    """WrappersMP.PREDICT_NOISE wrapper: executor.class_obj is the guider (CFGGuider and subclasses such
    as DualCFGGuider); passes its conds down in a copy of model_options (nothing shared is changed).
    Everything sampling_function / a guider's predict_noise / SAG's post-CFG pass hands calc_cond_batch
    is that copy."""

    def __deepcopy__(self, memo):
        return self

    def __call__(self, executor, x, timestep, model_options=None, *args, **kwargs):
        conds = getattr(getattr(executor, "class_obj", None), "conds", None)
        if isinstance(model_options, dict) and isinstance(conds, dict):
            model_options = {**model_options, GUIDER_KEY: _GuiderConds(conds)}
        return executor(x, timestep, model_options, *args, **kwargs)


class ChunkRolesWrapper:
    """WrappersMP.CALC_COND_BATCH wrapper (executor, model, conds, x_in, timestep, model_options): names
    each entry of conds by identity with the guider's conds and passes the names, with the model_sampling
    in force, to the attn1 replaces through a copy of transformer_options. Where the names cannot be read
    the replaces fall back to cond_or_uncond 0 = positive, with one log line per sampling run."""

    def __init__(self):
        self._warned_run = None  # the sample_sigmas tensor of the last run warned about (a run's identity)

    def __deepcopy__(self, memo):
        return self

    def __call__(self, executor, model, conds, x_in, timestep, model_options, *args, **kwargs):
        ref = model_options.get(GUIDER_KEY)
        roles = chunk_roles(conds, ref.conds if ref is not None else None)
        transformer_options = dict(model_options.get("transformer_options", {}))
        if roles is None:
            run = transformer_options.get("sample_sigmas", _NO_RUN)
            if self._warned_run is not run:
                self._warned_run = run
                log.info("%s: cannot tell which conditioning is the positive one (%s); treating "
                         "cond_or_uncond 0 as positive, as with the ordinary CFG guider", SWAP_NODE,
                         "no guider seen" if ref is None else "the guider passes conds it does not hold")
        transformer_options[CALL_INFO_KEY] = SwapCallInfo(roles, getattr(model, "model_sampling", None))
        model_options = {**model_options, "transformer_options": transformer_options}
        return executor(model, conds, x_in, timestep, model_options, *args, **kwargs)


# ---------------------------------------------------------------------------------------------------
# The attn1 replace

class _CallPlan:
    __slots__ = ("active", "edited")

    def __init__(self, active: bool, edited: tuple[bool, ...] | None):
        self.active = active  # the call's sigma is inside the window
        self.edited = edited  # per chunk: swap its targets (None: nothing to swap in this call)


class SwapWindow:
    """When and where one Self-Attention Swap node swaps, shared by all of its layers' replaces, which
    ask it once per layer call; it decides once per UNet call.

    start/end: fractions of the denoising on ComfyUI's percent scale (like ControlNet's start/end
    percent): an evaluation at noise level sigma is swapped when
    percent_to_sigma(end) < sigma <= percent_to_sigma(start), on the model_sampling in force when
    sampling runs. A property of the evaluation alone: a run split in two (KSamplerAdvanced
    start_at_step/end_at_step) or one with denoise < 1 swaps exactly the evaluations the whole run
    would. On uniform-timestep schedulers (normal, simple, sgm_uniform, ddim_uniform; FPE's DDIM) this
    is the fraction of the steps; karras/exponential, which crowd steps at low noise, put more steps
    below the same sigma.
    all_chunks: swap every chunk (positive, negative, ...); otherwise the positive one only.
    fallback_sampling: model_sampling from node time, for calls without SwapCallInfo.

    Caches (one UNet call's plan, keyed by the identity of the call's SwapCallInfo and sigmas, which it
    holds so the identities cannot be reused; gather indices per row layout and device) replace host
    reads and tensor builds per layer: one host read of sigma per UNet call, no index tensor after the
    first call. Immutable for ComfyUI's deepcopy (the caches only memoise)."""

    def __init__(self, start: float, end: float, all_chunks: bool, fallback_sampling=None):
        self.start, self.end = float(start), float(end)
        self.all_chunks = bool(all_chunks)
        self.fallback_sampling = fallback_sampling
        self._bounds = None  # (model_sampling, sigma_low, sigma_high)
        self._plan = None  # (info, sigmas, cond_or_uncond, _CallPlan)
        self._indices: dict = {}

    def __deepcopy__(self, memo):
        return self

    def bounds(self, model_sampling) -> tuple[float, float]:
        last = self._bounds
        if last is not None and last[0] is model_sampling:
            return last[1], last[2]
        low = float(model_sampling.percent_to_sigma(self.end))
        high = float(model_sampling.percent_to_sigma(self.start))
        self._bounds = (model_sampling, low, high)
        return low, high

    def plan(self, extra_options) -> _CallPlan:
        info = extra_options.get(CALL_INFO_KEY)
        sigmas = extra_options.get("sigmas")
        cond_or_uncond = tuple(extra_options.get("cond_or_uncond") or (0,))
        last = self._plan
        if last is not None and last[0] is info and last[1] is sigmas and last[2] == cond_or_uncond:
            return last[3]
        sampling = info.model_sampling if info is not None and info.model_sampling is not None \
            else self.fallback_sampling
        active = True
        if sigmas is not None and sampling is not None:
            # One host read per UNet call. Rows share a sigma in every ComfyUI sampler; max() is the
            # noisiest row's if they ever do not.
            active = sigma_in_window(float(sigmas.max()), *self.bounds(sampling))
        edited = None
        if active:
            kinds = chunk_kinds(cond_or_uncond, info.roles if info is not None else None)
            flags = tuple(self.all_chunks or kind == POSITIVE for kind in kinds)
            edited = flags if any(flags) else None
        plan = _CallPlan(active, edited)
        self._plan = (info, sigmas, cond_or_uncond, plan)
        return plan

    def gather_index(self, edited: tuple[bool, ...], rows: int, extra_options, device) -> torch.Tensor:
        """(rows,) index: target rows read their source rows. Another patch may have split each UNet row
        into `tiles` rows before us (HyperTile: "(b nh nw) (h w) c", tiles of one image contiguous): tile
        j of a target then reads tile j of its source, the same image region, the swap done tile by
        tile."""
        original_shape = extra_options.get("original_shape")
        unet_rows = int(original_shape[0]) if original_shape is not None else rows
        key = (edited, rows, unet_rows, device)
        index = self._indices.get(key)
        if index is None:
            tiles = tiles_per_unet_row(rows, original_shape, SWAP_NODE)
            targets, sources = pair_rows(rows // tiles, list(edited), {True})
            if tiles > 1:
                targets = [t * tiles + j for t in targets for j in range(tiles)]
                sources = [s * tiles + j for s in sources for j in range(tiles)]
            index = torch.tensor(row_index(rows, targets, sources), device=device)
            if len(self._indices) >= 64:  # row layouts seen: a handful per model; bound it anyway
                self._indices.clear()
            self._indices[key] = index
        return index


class SelfAttentionSwapPatch:
    """attn1 replace for one layer: target rows attend with their source rows' q and k (own v) while the
    call is inside the node's window (SwapWindow), on the positive chunk (or every chunk); otherwise
    plain attention. `inner`: an attn1 replace another node had put on this layer, called instead of
    ComfyUI's attention so both act.

    edit_chunks: {0} swaps the positive chunk only, a set holding 1 every chunk (the values the node's
    rows choice had before roles were read from the guider)."""

    def __init__(self, start: float, end: float, edit_chunks: frozenset[int], inner=None, window=None):
        self.start, self.end = float(start), float(end)
        self.edit_chunks = frozenset(edit_chunks)
        self.inner = inner
        self.window = window if window is not None else SwapWindow(start, end, 1 in self.edit_chunks)

    def to(self, device_or_dtype):
        if self.inner is not None and hasattr(self.inner, "to"):
            return SelfAttentionSwapPatch(self.start, self.end, self.edit_chunks, self.inner.to(device_or_dtype),
                                          self.window)
        return self

    def active(self, extra_options) -> bool:
        """Whether this call's sigma is inside the window."""
        return self.window.plan(extra_options).active

    def __call__(self, q, k, v, extra_options):
        edited = self.window.plan(extra_options).edited
        if edited is not None:
            # q and k may be tiled differently (HyperTile tiles the query side only): an index for each.
            q = q.index_select(0, self.window.gather_index(edited, q.shape[0], extra_options, q.device))
            k = k.index_select(0, self.window.gather_index(edited, k.shape[0], extra_options, k.device))
        if self.inner is not None:
            return self.inner(q, k, v, extra_options)
        return _optimized_attention(q, k, v, extra_options)


# ---------------------------------------------------------------------------------------------------
# Holding the source rows on an inversion trajectory

class PinSourceToTrajectory:
    """WrappersMP.APPLY_MODEL wrapper: before each model evaluation, the source rows' x is replaced by the
    stored inversion latent at that sigma (linear in sigma between stored points), which is FPE's way of
    keeping the source branch on the inversion path so the real image is reconstructed.

    sigmas: (S+1,) ascending; latents: (S+1, N, C, H, W) in the model's (process_latent_in) space.
    Per call: one searchsorted and one lerp over the source rows on x's device, one indexed write; no
    host read. The trajectory is copied to x's device on first use and kept there (one slot)."""

    def __init__(self, sigmas: torch.Tensor, latents: torch.Tensor, check_schedule=None):
        self.sigmas = sigmas.double().cpu()
        self.latents = latents
        # Inversion.check_schedule: message (or None) for a forward schedule; the pinned source is the
        # recorded image only when the sampler visits the sigmas the inversion stored.
        self.check_schedule = check_schedule
        self._checked = None  # the last sample_sigmas tensor found to match (checked once per run)
        self._on_device = None  # (device, sigmas, latents) on that device
        self._rows: dict = {}  # (rows, batch, n, device) -> (source row index, image index)

    def __deepcopy__(self, memo):
        return self  # immutable data; the caches only memoise

    def to(self, device_or_dtype):
        if isinstance(device_or_dtype, torch.dtype):
            return self  # interpolated in float32 and cast to x's dtype at use
        moved = PinSourceToTrajectory.__new__(PinSourceToTrajectory)
        moved.sigmas, moved.latents, moved.check_schedule = self.sigmas, self.latents, self.check_schedule
        moved._checked, moved._on_device, moved._rows = None, None, {}
        moved._trajectory(torch.device(device_or_dtype))
        return moved

    def _trajectory(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        last = self._on_device
        if last is not None and last[0] == device:
            return last[1], last[2]
        # float64 sigmas where the device has them (not MPS), as the search always did on the CPU.
        sigma_dtype = torch.float32 if device.type == "mps" else torch.float64
        sigmas = self.sigmas.to(device=device, dtype=sigma_dtype)
        latents = self.latents.to(device)
        self._on_device = (device, sigmas, latents)
        return sigmas, latents

    def _source_rows(self, rows: int, batch: int, n: int, device):
        key = (rows, batch, n, device)
        cached = self._rows.get(key)
        if cached is None:
            # Rows of every chunk whose latent element e is even (a source); image (e // 2) % n.
            source = [r for r in range(rows) if (r % batch) % 2 == 0]
            image = [((r % batch) // 2) % n for r in source]
            cached = (torch.tensor(source, device=device), torch.tensor(image, device=device))
            self._rows[key] = cached
        return cached

    def latents_at(self, sigma: torch.Tensor, image: torch.Tensor, device) -> torch.Tensor:
        """(R, C, H, W): the stored latent of image[i] at sigma[i], linear in sigma between stored points
        (clamped at the ends; within 1e-6 of a stored point, that point exactly)."""
        sigmas, latents = self._trajectory(device)
        s = sigma.to(device=device, dtype=sigmas.dtype)
        hi = torch.searchsorted(sigmas, s).clamp_(1, sigmas.shape[0] - 1)
        lo = hi - 1
        w = (s - sigmas[lo]) / (sigmas[hi] - sigmas[lo])
        w = torch.where(w < 1e-6, torch.zeros_like(w), torch.where(w > 1 - 1e-6, torch.ones_like(w), w))
        w = torch.where(s <= sigmas[0], torch.zeros_like(w), torch.where(s >= sigmas[-1], torch.ones_like(w), w))
        a, b = latents[lo, image].float(), latents[hi, image].float()
        # torch.lerp is exact at weights 0 and 1: a stored point comes back bit for bit.
        return torch.lerp(a, b, w.float().view(-1, *([1] * (a.ndim - 1)))).to(latents.dtype)

    def _check(self, schedule) -> None:
        if self.check_schedule is None or schedule is None or schedule is self._checked:
            return
        message = self.check_schedule(schedule)
        if message:
            raise ValueError(message)
        self._checked = schedule

    def __call__(self, executor, x, t, c_concat, c_crossattn, control, transformer_options, *args, **kwargs):
        self._check(transformer_options.get("sample_sigmas"))
        cond_or_uncond = transformer_options.get("cond_or_uncond", [0])
        rows = x.shape[0]
        batch = rows // max(len(cond_or_uncond), 1)
        pairs = batch // 2
        n = self.latents.shape[1]
        if batch % 2 or (n != pairs and n != 1):
            raise ValueError(f"Self-Attention Swap: the inversion holds {n} image(s) but the latent batch has {batch} "
                             f"elements ({pairs} pairs); invert the same images that make the pairs")
        source, image = self._source_rows(rows, batch, n, x.device)
        x = x.clone()
        x[source] = self.latents_at(t.reshape(-1)[source], image, x.device).to(x.dtype)
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


def refuse_unpaired_batch(rows: int, transformer_options: dict) -> None:
    """NodeInputError unless every cond/uncond chunk of a model call's rows (rows = chunks x batch) is a
    whole number of source/target pairs: what the sampler feeds a swapped model, UNet or DiT."""
    chunks = max(len(transformer_options.get("cond_or_uncond") or [0]), 1)
    if rows % chunks or (rows // chunks) % 2:
        raise NodeInputError(
            SWAP_NODE, "latent_image (of the sampler)", f"batch {rows // chunks}",
            "the latent batch cannot be split into source/target pairs; a swap samples pairs "
            "[s1, t1, s2, t2, ...]: make the sampler's latent with 'Make Source/Target Pairs'")


def refuse_text_width(given: int, expected: int | None, takes: str, example: str, encoder: str) -> None:
    """NodeInputError when the sampler's text embeddings are `given` wide but the model takes `expected`
    (None: unknown, not checked). takes: what takes them ("this model's cross-attention"); example: a
    typical mix-up; encoder: the text encoder to use instead."""
    if expected and given != expected:
        raise NodeInputError(
            SWAP_NODE, "positive/negative (of the sampler)", f"text width {given}",
            f"{takes} takes text embeddings of width {expected}; the conditioning comes from another model "
            f"family's text encoder (e.g. {example}): encode source and target prompts with {encoder}, then "
            "'Source/Target Conditioning'")


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
        refuse_unpaired_batch(x.shape[0], transformer_options)
        if context is not None:
            refuse_text_width(context.shape[-1], self.context_width, "this model's cross-attention",
                              "SD1.5 CLIP on an SDXL model", "this checkpoint's CLIP")
        if y is not None and self.adm_width and y.shape[-1] != self.adm_width:
            raise NodeInputError(
                SWAP_NODE, "positive/negative (of the sampler)", f"pooled/size vector width {y.shape[-1]}",
                f"this model expects a vector input of width {self.adm_width} (pooled text + size "
                "embeddings); the conditioning comes from another model family: encode source and target "
                "prompts with this checkpoint's CLIP")
        return executor(x, timesteps, context, y, control, transformer_options, *args, **kwargs)
