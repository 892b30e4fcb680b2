"""DDIM inversion of a latent in ComfyUI's sigma parameterisation, recording the trajectory.

The forward deterministic Euler step from sigma_hi down to sigma_lo (DDIM, eta 0, for eps-models) is
    x_lo = x_hi + (sigma_lo - sigma_hi) * e(x_hi, sigma_hi),   e(x, s) = (x - D(x, s)) / s,
D being the model's denoised output (ComfyUI's samplers work on x = x0 + sigma * n). Inverting it needs
e(x_hi, sigma_hi), but x_hi is what we solve for; DDIM inversion (FPE's and MasaCtrl's `next_step`)
evaluates the model at the level the forward step will use, sigma_hi, on the known point:
    x_hi = x_lo + (sigma_hi - sigma_lo) * e(x_eval, sigma_hi).
The first step, from sigma 0, therefore evaluates at sigma_1: no division by 0, and no noise level the
forward pass never visits. Euler over the flipped schedule (this module's old behaviour) evaluates at
sigma_lo instead, a level off from the step it undoes.

Which point x_eval stands in for x_hi: FPE/MasaCtrl feed the UNet their variance-preserving latent at
t_lo, i.e. the UNet sees x_lo * c_in(sigma_lo) with timestep t_hi. In ComfyUI's variance-exploding x that
is x_eval = x_lo * c_in(sigma_lo) / c_in(sigma_hi) (c_in = model_sampling.calculate_input; for SD
1 / sqrt(sigma^2 + 1)), so the UNet gets exactly their input and e is exactly their eps. Feeding x_lo
itself at sigma_hi (the literal "x_hi ~ x_lo") shows the model an input with sigma_lo/sigma_hi of the
noise it expects at that level: it predicts too little noise and the inversion falls short (on the demo
model, 4 images, 20 steps: unpinned latent error 0.36 against 0.27 with x_eval as here).

Why one formula serves every prediction type (D comes from ComfyUI's model wrapper whatever the model
predicts):
  - eps-models: e is the predicted noise: DDIM inversion exactly.
  - v-prediction (SD2-v): e = (x_eval - D)/sigma_hi = sqrt(1 - a) x_vp + sqrt(a) v, the eps DDIM derives
    from v at t_hi: DDIM inversion for v-models too.
  - rectified flow (CONST): not this step. With c_in = 1 it would read the velocity v(x_lo, sigma_hi),
    a point of one level in the velocity field of another, which is not exact even when the flow's paths
    are straight. Flow models get the flow ODE run backwards instead (sae_math/flow_inversion.py: Euler
    over the flipped schedule, v at the point and level we have, the first step from sigma 0 solved as
    the exact inverse of the forward's last step); `invert` picks it from the model_sampling.

The model runs through ComfyUI's own sampling (sample_custom -> CFGGuider -> a KSAMPLER with the sampler
function below), so cfg, patches, wrappers and model loading work as in sampling. The math at the top
needs only torch."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from ..sae_math.flow_inversion import first_step_bound, flow_inversion_step, invert_first_step, velocity

NODE = "Invert Latent (DDIM)"
# Model evaluations at most for a flow model's first inversion step (Anderson-accelerated fixed point;
# it stops earlier once converged, see invert_first_step).
FLOW_FIRST_STEP_ITERATIONS = 12


def eval_point(x_lo: torch.Tensor, c_in_lo, c_in_hi) -> torch.Tensor:
    """The x the model is evaluated at, at sigma_hi, for the step from sigma_lo: scaled so the UNet input
    x_eval * c_in_hi is x_lo * c_in_lo, the latent DDIM inversion feeds the UNet (module docstring)."""
    return x_lo * (c_in_lo / c_in_hi)


def inversion_step(x_lo: torch.Tensor, x_eval: torch.Tensor, denoised_hi: torch.Tensor, sigma_lo, sigma_hi):
    """x at sigma_hi (> 0) from x at sigma_lo, given D(x_eval, sigma_hi). Any shape; sigmas scalars."""
    eps = (x_eval - denoised_hi) / sigma_hi
    return x_lo + (sigma_hi - sigma_lo) * eps


def forward_step(x_hi: torch.Tensor, denoised_hi: torch.Tensor, sigma_hi, sigma_lo) -> torch.Tensor:
    """ComfyUI's euler step sigma_hi -> sigma_lo (DDIM eta 0), the step inversion_step undoes."""
    return x_hi + (sigma_lo - sigma_hi) * (x_hi - denoised_hi) / sigma_hi


