"""Self-Attention Swap inside ComfyUI's sampling machinery: attention overrides, which rows are the
positive ones (CFG, DualCFGGuider, SAG), the default layers at two image sizes, the step window on the
whole schedule (split and denoise < 1 runs), per-call caching, and the pinned source rows."""

from __future__ import annotations

import logging

import pytest
import torch

import testbed

FPE = "below latent resolution (FPE default)"
STEPS = 10
END = 0.8


def node_swap(sae):
    return sae("nodes.node_swap")


def swap(sae, model, rows="conditional only", start=0.0, end=END, layers=FPE):
    return node_swap(sae).SelfAttentionSwap.execute(model, layers, start, end, rows, "", None, True).args[0]


def pair_cond(sae, family, src_seed, tgt_seed):
    return node_swap(sae).PairConditioning.execute(testbed.tiny_conditioning(family, src_seed),
                                                   testbed.tiny_conditioning(family, tgt_seed)).args[0]


def pairs_latent(sae, size=16, samples=None):
    samples = testbed.empty_latent(1, size) if samples is None else samples
    return node_swap(sae).MakePairs.execute({"samples": samples}).args[0]


def layer_key(extra) -> str:
    block = extra["block"]
    return f"{block[0]}.{block[1]}.{extra['block_index']}"


class SwapRecorder:
    """Another pack's attn1 replace on every block (2-tuple keys), placed before the swap, which calls
    through it. Per target row whose input differs from its source's, it records (layer, sigma, chunk
    index into calc_cond_batch's conds list, the call's cond_or_uncond, tokens, whether the row arrived
    with its source's q). Calls ComfyUI's attention, so results are unchanged."""

    def __init__(self):
        self.events = []
        self.inputs = {}

    def __deepcopy__(self, memo):
        return self

    def probe(self, n, c, v, extra):
        self.inputs[layer_key(extra)] = n
        return n, c, v

    def replace(self, q, k, v, extra):
        from comfy.ldm.modules.attention import optimized_attention

        key = layer_key(extra)
        chunks = tuple(extra["cond_or_uncond"])
        batch = q.shape[0] // len(chunks)
        n = self.inputs[key]
        for c, index in enumerate(chunks):
            for e in range(1, batch, 2):
                r = c * batch + e
                if torch.equal(n[r], n[r - 1]):
                    continue  # identical inputs (same noise, same prompt so far): nothing to tell apart
                self.events.append((key, float(extra["sigmas"].max()), index, chunks, q.shape[1],
                                    torch.equal(q[r], q[r - 1])))
        return optimized_attention(q, k, v, extra["n_heads"])

    def install(self, model):
        m = model.clone()
        m.set_model_attn1_patch(self.probe)
        for name, ids in (("input", range(12)), ("middle", [0]), ("output", range(12))):
            for i in ids:
                m.set_model_attn1_replace(self.replace, name, i)
        return m


def sigma_bound(model, percent):
    return float(model.get_model_object("model_sampling").percent_to_sigma(percent))


def core(cls, *args):
    """First output of a core V3 node (classmethod execute) or V1 node (FUNCTION on an instance)."""
    out = cls.execute(*args) if hasattr(cls, "execute") else getattr(cls(), cls.FUNCTION)(*args)
    return out.args[0] if hasattr(out, "args") else out[0]


# ---------------------------------------------------------------------------------------------------
# 1. Attention overrides

def test_an_attention_override_runs_on_swapped_layers(sae):
    """An optimized_attention_override another node put in the model's transformer_options (called by
    ComfyUI as override(func, *args, **kwargs)) is called on the self-attention of every layer the swap
    replaces, as on the others; a pass-through override leaves the result bit-identical."""
    model = testbed.tiny_model("sd15")
    seen = set()

    def override(func, *args, **kwargs):
        options = kwargs.get("transformer_options") or {}
        q, k = args[0], args[1]
        if "block" in options and q.shape[1] == k.shape[1]:  # self-attention (cross-attention: 77 text tokens)
            seen.add((options["block"][0], options["block"][1], options.get("block_index", 0)))
        return func(*args, **kwargs)

    other = model.clone()  # as another node would: its own clone, through model_options
    other.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = override
    swapped = swap(sae, other)
    cond, neg, lat = pair_cond(sae, "sd15", 1, 2), testbed.tiny_conditioning("sd15", 3), pairs_latent(sae)
    out = testbed.sample(swapped, cond, neg, lat["samples"], batch_index=lat["batch_index"], steps=2)
    layers = sae("sae_patches.weights").model_layers(model)
    fpe = {x.patch_key for x in sae("sae_math.layers").select_layers(layers, FPE)}
    assert len(fpe) == 11
    assert fpe <= seen, sorted(fpe - seen)
    plain = testbed.sample(swap(sae, model), cond, neg, lat["samples"], batch_index=lat["batch_index"], steps=2)
    assert torch.equal(out, plain)


