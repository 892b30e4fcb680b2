"""The direction edit Z' = Z + alpha * s * n on self-attention inputs (pure torch, no ComfyUI).

Z is the attn1 input of one layer, shape (rows, tokens, d); n a unit direction (d,), the same for
every token. s sets alpha's scale:
  - "relative": s = mean over tokens of ||z_token||_2, per row. alpha is then a fraction of a typical
    token's norm, so the paper's range -0.4..0.4 gives visible, controlled edits on every layer width
    (the input is a LayerNorm output whose token norms are ~sqrt(d), 18 to 36 on SD-family widths).
  - "absolute": s = 1, the paper's literal Z + alpha * n (tiny on real SD features).
  - "spread": s = sqrt(mean over tokens of (z_token . n)^2), per row: the root-mean-square of the input's
    coordinate along n. Under the paper's whitening assumption (E[Z^T Z] ~ I) this is 1 and the paper's
    alpha * n is an offset of alpha standard deviations along n; on real features it keeps that reading,
    whatever the layer's width or the direction's own spread (bench/semantic.py measured why: docs/semantic.md).
"""

from __future__ import annotations

import math

import torch

SCALES = ("relative to token norm", "absolute (paper)", "relative to spread along n")
# The mode each SCALES entry selects in direction_delta (appended options keep saved workflows' values).
SCALE_MODES = {SCALES[0]: "token_norm", SCALES[1]: "absolute", SCALES[2]: "spread"}


def alpha_per_row(alphas: tuple[float, ...], rows: int, chunks: int) -> list[float]:
    """Alpha for each row of one UNet call.

    Rows are chunks (cond/uncond) of the latent batch: row r is latent element r % B, B = rows // chunks.
    One alpha applies to every element; several are assigned to latent elements in order, cycling when
    the batch is a multiple of their count (an alpha sweep, or "0, a" over source/target pairs)."""
    if rows % chunks:
        raise ValueError(f"{rows} rows cannot be split into {chunks} cond/uncond chunks")
    batch = rows // chunks
    if len(alphas) == 1:
        return [alphas[0]] * rows
    if batch % len(alphas):
        raise ValueError(
            f"{len(alphas)} alphas were given but the latent batch has {batch} elements; give one alpha, "
            f"one per batch element, or a count that divides the batch")
    return [alphas[(r % batch) % len(alphas)] for r in range(rows)]


def direction_delta(z: torch.Tensor, direction: torch.Tensor, alphas: torch.Tensor, scale) -> torch.Tensor:
    """The perturbation for each row, shape (rows, 1, d), to add to z (rows, tokens, d).

    direction: (d,) unit vector; alphas: (rows,) (0 for rows outside the edit); scale: "token_norm",
    "absolute" or "spread" (SCALE_MODES; True / False mean "token_norm" / "absolute")."""
    # Few, whole-tensor ops: this runs on every self-attention call, where on small models the per-op
    # dispatch cost is comparable to the arithmetic.
    if scale is True:
        scale = "token_norm"
    elif scale is False:
        scale = "absolute"
    a = alphas.to(z)
    # Norms and projections accumulated in at least float32 (half-precision sums of squares overflow at 65504).
    accumulate = torch.promote_types(z.dtype, torch.float32)
    if scale == "token_norm":
        a = a * torch.linalg.vector_norm(z, dim=-1, dtype=accumulate).mean(dim=-1).to(z.dtype)
    elif scale == "spread":
        coordinate = z.to(accumulate) @ direction.to(device=z.device, dtype=accumulate)  # (rows, tokens)
        a = a * coordinate.square().mean(dim=-1).sqrt().to(z.dtype)
    elif scale != "absolute":
        raise ValueError(f"unknown alpha scale {scale!r}; expected token_norm, absolute or spread")
    return torch.outer(a, direction.to(z)).unsqueeze(1)


def check_alpha(alpha: float) -> float:
    if not math.isfinite(alpha):
        raise ValueError(f"alpha must be a finite number, got {alpha}")
    return float(alpha)


def parse_alphas(text: str) -> tuple[float, ...]:
    """'-0.4, -0.2, 0, 0.2, 0.4' -> floats; 'linspace(-0.4, 0.4, 9)' is accepted too."""
    text = text.strip()
    if text.startswith("linspace(") and text.endswith(")"):
        parts = [p.strip() for p in text[len("linspace("):-1].split(",")]
        if len(parts) != 3:
            raise ValueError(f"linspace needs (start, stop, count), got {text!r}")
        start, stop, count = float(parts[0]), float(parts[1]), int(parts[2])
        if count < 1:
            raise ValueError(f"linspace count must be at least 1, got {count}")
        values = [start + (stop - start) * i / max(count - 1, 1) for i in range(count)]
    else:
        try:
            values = [float(p) for p in text.replace(";", ",").split(",") if p.strip()]
        except ValueError:
            raise ValueError(f"alpha list {text!r} must be numbers separated by commas, e.g. '-0.4, 0, 0.4'") from None
    if not values:
        raise ValueError("the alpha list is empty")
    return tuple(check_alpha(v) for v in values)
