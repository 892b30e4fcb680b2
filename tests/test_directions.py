"""Compute Attention Eigendirections + Apply Latent Direction on tiny real-architecture UNets, sampled
with ComfyUI's own samplers."""

import pytest
import torch

import testbed

RELATIVE = "relative to token norm"


def compute(sae, model, layers="all", k=4, custom=""):
    node = sae("nodes.node_directions").ComputeAttentionEigendirections
    return node.execute(model, layers, k, custom).args[0]


def apply(sae, model, directions, index=0, alpha=0.3, start=0.5, end=0.8, scale=RELATIVE, layers="", sweep=""):
    node = sae("nodes.node_apply").ApplyLatentDirection
    return node.execute(model, directions, index, alpha, start, end, scale, layers, sweep).args[0]


def conds(family):
    return testbed.tiny_conditioning(family, 1), testbed.tiny_conditioning(family, 2)


def test_directions_equal_float64_reference_on_every_family(sae, family):
    """Each layer's vectors are the top eigenvectors of C from the UNet's own q/k/v weights."""
    model = testbed.tiny_model(family)
    d = compute(sae, model, "all", 5)
    unet = model.model.diffusion_model
    assert len(d.layers) == {"sd15": 16, "sd20": 16, "sdxl": 17}[family]
    for layer in d.layers:
        name, block_id, depth = layer.key.split(".")
        path = {"input": f"input_blocks.{block_id}.1", "output": f"output_blocks.{block_id}.1", "middle": "middle_block.1"}[name]
        attn = unet.get_submodule(f"{path}.transformer_blocks.{depth}.attn1")
        s = torch.cat([attn.to_q.weight, attn.to_k.weight, attn.to_v.weight]).double()
        vals, vecs = torch.linalg.eigh(s.T @ s)
        torch.testing.assert_close(layer.values.double(), vals.flip(0)[:5], rtol=1e-5, atol=1e-6)
        assert testbed.principal_angles(layer.vectors, vecs.flip(1)[:, :5].T).max() < 1e-5


def test_top_direction_changes_attention_output_most(sae):
    """With whitened random Z (E[Z^T Z] = I), perturbing along the top direction changes the real attn1
    output more than perturbing along random unit directions."""
    model = testbed.tiny_model("sd15")
    d = compute(sae, model, "middle block", 1)
    attn = model.model.diffusion_model.middle_block[1].transformer_blocks[0].attn1
    g = torch.Generator().manual_seed(0)
    z = torch.randn(4, 64, d.layers[0].width, generator=g)

    def change(direction):
        with torch.no_grad():
            return (attn(z + 0.05 * direction) - attn(z)).norm().item()

    top = change(d.layers[0].vectors[0])
    rand = torch.randn(50, d.layers[0].width, generator=g)
    rand_changes = [change(r / r.norm()) for r in rand]
    assert top > max(rand_changes), (top, max(rand_changes))


@pytest.mark.parametrize("sampler,scheduler", [
    ("euler", "normal"), ("euler", "karras"), ("heun", "normal"), ("heun", "karras"),
    ("dpmpp_2m", "normal"), ("dpmpp_2m", "karras")])
def test_window_is_exactly_the_open_timestep_interval(sae, sampler, scheduler):
    """The input of every chosen layer is perturbed exactly when 500 < t < 800 (t = the UNet's timestep),
    on cond and uncond rows alike, whatever the sampler evaluates (heun: intermediate sigmas)."""
    model = testbed.tiny_model("sd15")
    d = compute(sae, model, "all", 2)
    patched, rec = testbed.with_recorder(model, lambda m: apply(sae, m, d, alpha=0.3))
    pos, neg = conds("sd15")
    testbed.sample(patched, pos, neg, testbed.empty_latent(1), steps=12, cfg=3.0, sampler=sampler, scheduler=scheduler)
    assert rec.events
    inside = [e for e in rec.events if 500 < e[1] < 800]
    outside = [e for e in rec.events if not 500 < e[1] < 800]
    assert inside and outside, "the schedule should visit both sides of the window"
    assert all(e[3] for e in inside), "every row of every layer is edited inside the window"
    assert not any(e[3] for e in outside), "nothing is edited outside the window"
    assert {e[2] for e in inside} == {0, 1}, "uncond and cond rows are both edited"
    # q, k and v all see the edit: context and value changed as much as n.
    assert all(e[4][0] == e[4][1] == e[4][2] for e in inside)