# ---------------------------------------------------------------------------------------------------
# 2. Rows by role

def swapped_chunks(events):
    """{chunk index: whether any target row of it was swapped} over the recorded events."""
    out = {}
    for _, _, index, _, _, swapped in events:
        out[index] = out.get(index, False) or swapped
    return out


def test_dual_cfg_guider_swaps_the_positive_rows(sae):
    """DualCFGGuider (core node) calls calc_cond_batch with [negative, middle, positive]: the swap edits
    the targets of the positive (cond1) chunk, index 2, inside the window, and never those of the
    negative or middle chunks (cond_or_uncond 0 is the negative here)."""
    import comfy.sample
    import comfy.samplers
    from comfy_extras import nodes_custom_sampler as ncs

    model = testbed.tiny_model("sd15")
    rec = SwapRecorder()
    patched = swap(sae, rec.install(model))
    guider = core(ncs.DualCFGGuider, patched, pair_cond(sae, "sd15", 1, 2), pair_cond(sae, "sd15", 4, 5),
                  testbed.tiny_conditioning("sd15", 3), 4.0, 2.0, "regular")
    lat = pairs_latent(sae)
    noise = comfy.sample.prepare_noise(lat["samples"], 0, lat["batch_index"])
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "normal", 6)
    out = guider.sample(noise, lat["samples"], comfy.samplers.sampler_object("euler"), sigmas, seed=0)
    assert torch.isfinite(out).all()
    low = sigma_bound(model, END)
    assert swapped_chunks(rec.events) == {0: False, 1: False, 2: True}
    for key, sigma, index, _, _, swapped in rec.events:
        assert swapped == (index == 2 and sigma > low and key in FPE_SD15), (key, sigma, index)


FPE_SD15 = {"input.4.0", "input.5.0", "input.7.0", "input.8.0", "middle.0.0", "output.3.0", "output.4.0",
            "output.5.0", "output.6.0", "output.7.0", "output.8.0"}


def test_sag_extra_pass_is_not_swapped_and_cfg_is_unchanged(sae):
    """Core SAG (before the swap, as documented) runs an extra UNet pass on the negative alone, which
    reaches the model as cond_or_uncond [0]: it is not swapped. In the ordinary CFG calls only the
    positive chunk (index 0) is, inside the window, on the FPE layers, as before."""
    from comfy_extras import nodes_sag

    model = testbed.tiny_model("sd15")
    rec = SwapRecorder()
    patched = swap(sae, core(nodes_sag.SelfAttentionGuidance, rec.install(model), 0.5, 2.0))
    lat = pairs_latent(sae)
    testbed.sample(patched, pair_cond(sae, "sd15", 1, 2), testbed.tiny_conditioning("sd15", 3), lat["samples"],
                   batch_index=lat["batch_index"], steps=6)
    sag_pass = [e for e in rec.events if e[3] == (0,)]
    cfg_pass = [e for e in rec.events if len(e[3]) == 2]
    assert sag_pass and cfg_pass and len(sag_pass) + len(cfg_pass) == len(rec.events)
    assert not any(e[5] for e in sag_pass), "SAG's pass on the negative is never swapped"
    low = sigma_bound(model, END)
    for key, sigma, index, _, _, swapped in cfg_pass:
        assert swapped == (index == 0 and sigma > low and key in FPE_SD15), (key, sigma, index)
    assert any(e[5] for e in cfg_pass)


