"""The "Apply Latent Direction" patch: an attn1_patch plus two wrappers that tell it where sampling is.

The patch gates each row of a model evaluation against the window converted through the model_sampling
object in force at that evaluation (direction_window): on the integer timestep the model is fed on
discrete schedules (SD, LCM), on sigma elsewhere (EDM / continuous, flow). That is
exact for every sampler, multi-evaluation ones (heun, dpm_2) included, and for every schedule (discrete
SD, LCM, EDM / continuous, flow), including a ModelSampling node applied after Apply Latent Direction.

- APPLY_MODEL wrapper (record_sigmas): per UNet call, reads the per-row sigmas to the host once (the only
  host read of the call, shared by every Apply patch and layer) and hands them, with the BaseModel's
  model_sampling, to the patches in that call's transformer_options.
- OUTER_SAMPLE wrapper (track_window_run): per sampling run, a fresh WindowRun records the evaluated
  sigmas and which windows were hit, and logs one warning per window nothing fell inside.

On DiTs the edit is an object patch on the q/k/v Linear's forward (sae_patches/linear_edit.py), which sees
no transformer_options: record_sigmas also makes the call's ModelCall the current one (current_call(), a
context variable: per thread, set for the duration of that model call only, reset after it even when it
raises), and the patched forward reads it there.
"""

from __future__ import annotations

import contextvars
import logging

import torch

from ..sae_math.attention_rows import tiles_per_unet_row
from ..sae_math.direction_math import alpha_per_row, direction_delta
from ..sae_math.direction_window import Window, WindowRun, window_for

log = logging.getLogger("self_attention_edit")

# transformer_options keys: the per-call ModelCall (set by record_sigmas) and the per-run WindowRun.
CALL_KEY = "self_attention_edit.direction_call"
RUN_KEY = "self_attention_edit.direction_run"
CALL_WRAPPER_KEY = "self_attention_edit.direction_sigmas"
RUN_WRAPPER_KEY = "self_attention_edit.direction_window_run"
APPLY_NODE = "Apply Latent Direction"


class ModelCall:
    """One model call as the patches see it: sigmas and timesteps (what model_sampling.timestep() feeds the
    model), tuples of host floats, one per row ([rows] = chunks * B, chunk-major like the model's input),
    and the model_sampling object the call runs with.

    For patches that see no transformer_options (DiT object patches): chunks (len(cond_or_uncond)), run
    (the sampling run's WindowRun or None), base_model (the BaseModel running the call: its
    diffusion_model holds the modules of this very call, also on a multi-GPU copy), latent_shape (the
    shape of the latent x, [B, C, (T,) H, W]) and reference_shapes (shapes of the call's ref_latents)."""

    __slots__ = ("sigmas", "timesteps", "model_sampling", "chunks", "run", "base_model", "latent_shape",
                 "reference_shapes")

    def __init__(self, sigmas: tuple[float, ...], timesteps: tuple[float, ...], model_sampling, chunks: int = 1,
                 run=None, base_model=None, latent_shape: tuple[int, ...] = (), reference_shapes: tuple = ()):
        self.sigmas = sigmas
        self.timesteps = timesteps
        self.model_sampling = model_sampling
        self.chunks = chunks
        self.run = run
        self.base_model = base_model
        self.latent_shape = latent_shape
        self.reference_shapes = reference_shapes


# The ModelCall of the model call running in this thread (set by record_sigmas for the duration of the call).
_CURRENT_CALL: contextvars.ContextVar[ModelCall | None] = contextvars.ContextVar(
    "self_attention_edit.model_call", default=None)


def current_call() -> ModelCall | None:
    """The ModelCall of the model call in progress in this thread, None outside one of our wrapped calls."""
    return _CURRENT_CALL.get()


def host_sigmas_and_timesteps(sigma: torch.Tensor, model_sampling) -> tuple[tuple, tuple]:
    """Per-row sigmas and the timesteps the model is fed at them, in ONE host read (a device sync on a GPU)."""
    flat = sigma.reshape(-1)
    if flat.dtype in (torch.float16, torch.bfloat16):
        flat = flat.float()
    if model_sampling is None:
        values = flat.tolist()
        return tuple(values), tuple(values)
    both = torch.stack([flat, model_sampling.timestep(flat).to(device=flat.device, dtype=flat.dtype)])
    sigmas, timesteps = both.tolist()
    return tuple(sigmas), tuple(timesteps)


