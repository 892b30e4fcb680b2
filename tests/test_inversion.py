"""Invert Latent (DDIM): DDIM inversion through ComfyUI's own sampling (CFGGuider, KSAMPLER), checked
against toy models whose inverse is known, on tiny real UNets, and for its errors, progress and interrupts."""

from __future__ import annotations

import pytest
import torch

import testbed


def inversion(sae):
    return sae("sae_patches.inversion")


def node(sae):
    return sae("nodes.node_invert").InvertLatent


def forward(model, positive, noise, steps, scheduler="normal", cfg=1.0, negative=None, sigmas=None):
    """ComfyUI's euler from the inverted latent, no noise added (KSamplerAdvanced add_noise disable)."""
    import comfy.sample
    import comfy.samplers

    if sigmas is None:
        sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), scheduler, steps)
    return comfy.sample.sample_custom(model, torch.zeros_like(noise), cfg, comfy.samplers.sampler_object("euler"),
                                      sigmas, positive, positive if negative is None else negative, noise,
                                      disable_pbar=True, seed=0)


def euler_flip_inversion(sae, model, positive, latent, steps, scheduler="normal"):
    """The pack's previous inversion, kept as the reference: ComfyUI's euler over the flipped schedule,
    from a floor of 1e-4 (euler divides by sigma), i.e. the model evaluated at the lower level."""
    sigmas = inversion(sae).forward_sigmas(model, scheduler, steps).flip(0).clone()
    sigmas[0] = 1e-4
    return forward(model, positive, latent, steps, sigmas=sigmas)


class ToyEps(torch.nn.Module):
    """Stand-in for the UNet (an object patch on diffusion_model, so the real BaseModel, sampler, guider
    and model loading run around it): eps(x_in, t) = slope * x_in + (t / 1000) * pattern.
    With slope 0 the forward ODE's velocity depends on sigma only, so a forward euler step and an inversion
    step that evaluate at the same sigma cancel exactly, at any step count."""

    def __init__(self, pattern: torch.Tensor, slope: float):
        super().__init__()
        self.register_buffer("pattern", pattern)  # (1, C, H, W)
        self.slope = slope
        self.dtype = torch.float32

    def forward(self, x, timesteps, context=None, control=None, transformer_options=None, **kwargs):
        g = (timesteps.float() / 1000.0).reshape(-1, 1, 1, 1)
        return self.slope * x + g * self.pattern.to(x)


def toy_model(slope: float):
    model = testbed.tiny_model("sd15").clone()
    pattern = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(11))
    model.add_object_patch("diffusion_model", ToyEps(pattern, slope))
    return model


def image_latent(seed=5, batch=1):
    return torch.randn(batch, 4, 16, 16, generator=torch.Generator().manual_seed(seed))


def rel_error(a, b) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("steps", [4, 20])
def test_toy_sigma_only_velocity_inverts_exactly_and_euler_flip_does_not(sae, steps):
    """Model eps = (t/1000) * pattern: DDIM inversion then forward euler (no pinning) returns the input to
    float precision at any step count, because each inversion step evaluates at the sigma of the forward
    step it undoes; the old euler-over-the-flipped-schedule is off by a whole step's change of eps."""
    model = toy_model(0.0)
    pos = testbed.tiny_conditioning("sd15", 1)
    x0 = image_latent()
    noise, inv = inversion(sae).invert(model, pos, x0, steps, "normal")
    assert inv.sigmas.shape == (steps + 1,) and inv.latents.shape == (steps + 1, 1, 4, 16, 16)
    assert inv.sigmas[0] == 0 and torch.all(inv.sigmas[1:] > inv.sigmas[:-1])
    err = rel_error(forward(model, pos, noise, steps), x0)
    old = rel_error(forward(model, pos, euler_flip_inversion(sae, model, pos, x0, steps), steps), x0)
    assert err < 1e-5, err
    assert old > 1000 * max(err, 1e-7), (old, err)