def test_a_guider_that_copies_its_conds_falls_back_with_one_log_line(sae, caplog):
    """A guider whose calc_cond_batch entries are not its own conds lists cannot be read: the swap treats
    cond_or_uncond 0 as the positive (the ordinary CFG order, right here) and says so once per run."""
    import comfy.sample
    import comfy.samplers

    class CopyingGuider(comfy.samplers.CFGGuider):
        def predict_noise(self, x, timestep, model_options=None, seed=None):
            return comfy.samplers.sampling_function(self.inner_model, x, timestep, list(self.conds["negative"]),
                                                    list(self.conds["positive"]), self.cfg,
                                                    model_options=model_options or {}, seed=seed)

    model = testbed.tiny_model("sd15")
    rec = SwapRecorder()
    guider = CopyingGuider(swap(sae, rec.install(model)))
    guider.set_conds(pair_cond(sae, "sd15", 1, 2), testbed.tiny_conditioning("sd15", 3))
    guider.set_cfg(4.0)
    lat = pairs_latent(sae)
    noise = comfy.sample.prepare_noise(lat["samples"], 0, lat["batch_index"])
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "normal", 4)
    with caplog.at_level(logging.INFO, logger="self_attention_edit"):
        guider.sample(noise, lat["samples"], comfy.samplers.sampler_object("euler"), sigmas, seed=0)
    lines = [r for r in caplog.records if "cannot tell which conditioning" in r.getMessage()]
    assert len(lines) == 1
    assert swapped_chunks(rec.events) == {0: True, 1: False}


# ---------------------------------------------------------------------------------------------------
# 3. Default layers at two image sizes