@dataclass(frozen=True)
class Inversion:
    """sigmas (S+1,) ascending, float64, sigmas[0] the forward schedule's last value (0);
    latents (S+1, N, C, H, W): x at each sigma, in the model's working space (after process_latent_in), as
    the sampler sees it. steps/scheduler: what the forward pass must use. cfg: the inversion's guidance."""

    sigmas: torch.Tensor
    latents: torch.Tensor
    steps: int
    scheduler: str
    cfg: float = 1.0

    def __deepcopy__(self, memo):
        return self

    def check_schedule(self, sample_sigmas) -> str | None:
        """None when the forward sampling's schedule (transformer_options["sample_sigmas"]: descending,
        S+1 values) is the flipped inversion schedule; otherwise an error message saying what differs.
        A pinned source is only the recorded image when both runs visit the same sigmas."""
        forward = torch.as_tensor(sample_sigmas).detach().double().cpu().flatten()
        expected = self.sigmas.flip(0)
        if forward.shape == expected.shape and torch.allclose(forward, expected, rtol=1e-4, atol=1e-6):
            return None
        if forward.numel() == 0:
            return f"{NODE}: the sampler's schedule is empty"
        return (f"{NODE}: the inversion was recorded with steps={self.steps}, scheduler '{self.scheduler}' "
                f"({expected.numel()} sigmas, {expected[0].item():.4g} -> {expected[-1].item():.4g}), but the "
                f"sampler runs {forward.numel()} sigmas, {forward[0].item():.4g} -> {forward[-1].item():.4g}: "
                f"sample with the same model, steps={self.steps} and scheduler '{self.scheduler}', denoise 1.0, "
                "start_at_step 0, and add_noise disabled")


def forward_sigmas(model, scheduler: str, steps: int) -> torch.Tensor:
    """The descending schedule (steps+1,) a KSampler with these settings runs, on the CPU."""
    import comfy.samplers

    return comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), scheduler, steps).cpu()