def test_toy_linear_model_reconstruction_converges_with_steps(sae):
    """Model eps = 0.1 * x_in + (t/1000) * pattern (x-dependent): inversion then forward euler, no pinning,
    reconstructs the input to within 1% of the distance the inversion travelled (|noise - input|) at 100
    steps, and the error falls at least in proportion to the step size (first order: 20 -> 100 steps
    divides it by >= 4)."""
    model = toy_model(0.1)
    pos = testbed.tiny_conditioning("sd15", 1)
    x0 = image_latent()
    errors = {}
    for steps in (20, 100):
        noise, _ = inversion(sae).invert(model, pos, x0, steps, "normal")
        errors[steps] = ((forward(model, pos, noise, steps) - x0).norm() / (noise - x0).norm()).item()
    assert errors[100] < 0.01, errors
    assert errors[100] < errors[20] / 4, errors


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_steps_are_ddim_inversion_next_step_on_a_real_unet(sae, prediction):
    """On tiny real UNets (SD1.5 eps; SD2.x with core's v_prediction model sampling), every recorded step
    equals an independent implementation of FPE's / MasaCtrl's DDIM inversion (`next_step`: variance-
    preserving latents, the UNet called on x_lo at the higher timestep; for v, eps = sqrt(a) v + sqrt(1-a) x
    at that timestep), and the model is evaluated exactly at the forward schedule's nonzero sigmas, once
    each, never at 0 or a floor."""
    import comfy.model_sampling as ms
    import comfy.patcher_extension as pe

    family = "sd15" if prediction == "eps" else "sd20"
    model = testbed.tiny_model(family).clone()
    if prediction == "v":
        class VSampling(ms.ModelSamplingDiscrete, ms.V_PREDICTION):
            pass
        model.add_object_patch("model_sampling", VSampling(model.model.model_config))
    sampling = model.get_model_object("model_sampling")
    evaluated = []

    def record(executor, x, t, *args, **kwargs):
        evaluated.append(float(t[0]))
        return executor(x, t, *args, **kwargs)

    model.add_wrapper_with_key(pe.WrappersMP.APPLY_MODEL, "test.sigma_probe", record)
    pos = testbed.tiny_conditioning(family, 1)
    x0, steps = image_latent(), 5
    _, inv = inversion(sae).invert(model, pos, x0, steps, "normal")
    schedule = inversion(sae).forward_sigmas(model, "normal", steps)
    assert evaluated == pytest.approx(schedule[:-1].flip(0).tolist(), rel=1e-6)

    # Step by step from the recorded latents: a random UNet is so sensitive to its input (peaked attention)
    # that float rounding differences of 1e-6 compound to 10% over a chain, whoever computes it.
    sig = inv.sigmas.float()
    assert torch.equal(inv.latents[0], model.model.process_latent_in(x0))
    with torch.no_grad():
        for i, (lo, hi) in enumerate(zip(sig[:-1], sig[1:])):
            a_lo, a_hi = 1 / (1 + lo**2), 1 / (1 + hi**2)
            x = inv.latents[i] * a_lo.sqrt()  # the variance-preserving latent at the lower level
            out = model.model.diffusion_model(x, sampling.timestep(hi.reshape(1)).float(), context=pos[0][0])
            eps = out if prediction == "eps" else a_hi.sqrt() * out + (1 - a_hi).sqrt() * x
            pred_x0 = (x - (1 - a_lo).sqrt() * eps) / a_lo.sqrt()
            x_next = a_hi.sqrt() * pred_x0 + (1 - a_hi).sqrt() * eps
            # back to ComfyUI's x = x0 + sigma * n
            assert rel_error(inv.latents[i + 1], x_next / a_hi.sqrt()) < 1e-3, i