@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_fpe_default_layers_follow_the_image(sae, family):
    """FPE's default swaps the layers whose maps hold at most a quarter of the tokens of the model's
    largest self-attention map: on SD1.5 the 11 layers below the latent resolution, on SDXL (no
    attention at latent resolution) its level-2 layers, leaving level 1 (latent/2). Sampled at latent
    16x16 and 32x32, the same layers are swapped, and the token counts observed obey the rule."""
    model = testbed.tiny_model(family)
    layers = sae("sae_patches.weights").model_layers(model)
    highest = min(x.level for x in layers)
    expected = {x.key for x in layers if x.level > highest}
    if family == "sd15":
        assert expected == FPE_SD15
    else:
        assert highest == 1 and {x.level for x in layers} == {1, 2}
    swapped_by_size = {}
    for size in (16, 32):
        rec = SwapRecorder()
        lat = pairs_latent(sae, size)
        testbed.sample(swap(sae, rec.install(model)), pair_cond(sae, family, 1, 2),
                       testbed.tiny_conditioning(family, 3), lat["samples"], batch_index=lat["batch_index"], steps=3)
        largest = max(e[4] for e in rec.events)
        assert largest == (size * size if family == "sd15" else size * size // 4)
        low = sigma_bound(model, END)
        for key, sigma, index, _, tokens, swapped in rec.events:
            if index == 0 and sigma > low:
                assert (tokens <= largest // 4) == (key in expected) and swapped == (key in expected), (key, tokens)
        swapped_by_size[size] = {e[0] for e in rec.events if e[5]}
    assert swapped_by_size[16] == swapped_by_size[32] == expected


# ---------------------------------------------------------------------------------------------------
# 4. The window on the whole schedule

def decisions(events):
    """(layer, sigma, chunk) -> swapped, sigma rounded to float32 precision."""
    return {(key, round(sigma, 5), index): swapped for key, sigma, index, _, _, swapped in events}


def test_split_ksampler_advanced_run_swaps_the_same_evaluations_as_one_run(sae):
    """KSamplerAdvanced over steps 0-5 (leftover noise returned), then 5-10 (no added noise), evaluates
    the model at the same sigmas as one 10-step run, and the swap makes the same decision at each:
    it counts the whole schedule, not each half's."""
    import nodes as comfy_nodes

    model = testbed.tiny_model("sd15")
    cond, neg, lat = pair_cond(sae, "sd15", 1, 2), testbed.tiny_conditioning("sd15", 3), pairs_latent(sae)
    adv = comfy_nodes.KSamplerAdvanced()

    def run(rec, latent, add_noise, start, end, leftover):
        return adv.sample(swap(sae, rec.install(model)), add_noise, 0, STEPS, 4.0, "euler", "normal", cond, neg,
                          latent, start, end, leftover)[0]

    whole = SwapRecorder()
    one = run(whole, lat, "enable", 0, 10000, "disable")
    halves = SwapRecorder()
    first = run(halves, lat, "enable", 0, STEPS // 2, "enable")
    two = run(halves, first, "disable", STEPS // 2, 10000, "disable")
    assert decisions(whole.events) == decisions(halves.events)
    assert len(whole.events) == len(halves.events)
    import comfy.samplers

    schedule = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "normal", STEPS)
    swapped_sigmas = {e[1] for e in whole.events if e[5]}
    assert min(swapped_sigmas) > sigma_bound(model, END)
    assert any(s <= float(schedule[STEPS // 2]) for s in swapped_sigmas), "the window reaches into the second half"
    torch.testing.assert_close(two["samples"], one["samples"], atol=1e-4, rtol=1e-4)


def test_denoise_below_one_swaps_by_sigma_like_the_full_run(sae):
    """KSampler with denoise 0.5 runs the last 10 steps of a 20-step schedule: each of its evaluations is
    swapped exactly when the full 20-step run swaps at that sigma (sigma > percent_to_sigma(end)), not
    during the first 80% of its own 10 steps."""
    model = testbed.tiny_model("sd15")
    cond, neg = pair_cond(sae, "sd15", 1, 2), testbed.tiny_conditioning("sd15", 3)
    image = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(3))
    lat = pairs_latent(sae, samples=image)
    partial = SwapRecorder()
    testbed.sample(swap(sae, partial.install(model)), cond, neg, lat["samples"], batch_index=lat["batch_index"],
                   steps=10, denoise=0.5)
    full = SwapRecorder()
    testbed.sample(swap(sae, full.install(model)), cond, neg, lat["samples"], batch_index=lat["batch_index"], steps=20)
    low = sigma_bound(model, END)
    mine, theirs = decisions(partial.events), decisions(full.events)
    assert any(mine.values()) and not all(mine.values())
    for (key, sigma, index), swapped in mine.items():
        assert swapped == (index == 0 and key in FPE_SD15 and sigma > low), (key, sigma)
        if (key, sigma, index) in theirs:
            assert theirs[key, sigma, index] == swapped
    assert {k[1] for k in mine} <= {k[1] for k in theirs}, "the partial run evaluates the full schedule's sigmas"


# ---------------------------------------------------------------------------------------------------
# 5. Decided once per UNet call; pinning vectorised

def test_one_decision_per_unet_call_and_one_index_tensor_per_layout(sae):
    """All swapped layers of one UNet call share one plan (one host read of sigma per call), and every
    call with the same row layout reuses the same gather-index tensor."""
    model = testbed.tiny_model("sd15")
    patched = swap(sae, model)
    replaces = patched.model_options["transformer_options"]["patches_replace"]["attn1"]
    windows = {id(p.window) for p in replaces.values()}
    assert len(windows) == 1, "one window per node"
    plans, indices, alive = {}, set(), []
    probe = patched.clone()
    for key, patch in list(replaces.items()):
        def checking(q, k, v, extra, patch=patch):
            alive.append(extra["sigmas"])  # so that no later call's tensor reuses an id
            plan = patch.window.plan(extra)
            plans.setdefault(id(extra["sigmas"]), set()).add(id(plan))
            if plan.edited is not None:
                indices.add(id(patch.window.gather_index(plan.edited, q.shape[0], extra, q.device)))
            return patch(q, k, v, extra)
        probe.set_model_attn1_replace(checking, *key)
    lat = pairs_latent(sae)
    testbed.sample(probe, pair_cond(sae, "sd15", 1, 2), testbed.tiny_conditioning("sd15", 3), lat["samples"],
                   batch_index=lat["batch_index"], steps=4)
    assert len(plans) == 4 and all(len(p) == 1 for p in plans.values())
    assert len(indices) == 1


def reference_pin(sigmas, latents, x, t, cond_or_uncond):
    """The per-row implementation the pin wrapper had: a Python loop over rows, a CPU float64 search and
    a CPU lerp per row."""
    s = sigmas.double().cpu()

    def latent_at(sigma):
        if sigma <= s[0]:
            return latents[0]
        if sigma >= s[-1]:
            return latents[-1]
        i = int(torch.searchsorted(s, torch.tensor(sigma, dtype=torch.float64)).item())
        lo, hi = s[i - 1].item(), s[i].item()
        w = (sigma - lo) / (hi - lo)
        if w < 1e-6:
            return latents[i - 1]
        if w > 1 - 1e-6:
            return latents[i]
        return torch.lerp(latents[i - 1].float(), latents[i].float(), w).to(latents.dtype)

    rows = x.shape[0]
    batch = rows // len(cond_or_uncond)
    n = latents.shape[1]
    x = x.clone()
    for r in range(rows):
        e = r % batch
        if e % 2 == 0:
            x[r] = latent_at(float(t[r])).to(x)[(e // 2) % n]
    return x


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("images", [1, 2])
def test_pinning_matches_the_per_row_reference(sae, dtype, images):
    """The vectorised pin writes exactly what the per-row reference writes, for sigmas below, at, between
    and above the stored points, one or several inverted images, two cond chunks, float32 and float16
    trajectories."""
    pin_cls = sae("sae_patches.swap_patch").PinSourceToTrajectory
    g = torch.Generator().manual_seed(0)
    stored = torch.tensor([1e-4, 0.05, 0.3, 1.2, 4.0, 14.6], dtype=torch.float32)
    latents = torch.randn(6, images, 4, 8, 8, generator=g).to(dtype)
    pin = pin_cls(stored.double(), latents)
    batch = 4  # two pairs
    cond_or_uncond = [1, 0]
    got = {}

    def executor(x_in, *args, **kwargs):
        got["x"] = x_in
        return x_in

    for sigma in [5e-5, 1e-4, 0.05, 0.07, 0.3000001, 1.0, 4.0, 3.9999999, 14.6, 20.0]:
        x = torch.randn(batch * 2, 4, 8, 8, generator=g)
        t = torch.full((batch * 2,), sigma)
        pin(executor, x, t, None, None, None, {"cond_or_uncond": cond_or_uncond})
        expected = reference_pin(stored, latents, x, t, cond_or_uncond)
        assert torch.equal(got["x"], expected), sigma
        assert torch.equal(got["x"][1::2], x[1::2]), "targets untouched"


# ---------------------------------------------------------------------------------------------------
# Pure parts (no ComfyUI)

def test_chunk_roles_name_conds_by_identity():
    """Each calc_cond_batch entry is named by the guider cond it is (identity, not equality): CFG's
    [positive, negative], DualCFG's [negative, middle, positive], SAG's [negative]; a skipped entry
    (None) has no role; an entry that is a copy makes the roles unknown (None), and unknown roles fall
    back to the CFG order (0 positive, 1 negative)."""
    from sae_math import attention_rows as rows
    pos, neg, mid = [{"a": 1}], [{"a": 1}], [{"a": 2}]
    conds = {"positive": pos, "negative": neg, "middle": mid}
    assert rows.chunk_roles([pos, neg], conds) == ("positive", "negative")
    assert rows.chunk_roles([neg, mid, pos], conds) == ("negative", "middle", "positive")
    assert rows.chunk_roles([neg], conds) == ("negative",)
    assert rows.chunk_roles([pos, None], conds) == ("positive", None)
    assert rows.chunk_roles([list(pos), neg], conds) is None, "equal but not the guider's list"
    assert rows.chunk_roles([pos, neg], None) is None
    assert rows.chunk_kinds([2, 0, 1], ("negative", "middle", "positive")) == ("positive", "negative", "middle")
    assert rows.chunk_kinds([1, 0], None) == ("negative", "positive")
    assert rows.chunk_kinds([0], None) == ("positive",)


def test_fpe_layers_drop_the_highest_attention_level_only():
    """fpe_layers keeps every level below the highest-resolution level that has self-attention: levels
    1-3 when attention starts at the latent resolution (SD1.x/2.x), level 2 when it starts at latent/2
    (SDXL); a single-level model keeps nothing."""
    from sae_math import layers

    def info(key, level):
        return layers.LayerInfo(key=key, module_path=key, width=8, level=level)

    sd = [info(f"input.{i}.0", lv) for i, lv in ((1, 0), (4, 1), (7, 2))] + [info("middle.0.0", 3)]
    assert [x.key for x in layers.fpe_layers(sd)] == ["input.4.0", "input.7.0", "middle.0.0"]
    xl = [info("input.4.0", 1), info("input.4.1", 1), info("input.7.0", 2), info("middle.0.0", 2)]
    assert [x.key for x in layers.fpe_layers(xl)] == ["input.7.0", "middle.0.0"]
    assert layers.fpe_layers([info("middle.0.0", 2)]) == []
    assert [x.key for x in layers.select_layers(xl, layers.FPE_PRESET)] == ["input.7.0", "middle.0.0"]


def test_sigma_window_bounds():
    """An evaluation exactly at the start bound is in, exactly at the end bound out (float32 rounding
    absorbed); end 1.0 (sigma bound 0) keeps every positive sigma."""
    from sae_math import swap_math as math_
    assert math_.sigma_in_window(5.0, 1.0, 5.0) and math_.sigma_in_window(5.0000001, 1.0, 5.0)
    assert not math_.sigma_in_window(1.0, 1.0, 5.0) and not math_.sigma_in_window(1.0000001, 1.0, 5.0)
    assert not math_.sigma_in_window(5.1, 1.0, 5.0)
    assert math_.sigma_in_window(1e-4, 0.0, 1e9)
