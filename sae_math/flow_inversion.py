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


def invert_first_step(x_0: torch.Tensor, sigma_1, velocity_at: Callable[[torch.Tensor], torch.Tensor],
                      iterations: int = 8, tolerance: float = 1e-6) -> tuple[torch.Tensor, int, float]:
    """Solve x_1 = x_0 + sigma_1 * v(x_1, sigma_1) (the forward sampler's last step, inverted) by fixed
    point iteration from x_0. velocity_at(x): v(x, sigma_1), one model evaluation. Stops when an update
    moves no element by more than tolerance * (1 + max |x_0|), or after `iterations`.
    Returns (x_1, evaluations used, the last update's max |change|). The iteration contracts when
    sigma_1 times v's Lipschitz constant in x is below 1 (sigma_1 is the schedule's smallest level)."""
    bound = tolerance * (1.0 + float(x_0.abs().max()))
    x = x_0
    change = float("inf")
    used = 0
    for used in range(1, max(1, int(iterations)) + 1):
        new = x_0 + sigma_1 * velocity_at(x)
        change = float((new - x).abs().max())
        x = new
        if change <= bound:
            break
    return x, used, change
