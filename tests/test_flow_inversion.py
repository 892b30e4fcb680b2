"""Invert Latent on rectified-flow models (model_sampling CONST): the flow ODE run backwards
(sae_math/flow_inversion.py, through sae_patches/inversion.invert), exact on a flow with straight paths,
and with the swap's pinning exact on a tiny real DiT."""

from __future__ import annotations

import pytest
import torch

import testbed


def inversion(sae):
    return sae("sae_patches.inversion")


def sae_module(name):
    return testbed.pack_module(name)


def forward(model, positive, noise, steps, scheduler="simple", cfg=1.0, negative=None):
    """ComfyUI's euler from the inverted latent, no noise added (KSamplerAdvanced add_noise disable), with
    FlowStartFromLatent, without which a flow sampler at sigma_max = 1 starts from zeros."""
    import comfy.patcher_extension as pe
    import comfy.sample
    import comfy.samplers

    inv = sae_module("sae_patches.inversion")
    model = model.clone()
    model.add_wrapper_with_key(pe.WrappersMP.SAMPLER_SAMPLE, inv.FLOW_START_WRAPPER_KEY, inv.FlowStartFromLatent())

    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), scheduler, steps)
    return comfy.sample.sample_custom(model, torch.zeros_like(noise), cfg, comfy.samplers.sampler_object("euler"),
                                      sigmas, positive, positive if negative is None else negative, noise,
                                      disable_pbar=True, seed=0)


class StraightFlow(torch.nn.Module):
    """Stand-in for the network (object patch on diffusion_model; the real BaseModel, sampler and guider
    run around it): the velocity of the straight-path flow that carries N(mu, s^2) data to N(0, 1) noise
    by the map z -> mu + s z: x_t = (1 - t)(mu + s z) + t z, so v = (1 - s) z - mu with
    z = (x - (1 - t) mu) / ((1 - t) s + t). Every path is a straight line: a rectified flow proper."""

    def __init__(self, mu: torch.Tensor, s: float):
        super().__init__()
        self.register_buffer("mu", mu)
        self.s = s
        self.dtype = torch.float32

    def forward(self, x, timesteps, context=None, control=None, transformer_options=None, **kwargs):
        t = (timesteps.float() / 1000.0).reshape(-1, 1, 1, 1)  # ModelSamplingDiscreteFlow: t = 1000 sigma
        mu = self.mu.to(x)
        z = (x - (1 - t) * mu) / ((1 - t) * self.s + t)
        return (1 - self.s) * z - mu


def straight_flow_model(s=0.8):
    import comfy.model_sampling as ms

    class FlowSampling(ms.ModelSamplingDiscreteFlow, ms.CONST):  # what core's ModelSamplingSD3 builds
        pass

    model = testbed.tiny_model("sd15").clone()
    sampling = FlowSampling(model.model.model_config)
    sampling.set_parameters(shift=1.0, multiplier=1000)
    model.add_object_patch("model_sampling", sampling)
    mu = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(11))
    model.add_object_patch("diffusion_model", StraightFlow(mu, s))
    return model


def image_latent(seed=5, batch=1, shape=(4, 16, 16)):
    return torch.randn(batch, *shape, generator=torch.Generator().manual_seed(seed))


def rel_error(a, b) -> float:
    return ((a - b).norm() / b.norm()).item()


def mixed_step_inversion(model, positive, x0, steps):
    """The pack's former step on flow models (DDIM's: v(x_lo, sigma_hi), as eval_point gives c_in = 1),
    written out here as the comparison."""
    import comfy.sample
    import comfy.samplers

    def sample(m, x, sigmas, extra_args=None, callback=None, disable=None):
        s_in = x.new_ones([x.shape[0]])
        for lo, hi in zip(sigmas[:-1], sigmas[1:]):
            x = x + (hi - lo) * (x - m(x, hi * s_in, **(extra_args or {}))) / hi
        return x

    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "simple", steps).flip(0)
    out = []
    sampler = comfy.samplers.KSAMPLER(lambda m, x, sigmas, **kw: out.append(sample(m, x, sigmas, **kw)) or out[-1])
    comfy.sample.sample_custom(model, torch.zeros_like(x0), 1.0, sampler, sigmas, positive, positive, x0,
                               disable_pbar=True, seed=0)
    return out[-1]


@pytest.mark.parametrize("steps", [4, 20])
def test_straight_flow_inverts_exactly_and_the_mixed_step_does_not(sae, steps):
    """On a flow whose paths are straight, inversion then forward euler (no pinning) returns the input to
    1e-5 at any step count: the reversed ODE is exact there, and the first step's fixed point is the
    path's point; the former DDIM-style step v(x_lo, sigma_hi) is off by far more."""
    model = straight_flow_model()
    pos = testbed.tiny_conditioning("sd15", 1)
    x0 = image_latent()
    noise, inv = inversion(sae).invert(model, pos, x0, steps, "simple")
    assert inv.sigmas[0] == 0 and inv.sigmas[-1] == pytest.approx(1.0)
    err = rel_error(forward(model, pos, noise, steps), x0)
    old = rel_error(forward(model, pos, mixed_step_inversion(model, pos, x0, steps), steps), x0)
    assert err < 1e-5, err
    assert old > 1000 * max(err, 1e-7), (old, err)