def _c_in(model_sampling, sigma: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """calculate_input's scale at sigma (the model's own, so EDM / flow / patched samplings are right)."""
    return model_sampling.calculate_input(sigma.reshape(1), torch.ones_like(like[:1])).to(like)


def _sampler_function(trajectory: list[torch.Tensor], progress, model_sampling):
    """A k-diffusion style sampler function for comfy.samplers.KSAMPLER running inversion_step over the
    ascending sigmas it is given; appends x at every sigma (on the CPU) to trajectory."""
    import comfy.model_management

    @torch.no_grad()
    def sample_ddim_inversion(model, x, sigmas, extra_args=None, callback=None, disable=None):
        extra_args = {} if extra_args is None else extra_args
        s_in = x.new_ones([x.shape[0]])
        trajectory.append(x.detach().cpu().clone())
        for i in range(len(sigmas) - 1):
            comfy.model_management.throw_exception_if_processing_interrupted()
            lo, hi = sigmas[i], sigmas[i + 1]
            x_eval = eval_point(x, _c_in(model_sampling, lo, x), _c_in(model_sampling, hi, x))
            denoised = model(x_eval, hi * s_in, **extra_args)
            if callback is not None:
                callback({"x": x, "i": i, "sigma": hi, "sigma_hat": hi, "denoised": denoised})
            x = inversion_step(x, x_eval, denoised, lo, hi)
            trajectory.append(x.detach().cpu().clone())
            progress.update(1)
        return x

    return sample_ddim_inversion


def _flow_sampler_function(trajectory: list[torch.Tensor], progress, report: dict):
    """The sampler function for CONST (rectified-flow) models: the flow ODE integrated from sigma 0
    upwards (sae_math/flow_inversion.py). report gets the first step's fixed-point evaluations and
    residual (logged by invert)."""
    import comfy.model_management

    @torch.no_grad()
    def sample_flow_inversion(model, x, sigmas, extra_args=None, callback=None, disable=None):
        extra_args = {} if extra_args is None else extra_args
        s_in = x.new_ones([x.shape[0]])
        trajectory.append(x.detach().cpu().clone())
        for i in range(len(sigmas) - 1):
            comfy.model_management.throw_exception_if_processing_interrupted()
            lo, hi = sigmas[i], sigmas[i + 1]
            if lo > 0:
                denoised = model(x, lo * s_in, **extra_args)
                x_new = flow_inversion_step(x, velocity(x, denoised, lo), lo, hi)
            else:
                # v cannot be read at sigma 0 (D = x there): solve the forward's last step instead.
                seen: list[torch.Tensor] = []

                def velocity_at(point, hi=hi, seen=seen):
                    d = model(point, hi * s_in, **extra_args)
                    seen.append(d)
                    return velocity(point, d, hi)

                x_new, used, residual = invert_first_step(x, hi, velocity_at, FLOW_FIRST_STEP_ITERATIONS)
                report.update(evaluations=used, residual=residual, bound=first_step_bound(x), sigma_1=float(hi),
                              steps=len(sigmas) - 1)
                denoised = seen[-1]
            if callback is not None:
                callback({"x": x, "i": i, "sigma": hi, "sigma_hat": hi, "denoised": denoised})
            x = x_new
            trajectory.append(x.detach().cpu().clone())
            progress.update(1)
        return x

    return sample_flow_inversion


def is_flow(model_sampling) -> bool:
    """Whether a model_sampling is rectified flow (CONST: x = (1 - sigma) x0 + sigma n, velocity output)."""
    import comfy.model_sampling

    return isinstance(model_sampling, comfy.model_sampling.CONST)


def invert(model, positive, latent: torch.Tensor, steps: int, scheduler: str, cfg: float = 1.0,
           negative=None) -> tuple[torch.Tensor, Inversion]:
    """Invert `latent` (LATENT space, (N, C, H, W)) over the schedule `steps`/`scheduler` of `model`: DDIM
    inversion on eps/v models, the reversed flow ODE on rectified-flow (CONST) models.
    Returns (x at sigma_max in LATENT space, the recorded Inversion). negative: needed when cfg != 1."""
    import comfy.sample
    import comfy.samplers
    import comfy.utils

    sigmas = forward_sigmas(model, scheduler, steps).flip(0).contiguous()  # (S+1,) ascending from 0
    trajectory: list[torch.Tensor] = []
    progress = comfy.utils.ProgressBar(len(sigmas) - 1)
    model_sampling = model.get_model_object("model_sampling")
    report: dict = {}
    if is_flow(model_sampling):
        sampler = comfy.samplers.KSAMPLER(_flow_sampler_function(trajectory, progress, report))
    else:
        sampler = comfy.samplers.KSAMPLER(_sampler_function(trajectory, progress, model_sampling))
    latent = comfy.sample.fix_empty_latent_channels(model, latent)
    noise = torch.zeros_like(latent)  # noise_scaling at sigma 0 keeps the latent as it is
    comfy.sample.sample_custom(model, noise, cfg, sampler, sigmas, positive,
                               positive if negative is None else negative, latent, disable_pbar=True, seed=0)
    # The output is taken from the trajectory, not from sample_custom's return value: KSAMPLER applies
    # inverse_noise_scaling at the last sigma, which divides by (1 - sigma) = 0 for flow models at sigma 1.
    if report:
        log = logging.getLogger("self_attention_edit")
        if report["residual"] <= report["bound"]:
            log.info("%s: flow model; first step solved in %d evaluation(s), residual %.3g", NODE,
                     report["evaluations"], report["residual"])
        else:
            log.warning(
                "%s: the first inversion step (sigma 0 -> %.4g) did not converge in %d model evaluations: "
                "residual %.3g (max abs, in the sampler's latent space). A source pinned to this inversion comes back off by that "
                "much at the last step; more steps (a smaller first sigma; now %d steps) usually fix it.",
                NODE, report["sigma_1"], report["evaluations"], report["residual"], report["steps"])
    latents = torch.stack(trajectory)
    noise_out = model.model.process_latent_out(latents[-1].to(latent.device)).to(latent)
    return noise_out, Inversion(sigmas.double(), latents, steps, scheduler, float(cfg))


FLOW_START_WRAPPER_KEY = "self_attention_edit.flow_start"


class FlowStartFromLatent:
    """WrappersMP.SAMPLER_SAMPLE wrapper for sampling forward from an inverted latent on a rectified-flow
    model. KSAMPLER starts at model_sampling.noise_scaling(sigma_max, noise, latent), which on CONST is
    sigma_max * noise + (1 - sigma_max) * latent: at sigma_max = 1 (Flux, SD3, Qwen, Z-Image schedules)
    the latent is multiplied by 0, so "add_noise disabled" starts from zeros, not from the inversion.
    With a zero noise (add_noise disabled) on a CONST model this passes the latent as the noise too, so
    the sampler starts at noise_scaling(s, L, L) = L exactly, for any sigma_max; any other sampling is
    left as it is. One host read per sampling run. Immutable."""

    def __deepcopy__(self, memo):
        return self

    def __call__(self, executor, guider, sigmas, extra_args, callback, noise, latent_image, *args, **kwargs):
        sampling = getattr(getattr(guider, "inner_model", None), "model_sampling", None)
        if (latent_image is not None and sampling is not None and is_flow(sampling)
                and noise.shape == latent_image.shape and not bool(noise.any())):
            noise = latent_image.to(noise)
        return executor(guider, sigmas, extra_args, callback, noise, latent_image, *args, **kwargs)


def install_flow_start(model) -> bool:
    """Put FlowStartFromLatent on `model` (a clone the caller owns) when its model_sampling is rectified
    flow; one per model however often it is called. Returns whether it was installed."""
    import comfy.patcher_extension as pe

    if not is_flow(model.get_model_object("model_sampling")):
        return False
    model.remove_wrappers_with_key(pe.WrappersMP.SAMPLER_SAMPLE, FLOW_START_WRAPPER_KEY)
    model.add_wrapper_with_key(pe.WrappersMP.SAMPLER_SAMPLE, FLOW_START_WRAPPER_KEY, FlowStartFromLatent())
    return True