def test_cfg_above_one_runs_and_differs_from_cfg_one(sae):
    """With cfg 3 and a negative prompt the node runs the guided model (uncond and cond rows), gives a
    finite latent different from cfg 1's, and records its cfg; cfg != 1 without a negative is refused
    before any model call, naming the input."""
    model = testbed.tiny_model("sd15")
    pos, neg = testbed.tiny_conditioning("sd15", 1), testbed.tiny_conditioning("sd15", 2)
    latent = {"samples": image_latent()}
    plain, inv1 = node(sae).execute(model, pos, latent, 4, "normal").args[:2]
    guided, inv3 = node(sae).execute(model, pos, latent, 4, "normal", 3.0, neg).args[:2]
    assert torch.isfinite(guided["samples"]).all()
    assert (guided["samples"] - plain["samples"]).abs().mean() > 1e-3
    assert inv1.cfg == 1.0 and inv3.cfg == 3.0
    errors = sae("sae_math.errors")
    with pytest.raises(errors.NodeInputError, match="Invert Latent \\(DDIM\\): input 'negative'.*cfg = 3.0"):
        node(sae).execute(model, pos, latent, 4, "normal", 3.0, None)


def test_schedule_check_accepts_the_same_schedule_and_explains_a_different_one(sae):
    """check_schedule(sample_sigmas) is None for the forward sampling with the inversion's steps and
    scheduler (read from transformer_options in a real sampling, as the swap's pin wrapper sees it), and an
    error naming steps and scheduler for other steps, another scheduler or a partial schedule."""
    import comfy.patcher_extension as pe

    inv_mod = inversion(sae)
    model = testbed.tiny_model("sd15")
    pos = testbed.tiny_conditioning("sd15", 1)
    noise, inv = inv_mod.invert(model, pos, image_latent(), 6, "normal")

    seen = []

    def record(executor, x, t, c_concat, c_crossattn, control, transformer_options, *args, **kwargs):
        seen.append(inv.check_schedule(transformer_options["sample_sigmas"]))
        return executor(x, t, c_concat, c_crossattn, control, transformer_options, *args, **kwargs)

    probe = model.clone()
    probe.add_wrapper_with_key(pe.WrappersMP.APPLY_MODEL, "test.schedule_probe", record)
    forward(probe, pos, noise, 6)
    assert seen and all(m is None for m in seen), seen
    forward(probe, pos, noise, 8)
    assert seen[-1] is not None and "steps=6" in seen[-1] and "'normal'" in seen[-1], seen[-1]

    assert inv.check_schedule(inv_mod.forward_sigmas(model, "normal", 6)) is None
    for other in (inv_mod.forward_sigmas(model, "normal", 7), inv_mod.forward_sigmas(model, "karras", 6),
                  inv_mod.forward_sigmas(model, "normal", 6)[2:]):
        message = inv.check_schedule(other)
        assert message and message.startswith("Invert Latent (DDIM): ") and "steps=6" in message, message


def test_progress_is_reported_per_step_and_an_interrupt_stops_the_inversion(sae):
    """Every inversion step reports progress through ComfyUI's progress hook (what the UI's bar shows);
    an interrupt requested during a step raises InterruptProcessingException before the next model call."""
    import comfy.model_management
    import comfy.patcher_extension as pe
    import comfy.utils

    model = testbed.tiny_model("sd15")
    pos = testbed.tiny_conditioning("sd15", 1)
    updates = []
    previous_hook = comfy.utils.PROGRESS_BAR_HOOK
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview=None, node_id=None: updates.append((value, total)))
    try:
        inversion(sae).invert(model, pos, image_latent(), 5, "normal")
    finally:
        comfy.utils.set_progress_bar_global_hook(previous_hook)
    # ComfyUI 0.3.75 calls the hook on every update; 0.33 throttles intermediate ones by time (the first and
    # the final always go through): the bar starts at step 1, only moves forward and ends at step 5 of 5.
    values = [v for v, _ in updates]
    assert updates[0] == (1, 5) and updates[-1] == (5, 5) and {t for _, t in updates} == {5}, updates
    assert values == sorted(set(values)), updates

    calls = []

    def interrupt_after_two(executor, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            comfy.model_management.interrupt_current_processing(True)
        return executor(*args, **kwargs)

    m = model.clone()
    m.add_wrapper_with_key(pe.WrappersMP.APPLY_MODEL, "test.interrupt", interrupt_after_two)
    try:
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            inversion(sae).invert(m, pos, image_latent(), 6, "normal")
    finally:
        comfy.model_management.interrupt_current_processing(False)
    assert len(calls) == 2