def _dit():
    import dit_testbed

    return dit_testbed


def _require_flow_dit():
    try:
        import dit_testbed  # noqa: F401
    except ImportError:
        pytest.skip("tests/dit_testbed.py (tiny DiTs) is not in this tree")


def test_steps_on_a_tiny_flux_are_the_reversed_flow_ode(sae):
    """On a tiny real Flux (FLUX sampling, CONST), from the model evaluations ComfyUI makes (recorded by
    an APPLY_MODEL wrapper): never at sigma 0; the first step evaluates at sigma_1 only (its fixed point,
    at most FLOW_FIRST_STEP_ITERATIONS times, the last update below 1e-4 of the latent's scale); every
    later step evaluates once, at the stored point x_lo and its own level sigma_lo, and stores
    x_hi = x_lo + (sigma_hi - sigma_lo) v(x_lo, sigma_lo), v = (x - D) / sigma."""
    _require_flow_dit()
    import comfy.patcher_extension as pe

    family = "flux"
    model = _dit().tiny_dit(family).clone()
    evaluated = []

    def record(executor, x, t, *args, **kwargs):
        out = executor(x, t, *args, **kwargs)
        evaluated.append((float(t[0]), x.detach().cpu().clone(), out.detach().cpu().clone()))
        return out

    model.add_wrapper_with_key(pe.WrappersMP.APPLY_MODEL, "test.sigma_probe", record)
    pos = _dit().tiny_dit_conditioning(family, 1)
    x0 = image_latent(shape=tuple(_dit().dit_latent(family)["samples"].shape[1:]))
    steps = 6
    _, inv = inversion(sae).invert(model, pos, x0, steps, "simple")
    sig, lat = inv.sigmas, inv.latents
    assert all(e[0] > 0 for e in evaluated)
    s1 = float(sig[1])
    at_s1 = 0
    while at_s1 < len(evaluated) and evaluated[at_s1][0] == pytest.approx(s1, rel=1e-6):
        at_s1 += 1
    first, later = evaluated[:at_s1 - 1], evaluated[at_s1 - 1:]  # the step from sigma_1 evaluates there too
    assert 2 <= len(first) <= inversion(sae).FLOW_FIRST_STEP_ITERATIONS
    assert any(torch.equal(x, lat[1]) for _, x, _ in first)  # x_1: the iterate of smallest residual
    assert [e[0] for e in later] == pytest.approx(sig[1:-1].tolist(), rel=1e-6)
    for i, (s, x, d) in enumerate(later, start=1):
        assert torch.equal(x, lat[i])
        assert rel_error(lat[i + 1], x + float(sig[i + 1] - sig[i]) * (x - d) / s) < 1e-6, i


def test_tiny_flux_reconstruction_unpinned_and_pinned(sae, record_property):
    """Tiny real Flux, one image latent, 50 steps (sigma_1 = 0.061, where the first step's fixed point
    converges on this random network): inversion then forward euler with the same steps and scheduler
    reconstructs it; unpinned within the error of a first-order ODE solver on a random network (recorded;
    measured 0.16 relative, bound 0.25); the pair's source held on the trajectory by the swap's PinSourceToTrajectory comes
    back as the input to 1e-5 (the first step's residual), with the inversion and pinning the UNet path
    uses."""
    steps = 50
    _require_flow_dit()
    import comfy.patcher_extension as pe

    sp = sae("sae_patches.swap_patch")
    family = "flux"
    model = _dit().tiny_dit(family)
    pos = _dit().tiny_dit_conditioning(family, 1)
    x0 = image_latent(shape=tuple(_dit().dit_latent(family)["samples"].shape[1:]))
    noise, inv = inversion(sae).invert(model, pos, x0, steps, "simple")
    unpinned = rel_error(forward(model, pos, noise, steps), x0)

    pinned_model = model.clone()
    pinned_model.add_wrapper_with_key(pe.WrappersMP.APPLY_MODEL, sp.PIN_WRAPPER_KEY,
                                      sp.PinSourceToTrajectory(inv.sigmas, inv.latents, inv.check_schedule))
    pair_cond = sae("nodes.node_swap").PairConditioning.execute(pos, _dit().tiny_dit_conditioning(family, 2)).args[0]
    out = forward(pinned_model, pair_cond, noise.repeat_interleave(2, 0), steps)
    pinned = rel_error(out[:1], x0)
    record_property("flux_reconstruction", {"steps": steps, "unpinned": unpinned, "pinned": pinned})
    assert torch.isfinite(out).all()
    assert pinned < 1e-5, pinned
    assert unpinned < 0.25, unpinned
