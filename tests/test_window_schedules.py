"""Apply Latent Direction's window on every kind of schedule: discrete SD (eps), LCM, EDM (continuous) and
flow (SD3-style shift), with ComfyUI's own samplers and its own ModelSampling nodes.

The expected edits are computed here independently of the pack's conversion, on the model_sampling the
sampler runs with: on the discrete schedules (SD, LCM) from the integer timestep the UNet is fed,
0.5*1000 < timestep(sigma) < 0.8*1000 (the paper's inequality); on the others from ComfyUI's
percent_to_sigma (window fraction f of T -> percent 1 - f)."""

from __future__ import annotations

import logging
import math

import pytest
import torch

import testbed

START, END = 0.5, 0.8  # the paper's window
RELATIVE = "relative to token norm"


def directions(sae, model):
    node = sae("nodes.node_directions").ComputeAttentionEigendirections
    return node.execute(model, "middle block", 1, "").args[0]


def apply(sae, model, d, start=START, end=END):
    node = sae("nodes.node_apply").ApplyLatentDirection
    return node.execute(model, d, 0, 0.3, start, end, RELATIVE, "", "").args[0]


def with_schedule(model, schedule):
    """The model with one of ComfyUI's ModelSampling nodes applied (an object patch on a clone)."""
    import comfy_extras.nodes_model_advanced as advanced

    if schedule == "sd":
        return model
    if schedule == "lcm":
        return advanced.ModelSamplingDiscrete().patch(model, "lcm", False)[0]
    if schedule == "edm":
        return advanced.ModelSamplingContinuousEDM().patch(model, "eps", 120.0, 0.002)[0]
    if schedule == "flow":
        return advanced.ModelSamplingSD3().patch(model, 3.0)[0]
    raise ValueError(schedule)


