"""The spread probe (sae_patches/input_probe.py): the attention input's statistics along directions, on a
UNet and on every DiT family, checked against the inputs the test's own forward hooks record."""

from __future__ import annotations

import pytest
import torch
from test_families_dit import image_rows

import dit_testbed
import testbed
from sae_math.direction_window import window_sigmas
from snapshots import snapshot, unchanged

FAMILIES = ("sd15", "flux", "flux2", "chroma", "qwen_image", "sd3", "sd35_medium", "lumina2")


def tiny(name):
    if name == "sd15":
        return testbed.tiny_model("sd15")
    return dit_testbed.tiny_variant(name, 0) if name in dit_testbed.VARIANTS else dit_testbed.tiny_dit(name, 0)


def family_of(name):
    return {"sd35_medium": "sd3"}.get(name, name)


class InputRecorder:
    """Forward pre-hooks on the modules whose input is each layer's self-attention input (UNet: attn1;
    DiT: the first q/k/v Linear), and the sigmas and latent shape of every model call (an APPLY_MODEL
    wrapper on the sampled clone, added through the patcher)."""

    def __init__(self, model, modules):
        self.calls = []  # (sigmas (rows,), latent shape, {layer key: input})
        self.handles = [m.register_forward_pre_hook(self._hook(key)) for key, m in modules.items()]

    def wrap(self, clone):
        import comfy.patcher_extension as pe

        m = clone.clone()

        def start(executor, x, t, *args, **kwargs):
            self.calls.append((t.detach().double().clone(), tuple(x.shape), {}))
            return executor(x, t, *args, **kwargs)

        m.add_wrapper_with_key(pe.WrappersMP.APPLY_MODEL, "test.recorder", start)
        return m

    def _hook(self, key):
        def hook(_module, args):
            self.calls[-1][2][key] = args[0].detach().clone()
        return hook

    def remove(self):
        for h in self.handles:
            h.remove()


def image_slice(name, x_len, latent_shape, model):
    """The image rows of a layer input of x_len tokens, from the test bed's layout (not the adapters')."""
    if name == "sd15":
        return slice(0, x_len)  # attn1 of a UNet sees the image tokens only
    if family_of(name) in ("flux", "flux2", "chroma"):
        patch = model.model.diffusion_model.patch_size
        n = -(-latent_shape[-2] // patch) * -(-latent_shape[-1] // patch)
        return slice(x_len - n, x_len)  # double blocks: [image]; single blocks: [text, image]
    return image_rows(name, x_len, latent_shape)


def reference_stats(z, n):
    """The statistics of sae_math.spread computed directly, float64: z (rows, tokens, d), n (m, d)."""
    p = z.double() @ n.double().T
    return p, z.double().norm(dim=-1).mean(dim=-1)


@pytest.mark.parametrize("name", FAMILIES)
def test_probe_measures_the_image_tokens_attention_input_inside_the_window(sae, name):
    """A real sampling run (cfg 2: cond and uncond rows, two latents, 8 euler steps) with the probe of the top-2
    eigendirections of every layer, window 0.5..0.8: per layer, token_norm, rms, std, mean and row_rms equal
    the same statistics of the recorded inputs' image rows (text, pad and reference tokens excluded) over
    exactly the calls whose sigma is inside the window (relative 1e-5); the probed clone's output equals the
    unprobed model's bit for bit; the input MODEL is untouched."""
    family = family_of(name)
    model = tiny(name)
    before = snapshot(model)
    directions = sae("nodes.node_directions").ComputeAttentionEigendirections.execute(model, "all", 2, "").args[0]
    vectors = {key: directions.layer(key).vectors[:2] for key in directions.keys}
    adapter = sae("sae_patches.families").adapter_for(model, "test")
    probed = model.clone()
    probe = sae("sae_patches.input_probe").install_spread_probe(probed, adapter, vectors, 0.5, 0.8)
    if name == "sd15":
        modules = {x.key: model.model.diffusion_model.get_submodule(f"{x.module_path}.attn1") for x in adapter.layers()}
        cond, neg = testbed.tiny_conditioning("sd15", 1), testbed.tiny_conditioning("sd15", 2)
        latent = torch.zeros(2, 4, 16, 16)
        run = lambda m: testbed.sample(m, cond, neg, latent, seed=3, steps=8, cfg=2.0)  # noqa: E731
    else:
        modules = {key: model.model.diffusion_model.get_submodule(adapter.attention_inputs(key)[0][0]) for key in vectors}
        cond, neg = dit_testbed.tiny_dit_conditioning(family, 1), dit_testbed.tiny_dit_conditioning(family, 2)
        size = 14 if family == "lumina2" else None  # Z-Image: 49 image tokens padded to 64
        latent = dit_testbed.dit_latent(family, batch=2, size=size)
        run = lambda m: dit_testbed.sample(m, family, cond, neg, latent, seed=3, steps=8, cfg=2.0)  # noqa: E731
    recorder = InputRecorder(model, modules)
    try:
        probed_out = run(recorder.wrap(probed))
    finally:
        recorder.remove()
    assert torch.equal(probed_out, run(model)), "the probe changed the sampling"
    assert unchanged(before, model)

    sampling = model.get_model_object("model_sampling")
    if name == "sd15":  # a discrete schedule: the window is on the integer timestep the UNet is fed
        window = sae("sae_math.direction_window").window_for(sampling, 0.5, 0.8)
        inside_of = lambda s: window.contains(s, float(sampling.timestep(torch.tensor([s])).item()))  # noqa: E731
    else:
        low, high = window_sigmas(sampling, 0.5, 0.8)
        inside_of = lambda s: low < s < high  # noqa: E731
    result = probe.result()
    assert set(result) == set(vectors)
    inside_calls = 0
    for key, n in vectors.items():
        projections, norms, tokens = [], [], 0
        for sigmas, shape, inputs in recorder.calls:
            if not inside_of(float(sigmas.max())):
                continue
            x = inputs[key]
            z = x[:, image_slice(name, x.shape[1], shape, model)]
            p, token_norm = reference_stats(z, n)
            projections.append(p)
            norms.append(token_norm)
            tokens += z.shape[0] * z.shape[1]
        inside_calls = len(projections)
        got = result[key]
        assert got["evaluations"] == inside_calls and got["tokens"] == tokens, (key, got["evaluations"], inside_calls)
        flat = torch.cat([p.reshape(-1, p.shape[-1]) for p in projections])
        want = {"token_norm": torch.cat(norms).mean(), "rms": flat.square().mean(0).sqrt(), "mean": flat.mean(0),
                "std": flat.std(0, correction=0),
                "row_rms": torch.cat([p.square().mean(1).sqrt() for p in projections]).mean(0)}
        for stat, value in want.items():
            have = torch.tensor(got[stat], dtype=torch.float64)
            assert torch.allclose(have, value, rtol=1e-5, atol=1e-6 * float(value.abs().max())), (key, stat, have, value)
    assert 0 < inside_calls < len(recorder.calls)  # some calls outside the window, not recorded
