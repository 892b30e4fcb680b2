"""Editing directions from attention weights alone (pure torch, no ComfyUI).

For one self-attention layer with projections Wq, Wk, Wv (torch Linear weights: (inner, d)), a unit
perturbation n of the input Z changes q, k and v by Wq n, Wk n, Wv n. The directions that change them
most are the top eigenvectors of the (d, d) matrix

    C = Wq^T Wq + Wk^T Wk + Wv^T Wv = S^T S,   S = [Wq; Wk; Wv]  (3*inner, d)

and the eigenvalue lambda_i = ||Wq n_i||^2 + ||Wk n_i||^2 + ||Wv n_i||^2.
"""

from __future__ import annotations

import torch

# Two coordinates whose magnitudes agree to this relative tolerance count as tied when choosing the
# sign-defining coordinate (see canonical_sign); the lower index then wins, which is stable across
# machines whose eigensolvers differ in the last bits.
_SIGN_TIE_RTOL = 1e-4


def stacked_projection(wq: torch.Tensor, wk: torch.Tensor, wv: torch.Tensor) -> torch.Tensor:
    """S = [Wq; Wk; Wv], shape (3*inner, d), in float64 (weights often arrive as fp16/bf16)."""
    if not (wq.shape[1] == wk.shape[1] == wv.shape[1]):
        raise ValueError(f"q/k/v weights disagree on the input width: {wq.shape}, {wk.shape}, {wv.shape}")
    return torch.cat([w.detach().to(torch.float64) for w in (wq, wk, wv)], dim=0)


def attention_gram(wq: torch.Tensor, wk: torch.Tensor, wv: torch.Tensor) -> torch.Tensor:
    """C = Wq^T Wq + Wk^T Wk + Wv^T Wv, shape (d, d), float64."""
    s = stacked_projection(wq, wk, wv)
    return s.T @ s


def canonical_sign(vectors: torch.Tensor) -> torch.Tensor:
    """Fix each eigenvector's arbitrary sign: its largest-magnitude coordinate is made positive
    (lowest index among near-ties). vectors: (k, d), one direction per row. Returns a new tensor."""
    mags = vectors.abs()
    top = mags.max(dim=1, keepdim=True).values
    near_top = mags >= top * (1 - _SIGN_TIE_RTOL)
    first = near_top.to(torch.int8).argmax(dim=1)  # first True per row
    signs = torch.sign(vectors.gather(1, first[:, None]))
    signs[signs == 0] = 1
    return vectors * signs


def top_eigenpairs(wq: torch.Tensor, wk: torch.Tensor, wv: torch.Tensor, k: int):
    """Top-k eigenpairs of C for one layer.

    Returns (values (k,), vectors (k, d)), both float32, values descending, vectors orthonormal rows
    with canonical signs. k is clamped to d.
    """
    c = attention_gram(wq, wk, wv)
    k = min(int(k), c.shape[0])
    values, vectors = torch.linalg.eigh(c)  # ascending
    values = values.flip(0)[:k]
    vectors = vectors.flip(1)[:, :k].T.contiguous()
    vectors = canonical_sign(vectors)
    return values.to(torch.float32), vectors.to(torch.float32)
