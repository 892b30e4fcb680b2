"""The "Apply Latent Direction" patch: an attn1_patch plus a wrapper that tells it the UNet timestep.

Gating on the timestep the UNet actually sees (ModelSampling.timestep(sigma), per row) rather than on a
step counter makes the window exact for every sampler, multi-evaluation ones (heun, dpm_2) included.
"""

from __future__ import annotations

import torch

from .attention_rows import tiles_per_unet_row
from .direction_math import alpha_per_row, direction_delta

# transformer_options key under which the wrapper below stores the per-row UNet timesteps.
TIMESTEPS_KEY = "self_attention_edit.timesteps"
WRAPPER_KEY = "self_attention_edit.timesteps"
APPLY_NODE = "Apply Latent Direction"


def record_timesteps(executor, x, timesteps, context, y, control, transformer_options, *args, **kwargs):
    """WrappersMP.DIFFUSION_MODEL wrapper: expose the UNet's own timesteps (rows,) to attention patches.
    transformer_options is the per-call dict built by calc_cond_batch, which the UNet mutates too."""
    transformer_options[TIMESTEPS_KEY] = timesteps
    return executor(x, timesteps, context, y, control, transformer_options, *args, **kwargs)


def install_timestep_wrapper(model) -> None:
    """Add the wrapper to a clone once (several Apply nodes share it)."""
    import comfy.patcher_extension as pe

    if not model.get_wrappers(pe.WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY):
        model.add_wrapper_with_key(pe.WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY, record_timesteps)


def layer_key(extra_options) -> str | None:
    block = extra_options.get("block")
    if block is None:
        return None
    return f"{block[0]}.{block[1]}.{extra_options.get('block_index', 0)}"


class LatentDirectionPatch:
    """attn1_patch adding alpha * s * n to the self-attention input (see direction_math).

    Immutable; .to(device) returns a moved copy (ComfyUI's model_patches_to), deepcopy returns itself.
    vectors: layer key -> (d,) unit direction. alphas: one per latent element (cycled) or a single one.
    Active for rows whose timestep t satisfies t_low < t < t_high (0..T-1 timestep units)."""

    def __init__(self, vectors: dict[str, torch.Tensor], alphas: tuple[float, ...], t_low: float, t_high: float,
                 relative: bool, fallback_timestep=None):
        self.vectors = dict(vectors)
        self.alphas = tuple(alphas)
        self.t_low = float(t_low)
        self.t_high = float(t_high)
        self.relative = bool(relative)
        # Used only if the timestep wrapper did not run (another pack calling the UNet by hand).
        self.fallback_timestep = fallback_timestep
        # Cache of the last active_alphas() result: every layer of one UNet call asks for the same
        # alphas (same timesteps tensor, rows, chunks, device); computing them costs a host read of the
        # timesteps (a device sync on a GPU) and a new tensor. Keyed by the identity of that call's
        # timesteps (or sigmas) tensor, which the cache holds (so the identity cannot be reused by a later
        # tensor). One tuple, replaced atomically.
        self._last_alphas = None

    def __deepcopy__(self, memo):
        return self

    def to(self, device_or_dtype):
        if isinstance(device_or_dtype, torch.dtype):
            return self  # vectors are cast to the activation dtype at use; keep them in float32
        moved = {k: v.to(device_or_dtype) for k, v in self.vectors.items()}
        return LatentDirectionPatch(moved, self.alphas, self.t_low, self.t_high, self.relative, self.fallback_timestep)

    def _timesteps(self, extra_options, rows: int) -> torch.Tensor:
        t = extra_options.get(TIMESTEPS_KEY)
        if t is None:
            sigmas = extra_options["sigmas"]
            t = self.fallback_timestep(sigmas).repeat(rows // sigmas.shape[0])
        return t.reshape(-1)

    def active_alphas(self, extra_options, rows: int, device) -> torch.Tensor | None:
        """(rows,) alphas, zero outside the window; None when no row is edited.

        rows may be a multiple of the UNet's rows: a patch before this one (HyperTile) split every UNet
        row into `tiles` contiguous rows of tokens; each tile gets its image's alpha."""
        source = extra_options.get(TIMESTEPS_KEY)
        if source is None:
            source = extra_options["sigmas"]
        chunks = len(extra_options.get("cond_or_uncond", [0])) or 1
        last = self._last_alphas
        if last is not None and last[0] is source and last[1] == rows and last[2] == chunks and last[3] == device:
            return last[4]
        alphas = self._compute_active_alphas(extra_options, rows, chunks, device)
        self._last_alphas = (source, rows, chunks, device, alphas)
        return alphas

    def _compute_active_alphas(self, extra_options, rows: int, chunks: int, device) -> torch.Tensor | None:
        tiles = tiles_per_unet_row(rows, extra_options.get("original_shape"), APPLY_NODE)
        unet_rows = rows // tiles
        # The window test runs on host floats: one transfer of a few timesteps, then no small tensor ops
        # (each costs tens of microseconds in a sampling loop, more than the arithmetic).
        t = self._timesteps(extra_options, unet_rows).tolist()
        if len(t) != unet_rows:
            raise ValueError(f"timesteps for {len(t)} rows, activations for {unet_rows}")
        inside = [self.t_low < x < self.t_high for x in t]
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
        delta = direction_delta(n, direction, alphas, self.relative)
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
        return other if alphas is None else other + direction_delta(other, direction, alphas, self.relative)
