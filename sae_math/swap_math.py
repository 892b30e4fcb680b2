"""Free-Prompt-Editing's self-attention map swap, fused (pure torch, no ComfyUI).

Batch layout used by the pack: the latent batch holds N source/target pairs interleaved,
[s_1, t_1, s_2, t_2, ...] (B = 2N). A UNet call stacks chunks of that batch (cond/uncond), so row r is
chunk r // B, latent element e = r % B, and e is a target when e is odd; its source is row r - 1.

Swapping the map softmax(Q_s K_s^T / sqrt(d)) applied to the target's own values V_t equals ordinary
attention with the source's q and k and the target's v, so the swap is just a row copy of q and k before
the usual fused attention: no map is materialised, nothing is stored between layers.
"""

from __future__ import annotations

import torch


def pair_rows(rows: int, chunk_kinds: list, edit_kinds: set) -> tuple[list[int], list[int]]:
    """(target rows, their source rows) of one UNet call, for the chunks whose kind is in edit_kinds.
    chunk_kinds has one entry per chunk: its cond_or_uncond value, its role ("positive", ...), or a flag.
    Raises ValueError if the batch is not made of pairs."""
    chunks = len(chunk_kinds)
    if chunks == 0 or rows % chunks:
        raise ValueError(f"{rows} rows do not split into {chunks} cond/uncond chunks")
    batch = rows // chunks
    if batch % 2:
        raise ValueError(
            f"the latent batch has {batch} elements, which cannot be split into source/target pairs; "
            "make the latent with 'Make Source/Target Pairs' (2 elements per pair)")
    targets, sources = [], []
    for c, kind in enumerate(chunk_kinds):
        if kind not in edit_kinds:
            continue
        for e in range(1, batch, 2):
            targets.append(c * batch + e)
            sources.append(c * batch + e - 1)
    return targets, sources


def row_index(rows: int, targets: list[int], sources: list[int]) -> list[int]:
    """Gather index of the row copy of q and k: row r reads row index[r] (targets read their sources,
    others themselves). One index_select with it is a single copy, no clone-then-overwrite."""
    index = list(range(rows))
    for t, s in zip(targets, sources):
        index[t] = s
    return index


def explicit_swapped_attention(q, k, v, heads: int, targets: list[int], sources: list[int]) -> torch.Tensor:
    """Reference (the way FPE's code does it): build every attention map, give the target rows the source
    rows' maps, multiply by each row's own values. Materialises (rows, heads, tokens, tokens)."""
    rows, tokens, inner = q.shape
    d = inner // heads

    def split(x):
        return x.reshape(rows, -1, heads, d).transpose(1, 2).float()

    qh, kh, vh = split(q), split(k), split(v)
    maps = torch.softmax(qh @ kh.transpose(-1, -2) / d**0.5, dim=-1)
    if targets:
        maps = maps.clone()
        maps[torch.tensor(targets)] = maps[torch.tensor(sources)]
    out = maps @ vh
    return out.transpose(1, 2).reshape(rows, tokens, inner).to(v.dtype)


def sigma_in_window(sigma: float, sigma_low: float, sigma_high: float) -> bool:
    """Whether a model evaluation at noise level sigma lies in the window sigma_low < sigma <= sigma_high
    (the bounds from model_sampling.percent_to_sigma(end) and (start)). A relative slack of 1e-5 absorbs
    float32 rounding, so an evaluation at exactly a bound's sigma counts as at the bound: in at the top,
    out at the bottom."""
    slack = 1.0 + 1e-5
    return sigma_low * slack < sigma <= sigma_high * slack