def record_sigmas(executor, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options=None,
                  *args, **kwargs):
    """WrappersMP.APPLY_MODEL wrapper (BaseModel.apply_model): t is the per-row sigma, [rows].

    The ModelCall goes into a copy of the call's transformer_options (0.33 copies that dict again inside
    _apply_model; nothing here relies on the caller's dict being shared across calls)."""
    sampling = getattr(executor.class_obj, "model_sampling", None)
    sigmas, timesteps = host_sigmas_and_timesteps(t, sampling)  # the one host read of this UNet call
    options = dict(transformer_options or {})
    run = options.get(RUN_KEY)
    if run is not None:
        run.evaluated(sigmas)
    references = kwargs.get("ref_latents") or ()
    call = ModelCall(sigmas, timesteps, sampling, chunks=len(options.get("cond_or_uncond") or [0]) or 1, run=run,
                     base_model=executor.class_obj, latent_shape=tuple(x.shape),
                     reference_shapes=tuple(tuple(r.shape) for r in references if hasattr(r, "shape")))
    options[CALL_KEY] = call
    token = _CURRENT_CALL.set(call)
    try:
        return executor(x, t, c_concat, c_crossattn, control, options, *args, **kwargs)
    finally:
        _CURRENT_CALL.reset(token)


def track_window_run(executor, *args, **kwargs):
    """WrappersMP.OUTER_SAMPLE wrapper (CFGGuider.outer_sample; 0.33 passes extra keywords, e.g.
    latent_shapes). executor.class_obj is the guider, whose model_options is already a per-run copy
    (CFGGuider.sample): the WindowRun placed there reaches every model call of this run and no other."""
    options = getattr(executor.class_obj, "model_options", None)
    if not isinstance(options, dict):
        return executor(*args, **kwargs)
    run = WindowRun()
    transformer_options = options.setdefault("transformer_options", {})
    transformer_options[RUN_KEY] = run
    try:
        out = executor(*args, **kwargs)
    finally:
        transformer_options.pop(RUN_KEY, None)
    for message in run.missed_warnings(APPLY_NODE):
        log.warning(message)
    return out


def install_window_wrappers(model) -> None:
    """Add both wrappers to a clone once (several Apply nodes share them)."""
    import comfy.patcher_extension as pe

    for kind, key, fn in ((pe.WrappersMP.APPLY_MODEL, CALL_WRAPPER_KEY, record_sigmas),
                          (pe.WrappersMP.OUTER_SAMPLE, RUN_WRAPPER_KEY, track_window_run)):
        if not model.get_wrappers(kind, key):
            model.add_wrapper_with_key(kind, key, fn)


def layer_key(extra_options) -> str | None:
    block = extra_options.get("block")
    if block is None:
        return None
    return f"{block[0]}.{block[1]}.{extra_options.get('block_index', 0)}"


