"""The timestep window of Apply Latent Direction, in sigma: the conversion and a sampling run's bookkeeping.

No ComfyUI import: a model_sampling object is only asked for timestep / sigma / sigma_max and
percent_to_sigma(percent), which every ComfyUI schedule implements (discrete SD, LCM, EDM/continuous, flow,
Flux, Stable Cascade).

Why sigma: T and the units of ModelSampling.timestep() differ between schedules (LCM keeps 50 of the
1000 sigmas but reports timesteps 19..999, EDM / continuous models report 0.25 log sigma, flow models
sigma * multiplier), while the sigma each model evaluation runs at means the same thing everywhere and is
what the sampler actually visits (heun / dpm_2 intermediate points included).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def _timestep_table(model_sampling):
    """(sigmas ascending, the integer timestep the model is fed at each) when the model sees integer training
    timesteps: ModelSamplingDiscrete (1000 entries) and its LCM variant (50 entries, timesteps 19..999),
    whose timestep(sigma) is the nearest table entry in log sigma (an integer tensor). None for EDM /
    continuous and flow schedules, where timestep() is a float function of sigma."""
    import torch

    sigmas = getattr(model_sampling, "sigmas", None)
    if not isinstance(sigmas, torch.Tensor) or sigmas.ndim != 1 or sigmas.numel() < 2:
        return None
    try:
        steps = model_sampling.timestep(sigmas)
    except Exception:  # noqa: BLE001 - a schedule we do not know: the percent scale applies
        return None
    if steps.dtype.is_floating_point or steps.dtype == torch.bool:
        return None
    return sigmas.detach().double().cpu(), steps.detach().cpu().tolist()


def _midpoint(sigmas, i: int) -> float:
    """The log-midpoint between table entries i and i + 1: where timestep(sigma) switches from one to the other."""
    return math.exp((math.log(float(sigmas[i])) + math.log(float(sigmas[i + 1]))) / 2)


def window_sigmas(model_sampling, start: float, end: float) -> tuple[float, float]:
    """(sigma_low, sigma_high): the window start*T < t < end*T is the open interval sigma_low < sigma < sigma_high.

    The mapping, exactly:
      - Discrete schedules (SD, LCM: a table of sigmas, timestep(sigma) = the table timestep nearest in log
        sigma, an integer): the paper's inequality start*T < t < end*T on the timestep the UNet is fed,
        T = 1000. The table entries with t inside are a contiguous run; the bounds are the log-midpoints
        to their neighbours outside, exactly where timestep(sigma) switches. The paper's 0.5..0.8 is
        1.6210 < sigma < 5.0994 on SD (timesteps 501..799, whatever the scheduler); on LCM's table
        (19, 39, ..., 999) timesteps 519..779. ComfyUI's percent scale below would put SD's bounds at
        sigma(499.5) and sigma(799.2), the latter exactly on one of the normal scheduler's own points at
        6, 11, 16, ... steps, where float rounding would decide.
      - Other schedules: a fraction f of T is ComfyUI's percent p = 1 - f (percent counts from the start of
        sampling, t from the clean end), sigma_f = model_sampling.percent_to_sigma(1 - f), the scale of the
        core's start_percent / end_percent inputs. EDM / continuous: exp(log sigma_min + f * (log sigma_max
        - log sigma_min)); flow (SD3 / AuraFlow shift s): s f / (1 + (s - 1) f); Flux: its time shift of f.
    f = 0 and f = 1 are the ends of the schedule: they map to -inf and +inf (every evaluation counts as
    inside on that side; flow's percent_to_sigma would give 1.0, which the first flow step evaluates at).
    """
    table = _timestep_table(model_sampling)
    if table is not None:
        return _table_sigmas(table, *_timestep_bounds(table, start, end))
    return _percent_sigmas(model_sampling, start, end)


def _timestep_bounds(table, start: float, end: float) -> tuple[float, float]:
    """The window in timesteps of a discrete schedule, T = its last table timestep + 1 (1000 for SD and for
    LCM's table 19, 39, ..., 999); -inf / +inf at the schedule's ends."""
    total = table[1][-1] + 1
    # round(): 0.57 * 1000 is 569.9999999999999 in floats.
    a = -math.inf if start <= 0.0 else round(start * total, 6)
    b = math.inf if end >= 1.0 else round(end * total, 6)
    return a, b


def _table_sigmas(table, a: float, b: float) -> tuple[float, float]:
    """a < t < b in sigma: the log-midpoints between the run of table entries inside and their neighbours."""
    sigmas, steps = table
    inside = [i for i, t in enumerate(steps) if a < t < b]
    if not inside:
        return math.inf, -math.inf  # no timestep the model can be fed is inside: nothing is edited
    first, last = inside[0], inside[-1]
    low = -math.inf if first == 0 else _midpoint(sigmas, first - 1)
    high = math.inf if last == len(steps) - 1 else _midpoint(sigmas, last)
    return low, high


def _percent_sigmas(model_sampling, start: float, end: float) -> tuple[float, float]:
    low = -math.inf if start <= 0.0 else float(model_sampling.percent_to_sigma(1.0 - start))
    high = math.inf if end >= 1.0 else float(model_sampling.percent_to_sigma(1.0 - end))
    return low, high


@dataclass(frozen=True)
class Window:
    """The window start*T < t < end*T as one schedule evaluates it.

    on_timestep: compare the integer timestep the model is fed (discrete schedules: the paper's inequality,
    exact even where a scheduler evaluates on the switching point of timestep(), as "normal" does on LCM's
    table); else compare sigma. (low, high): the open interval in that coordinate. (sigma_low, sigma_high):
    the same window in sigma, for messages."""

    on_timestep: bool
    low: float
    high: float
    sigma_low: float
    sigma_high: float

    def contains(self, sigma: float, timestep: float) -> bool:
        x = timestep if self.on_timestep else sigma
        return self.low < x < self.high


def window_for(model_sampling, start: float, end: float) -> Window:
    """The window on model_sampling's schedule (its timestep table read once)."""
    table = _timestep_table(model_sampling)
    if table is None:
        low, high = _percent_sigmas(model_sampling, start, end)
        return Window(False, low, high, low, high)
    a, b = _timestep_bounds(table, start, end)
    return Window(True, a, b, *_table_sigmas(table, a, b))


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
