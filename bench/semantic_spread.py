"""The attention input's statistics along edit directions on the demo model, through the pack's own
probe (sae_patches/input_probe.py; the statistics are sae_math/spread.py's: token_norm, rms, std, mean,
row_rms per layer and direction, over the evaluations inside the window)."""

from __future__ import annotations


def measure(ctx, directions: dict, noise, texts, start: float = 0.5, end: float = 0.8) -> dict:
    """Sample the unedited model once with the probe on a clone; the statistics of `directions`
    (layer key -> (m, d)) over the evaluations inside start*T < t < end*T."""
    import semantic_common as sc

    families = sc.pack("sae_patches.families")
    probe_mod = sc.pack("sae_patches.input_probe")
    m = ctx.model.clone()
    probe = probe_mod.install_spread_probe(m, families.adapter_for(m, "semantic benchmark"), directions, start, end)
    sc.render(ctx, m, noise, texts)
    return probe.result()