def test_alpha_zero_is_bit_identical_and_input_model_untouched(sae):
    model = testbed.tiny_model("sd15")
    pos, neg = conds("sd15")
    before = testbed.sample(model, pos, neg, testbed.empty_latent(1), seed=3)
    d = compute(sae, model)
    zero = testbed.sample(apply(sae, model, d, alpha=0.0), pos, neg, testbed.empty_latent(1), seed=3)
    edited = testbed.sample(apply(sae, model, d, alpha=0.3), pos, neg, testbed.empty_latent(1), seed=3)
    edited_again = testbed.sample(apply(sae, model, d, alpha=0.3), pos, neg, testbed.empty_latent(1), seed=3)
    after = testbed.sample(model, pos, neg, testbed.empty_latent(1), seed=3)
    assert torch.equal(zero, before), "alpha = 0 must reproduce unpatched sampling bit for bit"
    assert not torch.equal(edited, before)
    assert torch.equal(edited, edited_again), "same seed and settings, same image"
    assert torch.equal(after, before), "the input MODEL samples exactly as before"
    assert "patches" not in model.model_options.get("transformer_options", {})


def test_difference_grows_linearly_in_small_alpha(sae):
    """|x(alpha) - x(0)| is proportional to alpha for small alpha (doubling alpha doubles it, within 5%).
    Measured slope |dx|/alpha: 1241, 1242, 1245 for alpha 0.0005, 0.001, 0.002."""
    model = testbed.tiny_model("sd15")
    pos, neg = conds("sd15")
    d = compute(sae, model, "all", 1)
    base = testbed.sample(model, pos, neg, testbed.empty_latent(1), seed=1, steps=8)
    diffs = {}
    for a in (0.001, 0.002, 0.004):
        out = testbed.sample(apply(sae, model, d, alpha=a), pos, neg, testbed.empty_latent(1), seed=1, steps=8)
        diffs[a] = (out - base).norm().item()
    assert diffs[0.001] > 0
    assert diffs[0.002] / diffs[0.001] == pytest.approx(2.0, rel=0.02)
    assert diffs[0.004] / diffs[0.002] == pytest.approx(2.0, rel=0.02)
    # Opposite alphas move the result in opposite directions.
    neg_out = testbed.sample(apply(sae, model, d, alpha=-0.002), pos, neg, testbed.empty_latent(1), seed=1, steps=8)
    pos_out = testbed.sample(apply(sae, model, d, alpha=0.002), pos, neg, testbed.empty_latent(1), seed=1, steps=8)
    cos = torch.nn.functional.cosine_similarity((pos_out - base).flatten(), (neg_out - base).flatten(), dim=0)
    assert cos < -0.9


def test_alpha_sweep_renders_every_alpha_in_one_run(sae):
    """A sweep over a batch with identical noise: element i equals a run with alphas[i] alone."""
    model = testbed.tiny_model("sd15")
    pos, neg = conds("sd15")
    d = compute(sae, model, "middle block", 2)
    latent, same_noise = testbed.empty_latent(3), [7, 7, 7]
    sweep = testbed.sample(apply(sae, model, d, sweep="-0.3, 0, 0.3"), pos, neg, latent, batch_index=same_noise)
    for i, a in enumerate((-0.3, 0.0, 0.3)):
        single = testbed.sample(apply(sae, model, d, alpha=a), pos, neg, latent, batch_index=same_noise)
        torch.testing.assert_close(sweep[i], single[i], rtol=0, atol=1e-5)
    assert not torch.allclose(sweep[0], sweep[2])
    plain = testbed.sample(model, pos, neg, latent, batch_index=same_noise)
    torch.testing.assert_close(sweep[1], plain[1], rtol=0, atol=1e-5)


def test_apply_nodes_chain_and_compose_with_other_attn1_patches(sae):
    """Two Apply nodes stack: the attention input is shifted by the sum of both edits, and a foreign
    attn1_patch before them still runs."""
    model = testbed.tiny_model("sd15")
    d = compute(sae, model, "middle block", 3)
    pos, neg = conds("sd15")
    calls = []

    def foreign(n, c, v, extra):
        calls.append(1)
        return n, c, v

    def both(m):
        m = m.clone()
        m.set_model_attn1_patch(foreign)
        return apply(sae, apply(sae, m, d, index=0, alpha=0.2), d, index=2, alpha=-0.2)

    patched, rec = testbed.with_recorder(model, both)
    testbed.sample(patched, pos, neg, testbed.empty_latent(1), steps=6)
    assert calls and any(e[3] for e in rec.events if e[0] == "middle.0.0")
    assert not any(e[3] for e in rec.events if e[0] != "middle.0.0"), "only the directions' layers change"
    one = testbed.sample(apply(sae, model, d, index=0, alpha=0.2), pos, neg, testbed.empty_latent(1), steps=6)
    two = testbed.sample(apply(sae, apply(sae, model, d, index=0, alpha=0.2), d, index=2, alpha=-0.2),
                         pos, neg, testbed.empty_latent(1), steps=6)
    assert not torch.equal(one, two)


