"""The timestep window of Apply Latent Direction, in sigma: the conversion and a sampling run's bookkeeping.

Pure Python (no ComfyUI import): a model_sampling object is only asked for percent_to_sigma(percent),
which every ComfyUI schedule implements (discrete SD, LCM, EDM/continuous, flow, Flux, Stable Cascade).

Why sigma: T and the units of ModelSampling.timestep() differ between schedules (LCM keeps 50 of the
1000 sigmas but reports timesteps 19..999, EDM / continuous models report 0.25 log sigma, flow models
sigma * multiplier), while the sigma each model evaluation runs at means the same thing everywhere and is
what the sampler actually visits (heun / dpm_2 intermediate points included).
"""

from __future__ import annotations

import math


def window_sigmas(model_sampling, start: float, end: float) -> tuple[float, float]:
    """(sigma_low, sigma_high): the window start*T < t < end*T is the open interval sigma_low < sigma < sigma_high.

    The mapping, exactly: a fraction f of T is ComfyUI's percent p = 1 - f (percent counts from the start
    of sampling, t from the clean end), so sigma_f = model_sampling.percent_to_sigma(1 - f) — the same
    scale the core's start_percent / end_percent inputs (ControlNet, conditioning ranges) use.
    On each schedule that is:
      - discrete SD (ModelSamplingDiscrete, 1000 steps): sigma(f * 999), log-linear between the integer
        timesteps; the paper's 0.5..0.8 gives sigma(499.5) = 1.6156 < sigma < sigma(799.2) = 5.0924
        (UNet timesteps 500..799 inside, against 501..799 with the former integer test 500 < t < 800: an
        evaluation at exactly t = 500, as beta schedules with an even step count make, is now edited;
        one at exactly sigma(799.2), as normal with 5k + 1 steps makes, is not);
      - LCM (ModelSamplingDiscreteDistilled): the same 0..999 timestep scale, interpolated on its 50 kept sigmas;
      - EDM / continuous: exp(log sigma_min + f * (log sigma_max - log sigma_min));
      - flow (ModelSamplingDiscreteFlow, SD3 / AuraFlow shift s): s f / (1 + (s - 1) f); Flux: its time shift of f.
    f = 0 and f = 1 are the ends of the schedule: they map to -inf and +inf (every evaluation counts as
    inside on that side; flow's percent_to_sigma would give 1.0, which the first flow step evaluates at).
    """
    low = -math.inf if start <= 0.0 else float(model_sampling.percent_to_sigma(1.0 - start))
    high = math.inf if end >= 1.0 else float(model_sampling.percent_to_sigma(1.0 - end))
    return low, high


def describe_window(start: float, end: float, low: float, high: float) -> str:
    return f"{start:g}*T < t < {end:g}*T (on this model's schedule {low:.4g} < sigma < {high:.4g})"


class WindowRun:
    """Bookkeeping of one sampling run (one CFGGuider.sample call): which sigmas the model was evaluated at
    and, per window, whether any evaluation fell inside it. A new object per run, so nothing carries over
    from one run (or prompt) to the next.

    Not a dict on purpose: ComfyUI merges transformer_options into each call's dict with
    merge_nested_dicts, which copies nested dicts (a dict here would be a per-call copy) but passes other
    objects by reference."""

    MAX_LISTED = 24

    def __init__(self):
        self.sigmas: list[float] = []  # distinct evaluated sigmas, in evaluation order
        self._seen: set[float] = set()
        self.windows: dict[tuple, bool] = {}  # (start, end, low, high) -> some evaluation inside

    def evaluated(self, sigmas) -> None:
        """Record one model evaluation's per-row sigmas (host floats)."""
        for s in sigmas:
            if s not in self._seen:
                self._seen.add(s)
                self.sigmas.append(s)

    def window(self, start: float, end: float, low: float, high: float, inside: bool) -> None:
        key = (start, end, low, high)
        self.windows[key] = self.windows.get(key, False) or inside

    def missed_warnings(self, node: str) -> list[str]:
        """One message per window no evaluation of this run fell inside (empty when every window was hit)."""
        if not self.sigmas:
            return []
        listed = ", ".join(f"{s:.4g}" for s in self.sigmas[:self.MAX_LISTED])
        if len(self.sigmas) > self.MAX_LISTED:
            listed += f", ... ({len(self.sigmas)} in all)"
        return [f"{node}: no model evaluation of this sampling run fell inside the window "
                f"{describe_window(start, end, low, high)}, so the direction was never applied. "
                f"Sigmas evaluated: {listed}. Widen the window (window_start / window_end) or sample with "
                "more steps."
                for (start, end, low, high), hit in self.windows.items() if not hit]
