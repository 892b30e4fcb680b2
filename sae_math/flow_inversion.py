"""Inversion of a real image on rectified-flow models (model_sampling CONST: Flux, SD3, Qwen-Image,
Lumina2/Z-Image, AuraFlow), pure torch.

ComfyUI's flow models are x_sigma = (1 - sigma) x_0 + sigma * noise, the network predicts the velocity
v = dx/dsigma, and the model wrapper returns D = x - sigma * v. The forward sampler (euler) steps
    x_lo = x_hi + (sigma_lo - sigma_hi) * v(x_hi, sigma_hi).
The ODE dx/dsigma = v(x, sigma) is the same in both directions, so the inversion is that ODE integrated
upwards: Euler over the flipped schedule,
    x_hi = x_lo + (sigma_hi - sigma_lo) * v(x_lo, sigma_lo),
the velocity read at the point we have, at its own noise level (RF-Inversion's plain inversion). It is
exact for a rectified flow proper, whose paths are straight (v constant along each path, so
v(x_lo, sigma_lo) = v(x_hi, sigma_hi) and each inverted step is undone exactly by the forward one), and
first order otherwise. The DDIM-style step the node uses on eps-models, v(x_lo, sigma_hi), mixes a point
of one level with the velocity field of another: not exact even on straight paths.

The first step starts at sigma 0, where D = x carries no velocity (v = (x - D) / sigma is 0/0), so
there it solves the forward sampler's last step itself, x_1 = x_0 + sigma_1 * v(x_1, sigma_1), by
fixed-point iteration from x_0 (whose first iterate is the DDIM-style step). That makes the first stored
point the exact preimage of the clean latent under the forward's last step: a source pinned to the
trajectory (PinSourceToTrajectory) comes back as the input latent up to the iteration's residual.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def velocity(x: torch.Tensor, denoised: torch.Tensor, sigma) -> torch.Tensor:
    """v from the model wrapper's denoised output on a CONST model: D = x - sigma * v (sigma > 0).
    With cfg, D is the guided one and this the guided velocity (cfg is affine in D and in v alike)."""
    return (x - denoised) / sigma


def flow_inversion_step(x_lo: torch.Tensor, v_lo: torch.Tensor, sigma_lo, sigma_hi) -> torch.Tensor:
    """x at sigma_hi from x at sigma_lo (> 0) and v(x_lo, sigma_lo): Euler over the flipped schedule."""
    return x_lo + (sigma_hi - sigma_lo) * v_lo


def flow_forward_step(x_hi: torch.Tensor, v_hi: torch.Tensor, sigma_hi, sigma_lo) -> torch.Tensor:
    """ComfyUI's euler step sigma_hi -> sigma_lo on a flow model (the step the inversion undoes)."""
    return x_hi + (sigma_lo - sigma_hi) * v_hi


FIRST_STEP_TOLERANCE = 1e-6


def first_step_bound(x_0: torch.Tensor, tolerance: float = FIRST_STEP_TOLERANCE) -> float:
    """The residual at which invert_first_step stops: tolerance * (1 + max |x_0|)."""
    return tolerance * (1.0 + float(x_0.abs().max()))


def invert_first_step(x_0: torch.Tensor, sigma_1, velocity_at: Callable[[torch.Tensor], torch.Tensor],
                      iterations: int = 12, tolerance: float = FIRST_STEP_TOLERANCE, memory: int = 3
                      ) -> tuple[torch.Tensor, int, float]:
    """Solve x_1 = x_0 + sigma_1 * v(x_1, sigma_1) (the forward sampler's last step, inverted): the
    fixed point of g(x) = x_0 + sigma_1 * v(x), by Anderson-accelerated iteration from x_0 (memory: how
    many past steps it mixes; 0 is plain fixed-point iteration, which diverges once sigma_1 times v's
    Lipschitz constant in x exceeds 1, as on coarse schedules of a random network). velocity_at(x):
    v(x, sigma_1), one model evaluation.

    Returns (x_1, evaluations used, max |g(x_1) - x_1|) with x_1 the evaluated point of smallest residual:
    the forward step from it gives x_1 - sigma_1 v(x_1) = x_0 - (g(x_1) - x_1), so the residual is
    exactly how far a source pinned to the trajectory comes back from x_0. Stops once it is at most
    first_step_bound(x_0, tolerance), or after `iterations` evaluations (then the residual says by how
    much it missed: the map is not contractive enough at sigma_1 for the iteration, e.g. the tiny random
    Z-Image of the tests at sigma_1 = 0.058, residual 0.031; a finer schedule, a smaller sigma_1, fixes it:
    1.7e-6 at sigma_1 = 0.021)."""
    bound = first_step_bound(x_0, tolerance)
    shape, dtype = x_0.shape, x_0.dtype
    x = x_0
    xs, fs, gs = [], [], []  # flattened float64 history: points, residuals g(x) - x, images g(x)
    best = (float("inf"), x_0)
    used = 0
    while used < max(1, int(iterations)):
        g = x_0 + sigma_1 * velocity_at(x)
        used += 1
        f = g - x
        residual = float(f.abs().max())
        if residual < best[0]:
            best = (residual, x)
        if residual <= bound:
            break
        xs.append(x.double().flatten())
        fs.append(f.double().flatten())
        gs.append(g.double().flatten())
        del xs[:-(memory + 1)], fs[:-(memory + 1)], gs[:-(memory + 1)]
        if len(fs) == 1:
            x = g
            continue
        # Anderson (type II): the combination of recent g's whose residuals cancel best.
        df = torch.stack([fs[i + 1] - fs[i] for i in range(len(fs) - 1)], dim=1)  # (n, m)
        dg = torch.stack([gs[i + 1] - gs[i] for i in range(len(gs) - 1)], dim=1)
        gamma = torch.linalg.lstsq(df, fs[-1].unsqueeze(1)).solution  # (m, 1)
        x = (gs[-1] - (dg @ gamma).squeeze(1)).reshape(shape).to(dtype)
    return best[1], used, best[0]
