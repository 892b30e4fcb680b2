"""Deterministic inversion of a latent: Euler (= DDIM, eta 0, for eps-models) over the flipped sigma
schedule, recording the trajectory. Uses ComfyUI's own sampler machinery (sample_custom + KSAMPLER)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Euler cannot step from sigma = 0 (it divides by sigma); core's FlipSigmas uses the same floor.
SIGMA_FLOOR = 1e-4


@dataclass(frozen=True)
class Inversion:
    """sigmas (S+1,) ascending; latents (S+1, N, C, H, W): x at each sigma, in the model's working space
    (after process_latent_in), as the sampler sees it. steps/scheduler: what the forward pass must use."""

    sigmas: torch.Tensor
    latents: torch.Tensor
    steps: int
    scheduler: str

    def __deepcopy__(self, memo):
        return self


def forward_sigmas(model, scheduler: str, steps: int) -> torch.Tensor:
    import comfy.samplers

    return comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), scheduler, steps).cpu()


def invert(model, positive, latent: torch.Tensor, steps: int, scheduler: str, cfg: float = 1.0,
           negative=None) -> tuple[torch.Tensor, Inversion]:
    """Returns (noise latent at sigma_max in LATENT space, the recorded Inversion)."""
    import comfy.sample
    import comfy.samplers

    sigmas = forward_sigmas(model, scheduler, steps).flip(0).clone()
    sigmas[0] = max(float(sigmas[0]), SIGMA_FLOOR)
    trajectory: list[torch.Tensor] = []

    def callback(step, denoised, x, total):
        import comfy.model_management

        comfy.model_management.throw_exception_if_processing_interrupted()
        trajectory.append(x.detach().cpu().clone())

    latent = comfy.sample.fix_empty_latent_channels(model, latent)
    noise = torch.zeros_like(latent)
    sampler = comfy.samplers.sampler_object("euler")
    out = comfy.sample.sample_custom(model, noise, cfg, sampler, sigmas, positive, negative or positive, latent,
                                     callback=callback, disable_pbar=True, seed=0)
    final = model.model.process_latent_in(out)
    trajectory.append(final.detach().cpu().clone())
    return out, Inversion(sigmas.double(), torch.stack(trajectory), steps, scheduler)
