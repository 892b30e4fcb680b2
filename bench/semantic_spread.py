"""The attention input's statistics along edit directions, recorded by an attn1_patch probe on a clone.

For every layer and every probed direction n (unit, (d,)), over the model evaluations inside a window:
  token_norm   mean over rows of the mean token norm ||z|| (what 'relative to token norm' multiplies)
  rms          sqrt(E[(z . n)^2]) over all tokens, rows and evaluations (the paper's whitening: 1)
  std          the standard deviation of z . n over the same (centred: the spread of the coordinate)
  mean         E[z . n]
  row_rms      mean over rows of sqrt(mean over the row's tokens of (z . n)^2): what the
               'relative to spread along n' scale multiplies alpha by, row by row
z is the attn1 input (rows, tokens, d) as the pack's own patch sees it."""

from __future__ import annotations

import numpy as np


class SpreadProbe:
    """attn1_patch recording the statistics above; returns its inputs unchanged (nothing is edited).

    directions: layer key -> (m, d) float32 rows (unit vectors). window: direction_window.Window of the
    model's schedule; only evaluations inside it are recorded."""

    def __init__(self, directions: dict, window, model_sampling, layer_key):
        self.directions = directions
        self.window = window
        self.model_sampling = model_sampling
        self.layer_key = layer_key
        self.sums: dict = {}

    def __deepcopy__(self, memo):
        return self  # the recording must survive ComfyUI's copies of model_options

    def __call__(self, n, context_attn1, value_attn1, extra_options):
        import torch

        key = self.layer_key(extra_options)
        vectors = self.directions.get(key)
        sigmas = extra_options.get("sigmas")
        if vectors is None or sigmas is None:
            return n, context_attn1, value_attn1
        sigma = float(sigmas.max())
        t = float(self.model_sampling.timestep(sigmas.max().reshape(1)).item())
        if not self.window.contains(sigma, t):
            return n, context_attn1, value_attn1
        z = n.float()  # (rows, tokens, d)
        p = z @ vectors.T.to(z)  # (rows, tokens, m)
        s = self.sums.setdefault(key, {"count": 0, "sum": 0.0, "sq": 0.0, "rows": 0, "row_rms": 0.0,
                                       "token_norm": 0.0})
        s["count"] += p.shape[0] * p.shape[1]
        s["sum"] = s["sum"] + p.sum(dim=(0, 1)).double()
        s["sq"] = s["sq"] + p.square().sum(dim=(0, 1)).double()
        s["rows"] += p.shape[0]
        s["row_rms"] = s["row_rms"] + p.square().mean(dim=1).sqrt().sum(dim=0).double()
        s["token_norm"] += float(torch.linalg.vector_norm(z, dim=-1).mean(dim=-1).sum())
        return n, context_attn1, value_attn1

    def result(self) -> dict:
        """layer key -> {token_norm, rms (m,), std (m,), mean (m,), row_rms (m,)} as lists."""
        out = {}
        for key, s in self.sums.items():
            mean = (s["sum"] / s["count"]).numpy()
            sq = (s["sq"] / s["count"]).numpy()
            out[key] = {"token_norm": s["token_norm"] / s["rows"], "rms": np.sqrt(sq).tolist(),
                        "std": np.sqrt(np.maximum(sq - mean**2, 0)).tolist(), "mean": mean.tolist(),
                        "row_rms": (s["row_rms"] / s["rows"]).numpy().tolist()}
        return out


def measure(ctx, directions: dict, noise, texts, start: float = 0.5, end: float = 0.8) -> dict:
    """Sample the unedited model once with the probe on a clone; the statistics of `directions`
    (layer key -> (m, d)) over the evaluations inside start*T < t < end*T."""
    import semantic_common as sc

    window_mod = sc.pack("sae_math.direction_window")
    patch_mod = sc.pack("sae_patches.direction_patch")
    sampling = ctx.model.get_model_object("model_sampling")
    probe = SpreadProbe(directions, window_mod.window_for(sampling, start, end), sampling, patch_mod.layer_key)
    m = ctx.model.clone()
    m.set_model_attn1_patch(probe)
    sc.render(ctx, m, noise, texts)
    return probe.result()