class SigmaRecorder:
    """attn1_patch pair around the Apply patch on the middle layer: per model evaluation and row, the
    sigma it runs at (extra_options['sigmas'], [B] repeated over the chunks) and whether the patches in
    between changed the self-attention input."""

    def __init__(self):
        self.seen = None
        self.events = []  # (sigma, row, edited)

    def install(self, model, patch_fn):
        def before(n, context, value, extra_options):
            self.seen = n
            return n, context, value

        def after(n, context, value, extra_options):
            if extra_options["block"][0] != "middle":  # the directions' only layer
                return n, context, value
            sigmas = extra_options["sigmas"].reshape(-1)
            per_row = sigmas.repeat(n.shape[0] // sigmas.shape[0]).tolist()
            for row in range(n.shape[0]):
                self.events.append((per_row[row], row, not torch.equal(n[row], self.seen[row])))
            return n, context, value

        m = model.clone()
        m.set_model_attn1_patch(before)
        m = patch_fn(m).clone()
        m.set_model_attn1_patch(after)
        return m


DISCRETE = ("sd", "lcm")  # schedules whose UNet is fed integer training timesteps, T = 1000


def expected_inside(model, discrete: bool):
    """sigma -> whether the window holds an evaluation at sigma, on the schedule model samples with."""
    sampling = model.get_model_object("model_sampling")
    if discrete:
        def inside(sigma):
            t = int(sampling.timestep(torch.tensor([sigma])).item())
            return START * 1000 < t < END * 1000
        return inside
    low, high = float(sampling.percent_to_sigma(1.0 - START)), float(sampling.percent_to_sigma(1.0 - END))
    return lambda sigma: low < sigma < high


def run(model, steps=9, sampler="euler", sigmas=None):
    pos, neg = testbed.tiny_conditioning("sd15", 1), testbed.tiny_conditioning("sd15", 2)
    latent = testbed.empty_latent(1)
    if sigmas is None:
        return testbed.sample(model, pos, neg, latent, steps=steps, cfg=3.0, sampler=sampler)
    import comfy.sample
    import comfy.samplers

    noise = comfy.sample.prepare_noise(latent, 0)
    return comfy.sample.sample_custom(model, noise, 3.0, comfy.samplers.sampler_object(sampler), sigmas, pos, neg,
                                      latent, seed=0)


def check_exact(rec, is_inside):
    inside = [e for e in rec.events if is_inside(e[0])]
    outside = [e for e in rec.events if not is_inside(e[0])]
    assert inside and outside, f"the schedule should visit both sides of the window: {rec.events}"
    assert all(e[2] for e in inside), [e for e in inside if not e[2]]
    assert not any(e[2] for e in outside), [e for e in outside if e[2]]
    assert {e[1] for e in inside} == {0, 1}, "cond and uncond rows are both edited"


@pytest.mark.parametrize("sampler", ["euler", "heun", "dpmpp_2m"])
@pytest.mark.parametrize("schedule", ["sd", "lcm", "edm", "flow"])
def test_edited_exactly_inside_the_converted_window(sae, schedule, sampler):
    """With the schedule's ModelSampling node before Apply Latent Direction, every model evaluation inside
    the window is edited, on every row, and no other (heun's intermediate sigmas included): on SD and LCM
    those the UNet sees at an integer timestep 500 < t < 800, elsewhere those with
    percent_to_sigma(1 - 0.5) < sigma < percent_to_sigma(1 - 0.8); each case has evaluations on both sides."""
    model = with_schedule(testbed.tiny_model("sd15"), schedule)
    rec = SigmaRecorder()
    patched = rec.install(model, lambda m: apply(sae, m, directions(sae, m)))
    run(patched, sampler=sampler)
    check_exact(rec, expected_inside(patched, schedule in DISCRETE))


def test_window_in_sigma_on_each_schedule(sae):
    """The conversion (numbers for the paper's window given): on SD and LCM the log-midpoints between table
    entries that make 500 < t < 800 on the UNet's integer timestep, elsewhere ComfyUI's
    percent_to_sigma(1 - f); the window's ends 0 and 1 take every sigma on that side (flow's first step
    at sigma 1 too)."""
    from sae_math.direction_window import window_sigmas
    base = testbed.tiny_model("sd15")
    expected = {"sd": (1.6210, 5.0994), "edm": (0.4899, 13.28), "flow": (0.75, 0.9231)}
    for schedule in ("sd", "lcm", "edm", "flow"):
        sampling = with_schedule(base, schedule).get_model_object("model_sampling")
        low, high = window_sigmas(sampling, START, END)
        if schedule in DISCRETE:
            # The switching points of timestep(): the last table sigma fed t <= 500 and the first fed t >= 800.
            for bound, t_out in ((low, 500), (high, 800)):
                fed = [int(sampling.timestep(torch.tensor([s])).item()) for s in (bound * 0.9999, bound * 1.0001)]
                assert (fed[0] <= t_out < fed[1]) if t_out == 500 else (fed[0] < t_out <= fed[1]), (schedule, fed)
        else:
            assert (low, high) == (float(sampling.percent_to_sigma(0.5)), float(sampling.percent_to_sigma(1 - 0.8)))
        if schedule in expected:
            assert (low, high) == pytest.approx(expected[schedule], rel=1e-3)
        assert window_sigmas(sampling, 0.0, 1.0) == (-math.inf, math.inf)
    # 0.57 * 1000 is 569.999... in floats: t = 570 must still be outside 0.57T < t.
    sd = base.get_model_object("model_sampling")
    assert window_sigmas(sd, 0.57, 0.8)[0] == pytest.approx(sd.sigma(torch.tensor(570.5)).item(), rel=1e-6)
    # A window between two LCM table timesteps (39 and 59) holds no timestep the model can be fed.
    lcm = with_schedule(base, "lcm").get_model_object("model_sampling")
    low, high = window_sigmas(lcm, 0.04, 0.05)
    assert low > high


@pytest.mark.parametrize("schedule", ["lcm", "edm", "flow"])
def test_model_sampling_node_after_apply_is_honoured(sae, schedule):
    """A ModelSampling node applied AFTER Apply Latent Direction decides the window: the edits follow the
    window converted on the final schedule. For EDM and flow the window converted on the schedule the
    node saw (discrete SD) would classify some evaluation differently, so that conversion would fail here."""
    base = testbed.tiny_model("sd15")
    d = directions(sae, base)
    rec = SigmaRecorder()
    patched = rec.install(base, lambda m: with_schedule(apply(sae, m, d), schedule))
    run(patched)
    is_inside = expected_inside(patched, schedule in DISCRETE)
    check_exact(rec, is_inside)
    if schedule != "lcm":  # LCM keeps SD's sigmas: the two conversions agree
        sd_inside = expected_inside(base, True)
        assert any(is_inside(s) != sd_inside(s) for s, _, _ in rec.events)


def turbo_sigmas(model, steps):
    """The core SDTurboScheduler's sigmas (timesteps 999, 899, ... on the model's schedule)."""
    import comfy_extras.nodes_custom_sampler as custom

    return custom.SDTurboScheduler.execute(model, steps, 1.0).args[0]


def window_warnings(caplog):
    return [r for r in caplog.records if r.name == "self_attention_edit" and r.levelno == logging.WARNING
            and "window" in r.getMessage()]


def test_warns_once_per_run_when_no_evaluation_is_inside(sae, caplog):
    """A 2-step turbo schedule (sigmas at t = 999 and 899) never reaches the paper's window: each such run
    logs exactly one warning naming the node, the window and the sigmas evaluated, and edits nothing. A run
    in between that reaches the window logs none: the bookkeeping starts afresh with every run."""
    model = testbed.tiny_model("sd15")
    rec = SigmaRecorder()
    patched = rec.install(model, lambda m: apply(sae, m, directions(sae, m)))
    sigmas = turbo_sigmas(patched, 2)
    caplog.set_level(logging.WARNING, logger="self_attention_edit")

    run(patched, sigmas=sigmas)
    (first,) = window_warnings(caplog)
    message = first.getMessage()
    assert message.startswith("Apply Latent Direction: no model evaluation")
    assert "0.5*T < t < 0.8*T" in message and "1.621 < sigma < 5.099" in message
    assert f"Sigmas evaluated: {sigmas[0].item():.4g}, {sigmas[1].item():.4g}." in message
    assert rec.events and not any(e[2] for e in rec.events), "nothing is edited"

    caplog.clear()
    rec.events.clear()
    run(patched, steps=9)
    assert not window_warnings(caplog), "a run that reaches the window logs nothing"
    assert any(e[2] for e in rec.events)

    caplog.clear()
    run(patched, sigmas=sigmas)
    assert len(window_warnings(caplog)) == 1, "the next run that misses warns again, once"


def test_no_warning_for_a_chain_when_each_window_is_reached(sae, caplog):
    """Two chained Apply nodes with different windows: a schedule reaching both logs nothing; narrowing one
    window between two steps of a 4-step turbo schedule (t = 999, 899, 799, 699) logs one warning, for that
    window only."""
    model = testbed.tiny_model("sd15")
    d = directions(sae, model)
    caplog.set_level(logging.WARNING, logger="self_attention_edit")
    both = apply(sae, apply(sae, model, d), d, start=0.6, end=0.95)
    run(both, sigmas=turbo_sigmas(both, 4))
    assert not window_warnings(caplog)
    missed = apply(sae, apply(sae, model, d), d, start=0.81, end=0.89)
    run(missed, sigmas=turbo_sigmas(missed, 4))
    (warning,) = window_warnings(caplog)
    assert "0.81*T < t < 0.89*T" in warning.getMessage()


HOST_READS = {"tolist", "item", "__bool__", "__float__", "__int__", "__index__", "cpu", "numpy", "equal", "allclose"}


def test_one_host_read_per_model_evaluation(sae):
    """Two chained Apply nodes on all 16 layers, sampled with heun: once each window is converted on the
    schedule (a few reads once per schedule), the pack's code reads a tensor back to the host (a device sync
    on a GPU) exactly once per UNet call, whatever the number of patches and layers.
    Counted with a TorchFunctionMode scoped to the sampling call, attributing each read to the Python file
    that asked for it."""
    import sys

    from torch.overrides import TorchFunctionMode

    pack_dirs = tuple(str(testbed.REPO / layer) + "/" for layer in ("sae_math", "sae_patches", "nodes"))

    class CountHostReads(TorchFunctionMode):
        def __init__(self):
            super().__init__()
            self.reads = 0

        def __torch_function__(self, func, types, args=(), kwargs=None):
            if getattr(func, "__name__", "") in HOST_READS and sys._getframe(1).f_code.co_filename.startswith(pack_dirs):
                self.reads += 1
            return func(*args, **(kwargs or {}))

    model = testbed.tiny_model("sd15")
    node = sae("nodes.node_directions").ComputeAttentionEigendirections
    d = node.execute(model, "all", 2, "").args[0]
    evaluations = []
    counted = model.clone()
    counted.set_model_unet_function_wrapper(lambda f, p: evaluations.append(1) or f(p["input"], p["timestep"], **p["c"]))
    patched = apply(sae, apply(sae, counted, d), d, start=0.3, end=0.9)
    run(patched, steps=3, sampler="heun")  # converts each window on this schedule once (cached per schedule)
    evaluations.clear()
    with CountHostReads() as mode:
        run(patched, steps=4, sampler="heun")
    assert len(evaluations) == 7  # heun: 2 evaluations per step but the last
    assert mode.reads == len(evaluations)