class LatentDirectionPatch:
    """attn1_patch adding alpha * s * n to the self-attention input (see direction_math).

    Immutable; .to(device) returns a moved copy (ComfyUI's model_patches_to), deepcopy returns itself.
    vectors: layer key -> (d,) unit direction. alphas: one per latent element (cycled) or a single one.
    Active for rows inside the window start*T < t < end*T on the model_sampling in force at that call
    (direction_window.window_for: the integer timestep the model is fed on discrete schedules, sigma on
    the others)."""

    def __init__(self, vectors: dict[str, torch.Tensor], alphas: tuple[float, ...], start: float, end: float,
                 scale, fallback_sampling=None):
        self.vectors = dict(vectors)
        self.alphas = tuple(alphas)
        self.start = float(start)
        self.end = float(end)
        # The alpha scale (direction_math.direction_delta): "token_norm", "absolute" or "spread"; a bool
        # is the old two-scale flag (True: token norm).
        self.scale = scale if isinstance(scale, str) else ("token_norm" if scale else "absolute")
        # Used only if record_sigmas did not run (another pack calling the UNet by hand): the
        # model_sampling the node saw.
        self.fallback_sampling = fallback_sampling
        # Cache of the last active_alphas() result: every layer of one UNet call asks for the same
        # alphas (same call, rows, chunks, device); computing them builds a new tensor (and, on the
        # fallback path, costs a host read of the sigmas). Keyed by the identity of that call's ModelCall
        # (or sigmas tensor), which the cache holds (so the identity cannot be reused by a later object).
        # One tuple, replaced atomically.
        self._last_alphas = None
        # The window converted on the last few model_sampling objects seen (held, same reason), shared with
        # the device copies .to() makes for every sampling run, so a run converts nothing it did before.
        self._windows: list = []

    def __deepcopy__(self, memo):
        return self

    def to(self, device_or_dtype):
        if isinstance(device_or_dtype, torch.dtype):
            return self  # vectors are cast to the activation dtype at use; keep them in float32
        moved = {k: v.to(device_or_dtype) for k, v in self.vectors.items()}
        copy = LatentDirectionPatch(moved, self.alphas, self.start, self.end, self.scale, self.fallback_sampling)
        copy._windows = self._windows  # shared: a converted window does not depend on the device
        return copy

    def window(self, model_sampling) -> Window:
        """This patch's window on model_sampling's schedule (converted once per schedule object: a few host
        reads of its table, never per call)."""
        for sampling, window in self._windows:
            if sampling is model_sampling:
                return window
        window = window_for(model_sampling, self.start, self.end)
        # One slice assignment (the list object is shared with the copies): the last few schedules.
        self._windows[:] = [*self._windows[-3:], (model_sampling, window)]
        return window

    def _sigmas(self, extra_options, call, rows: int):
        """(per-row sigmas, per-row timesteps, model_sampling) of this call; (None, None, None) if unknown."""
        if call is not None and call.model_sampling is not None:
            return call.sigmas, call.timesteps, call.model_sampling
        sigmas = extra_options.get("sigmas")  # [B_latent], not [rows]
        if sigmas is None or self.fallback_sampling is None:
            return None, None, None
        host, steps = host_sigmas_and_timesteps(sigmas, self.fallback_sampling)
        repeat = rows // max(len(host), 1)
        return host * repeat, steps * repeat, self.fallback_sampling

    def active_alphas(self, extra_options, rows: int, device) -> torch.Tensor | None:
        """(rows,) alphas, zero outside the window; None when no row is edited.

        rows may be a multiple of the UNet's rows: a patch before this one (HyperTile) split every UNet
        row into `tiles` contiguous rows of tokens; each tile gets its image's alpha."""
        call = extra_options.get(CALL_KEY)
        source = call if call is not None else extra_options.get("sigmas")
        if source is None:
            return None
        chunks = len(extra_options.get("cond_or_uncond", [0])) or 1
        last = self._last_alphas
        if last is not None and last[0] is source and last[1] == rows and last[2] == chunks and last[3] == device:
            return last[4]
        alphas = self._compute_active_alphas(extra_options, call, rows, chunks, device)
        self._last_alphas = (source, rows, chunks, device, alphas)
        return alphas

    def alphas_for_call(self, call: ModelCall, rows: int, device) -> torch.Tensor | None:
        """(rows,) alphas of a model call seen without extra_options (DiT object patches: rows = the call's
        rows, no tiling), zero outside the window; None when no row is edited. Cached like active_alphas."""
        last = self._last_alphas
        if last is not None and last[0] is call and last[1] == rows and last[2] == call.chunks and last[3] == device:
            return last[4]
        if call.model_sampling is None:
            alphas = None
        else:
            alphas = self._alphas(call.sigmas, call.timesteps, call.model_sampling, call.run, rows, call.chunks, 1,
                                  device)
        self._last_alphas = (call, rows, call.chunks, device, alphas)
        return alphas

    def _compute_active_alphas(self, extra_options, call, rows: int, chunks: int, device) -> torch.Tensor | None:
        tiles = tiles_per_unet_row(rows, extra_options.get("original_shape"), APPLY_NODE)
        unet_rows = rows // tiles
        # The window test runs on host floats (read once per call by record_sigmas): no small tensor ops,
        # each of which costs tens of microseconds in a sampling loop, more than the arithmetic.
        sigmas, timesteps, sampling = self._sigmas(extra_options, call, unet_rows)
        if sigmas is None:
            return None
        return self._alphas(sigmas, timesteps, sampling, extra_options.get(RUN_KEY), unet_rows, chunks, tiles, device)

    def _alphas(self, sigmas, timesteps, sampling, run, unet_rows: int, chunks: int, tiles: int,
                device) -> torch.Tensor | None:
        if len(sigmas) != unet_rows:
            raise ValueError(f"sigmas for {len(sigmas)} rows, activations for {unet_rows}")
        window = self.window(sampling)
        inside = [window.contains(s, t) for s, t in zip(sigmas, timesteps)]
        if run is not None:
            run.window(self.start, self.end, window.sigma_low, window.sigma_high, any(inside))
        if not any(inside):
            return None
        per_row = alpha_per_row(self.alphas, unet_rows, chunks)
        alphas = [a if row_inside else 0.0 for a, row_inside in zip(per_row, inside)]
        if not any(alphas):
            return None
        return torch.tensor([a for a in alphas for _ in range(tiles)], dtype=torch.float32, device=device)

    def __call__(self, n, context_attn1, value_attn1, extra_options):
        direction = self.vectors.get(layer_key(extra_options))
        if direction is None:
            return n, context_attn1, value_attn1
        alphas = self.active_alphas(extra_options, n.shape[0], n.device)
        if alphas is None:
            return n, context_attn1, value_attn1
        delta = direction_delta(n, direction, alphas, self.scale)
        # q, k and v all read the perturbed input. Before the first attn1_patch, context and value are the
        # very tensor n; a new n alone would leave K and V unperturbed.
        shifted = n + delta
        return (shifted, self._shift(context_attn1, n, shifted, delta, direction, extra_options),
                self._shift(value_attn1, n, shifted, delta, direction, extra_options))

    def _shift(self, other, n, shifted, delta, direction, extra_options):
        if other is n:
            return shifted
        if other is None or other.shape[-1] != n.shape[-1]:
            return other
        if other.shape[0] == n.shape[0]:
            return other + delta  # tokens in the same input space (e.g. reference tokens added upstream)
        # Rows split differently from n (HyperTile tiles only n, the query side): its own per-row delta.
        alphas = self.active_alphas(extra_options, other.shape[0], other.device)
        return other if alphas is None else other + direction_delta(other, direction, alphas, self.scale)