def test_lora_patched_weights_give_other_directions_and_the_cache_follows(sae):
    """A weight patch on attn1 changes the directions; whichever clone was loaded last, each clone gets
    the directions of its own weights, and the cache never serves stale ones."""
    weights = sae("sae_patches.weights")
    model = testbed.tiny_model("sd15")
    key = "diffusion_model.middle_block.1.transformer_blocks.0.attn1.to_k.weight"
    w = model.model.diffusion_model.middle_block[1].transformer_blocks[0].attn1.to_k.weight
    lora = model.clone()
    lora.add_patches({key: (torch.randn(w.shape, generator=torch.Generator().manual_seed(4)) * 0.5,)}, 1.0)

    base1 = compute(sae, model, "middle block", 3)
    patched1 = compute(sae, lora, "middle block", 3)
    assert not torch.allclose(base1.layers[0].vectors, patched1.layers[0].vectors)
    assert base1.model_fingerprint != patched1.model_fingerprint
    # Load the LoRA clone (writes patched weights into the shared module), then ask again.
    pos, neg = conds("sd15")
    testbed.sample(lora, pos, neg, testbed.empty_latent(1), steps=2)
    hits = weights.EIGEN_CACHE.hits
    base2 = compute(sae, model, "middle block", 3)
    patched2 = compute(sae, lora, "middle block", 3)
    assert weights.EIGEN_CACHE.hits == hits + 2, "both answers come from the cache"
    assert torch.equal(base2.layers[0].vectors, base1.layers[0].vectors)
    assert torch.equal(patched2.layers[0].vectors, patched1.layers[0].vectors)
    # A different strength is a different weight: recomputed, not served stale.
    lora2 = model.clone()
    lora2.add_patches({key: (torch.randn(w.shape, generator=torch.Generator().manual_seed(4)) * 0.5,)}, 0.5)
    misses = weights.EIGEN_CACHE.misses
    patched3 = compute(sae, lora2, "middle block", 3)
    assert weights.EIGEN_CACHE.misses == misses + 1
    assert not torch.allclose(patched3.layers[0].values, patched1.layers[0].values)


def test_every_family_samples_with_an_edit(sae, family):
    model = testbed.tiny_model(family)
    pos, neg = conds(family)
    d = compute(sae, model, "middle block", 2)
    base = testbed.sample(model, pos, neg, testbed.empty_latent(2), steps=6)
    out = testbed.sample(apply(sae, model, d, alpha=0.4), pos, neg, testbed.empty_latent(2), steps=6)
    assert torch.isfinite(out).all() and not torch.equal(out, base)


def test_save_and_load_round_trip(sae, tmp_path):
    directions = sae("sae_math.directions")
    model = testbed.tiny_model("sdxl")
    d = compute(sae, model, "lowest resolution", 3)
    path = tmp_path / "d.safetensors"
    d.save(str(path))
    back = directions.AttnDirections.load(str(path))
    assert back.keys == d.keys and back.model_fingerprint == d.model_fingerprint and back.model_family == "SDXL"
    for a, b in zip(back.layers, d.layers):
        assert torch.equal(a.vectors, b.vectors) and torch.equal(a.values, b.values) and a.level == b.level
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="could not be read"):
        directions.AttnDirections.load(str(tmp_path / "bad.safetensors"))


def test_directions_do_not_depend_on_what_ran_before(sae):
    """The eigen cache is keyed by (weights, k): asking for k=3 after k=6 computes k=3 afresh instead of
    slicing the k=6 answer, so a workflow gives bit-identical directions whatever ran before it; a k
    larger than a layer's width (clamped) is still served from the cache."""
    weights = sae("sae_patches.weights")
    model = testbed.tiny_model("sd15")
    fresh = compute(sae, model, "middle block", 3)
    weights.EIGEN_CACHE.clear()
    compute(sae, model, "middle block", 6)
    misses = weights.EIGEN_CACHE.misses
    after = compute(sae, model, "middle block", 3)
    assert weights.EIGEN_CACHE.misses == misses + 1, "k=3 must not be sliced from the k=6 entry"
    assert torch.equal(after.layers[0].vectors, fresh.layers[0].vectors)
    width = after.layers[0].width
    compute(sae, model, "middle block", width + 5)
    hits = weights.EIGEN_CACHE.hits
    again = compute(sae, model, "middle block", width + 5)
    assert weights.EIGEN_CACHE.hits == hits + 1 and again.layers[0].vectors.shape[0] == width
