"""The spread of the attention input along edit directions, measured on any supported family.

The three alpha scales of Apply Latent Direction multiply alpha by a different size: 1 (absolute), the
mean token norm, or the row's RMS of z . n (sae_math/direction_math.py). Which one gives comparable edits
across layers and models is an empirical question (the semantic benchmark answers it on the demo model):
this probe records, for each layer and direction, the statistics of sae_math.spread over the image tokens'
self-attention input at the evaluations inside a window, through the family adapter's
install_input_probe (UNet: an attn1_patch; DiTs: an object patch on the q/k/v Linear). Nothing is edited:
the clone samples exactly as its input model.

    probe = install_spread_probe(clone, adapter, {"double.0": vectors (m, d)}, start=0.5, end=0.8)
    ... sample the clone ...
    probe.result()  # layer key -> {token_norm, rms, std, mean, row_rms, evaluations, tokens}
"""

from __future__ import annotations

import threading

import torch

from ..sae_math.direction_window import window_for
from ..sae_math.spread import SpreadStatistics


class SpreadProbe:
    """The observer: directions (layer key -> (m, d) unit rows), window (direction_window.Window); only
    evaluations inside the window are recorded. Shared by every copy of the model options it sits in."""

    def __init__(self, directions: dict, window):
        self.directions = {k: torch.as_tensor(v).float() for k, v in directions.items()}
        self.window = window
        self.stats: dict[str, SpreadStatistics] = {}
        self._lock = threading.Lock()

    def __deepcopy__(self, memo):
        return self  # the recording must survive ComfyUI's copies of model_options

    def __call__(self, key: str, z: torch.Tensor, sigma: float, t: float) -> None:
        vectors = self.directions.get(key)
        if vectors is None or not self.window.contains(float(sigma), float(t)):
            return
        with self._lock:
            self.stats.setdefault(key, SpreadStatistics()).add(z, vectors)

    def result(self) -> dict:
        return {key: s.result() for key, s in self.stats.items()}


def install_spread_probe(model, adapter, directions: dict, start: float = 0.5, end: float = 0.8) -> SpreadProbe:
    """A SpreadProbe of `directions` on the clone `model` (the caller cloned it), for the evaluations inside
    start*T < t < end*T of its model_sampling (the paper's window by default)."""
    probe = SpreadProbe(directions, window_for(model.get_model_object("model_sampling"), start, end))
    adapter.install_input_probe(model, probe, list(directions))
    return probe


class Attn1InputProbe:
    """attn1_patch (UNets) showing the attn1 input n (rows, tokens, d) of each layer to observer(key, n,
    sigma, t); returns its inputs unchanged. model_sampling: the clone's, for the timestep of sigma."""

    def __init__(self, observer, model_sampling, keys):
        self.observer = observer
        self.model_sampling = model_sampling
        self.keys = frozenset(keys)

    def __deepcopy__(self, memo):
        return self

    def __call__(self, n, context_attn1, value_attn1, extra_options):
        from .direction_patch import layer_key

        key = layer_key(extra_options)
        sigmas = extra_options.get("sigmas")
        if key in self.keys and sigmas is not None:
            sigma = sigmas.max().reshape(1)
            self.observer(key, n, float(sigma), float(self.model_sampling.timestep(sigma).item()))
        return n, context_attn1, value_attn1
