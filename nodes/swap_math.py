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


def pair_rows(rows: int, cond_or_uncond: list[int], edit_chunks: set[int]) -> tuple[list[int], list[int]]:
    """(target rows, their source rows) of one UNet call, for the chunks whose cond_or_uncond value is in
    edit_chunks (0 = positive, 1 = negative). Raises ValueError if the batch is not made of pairs."""
    chunks = len(cond_or_uncond)
    if chunks == 0 or rows % chunks:
        raise ValueError(f"{rows} rows do not split into {chunks} cond/uncond chunks")
    batch = rows // chunks
    if batch % 2:
        raise ValueError(
            f"the latent batch has {batch} elements, which cannot be split into source/target pairs; "
            "make the latent with 'Make Source/Target Pairs' (2 elements per pair)")
    targets, sources = [], []
    for c, kind in enumerate(cond_or_uncond):
        if kind not in edit_chunks:
            continue
        for e in range(1, batch, 2):
            targets.append(c * batch + e)
            sources.append(c * batch + e - 1)
    return targets, sources


def copy_rows(x: torch.Tensor, targets: list[int], sources: list[int]) -> torch.Tensor:
    """A new tensor whose target rows are x's source rows (x itself when there is nothing to copy).
    One gather (row r reads row index[r]): a single copy, no clone-then-overwrite."""
    if not targets:
        return x
    index = list(range(x.shape[0]))
    for t, s in zip(targets, sources):
        index[t] = s
    return x.index_select(0, torch.tensor(index, device=x.device))


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


def step_window_active(sigma: float, sample_sigmas, start: float, end: float) -> bool:
    """Whether a model evaluation at `sigma` lies in steps [start*S, end*S) of the schedule
    sample_sigmas (S+1 values, descending). Works for intermediate sigmas of multi-evaluation samplers:
    step i covers sigma in (sigma_{i+1}, sigma_i]."""
    steps = len(sample_sigmas) - 1
    if steps <= 0:
        return True
    first = int(round(start * steps))
    stop = int(round(end * steps))
    if first >= stop:
        return False
    hi = float(sample_sigmas[first])
    lo = float(sample_sigmas[stop])
    return lo < sigma <= hi * (1 + 1e-6)
