"""Composition matrix: our nodes (Apply Latent Direction, Self-Attention Swap, both) with LoRA weight
patches, core PAG, SAG, FreeU, HyperTile, UNet self-attention multiply, and another pack's attn1_patch and
attn1 replace on the same blocks, applied before and after ours. Each pair is sampled on a tiny SD1.5 UNet,
must be finite and deterministic, and is checked against its known effect (docs/composition.md)."""

from __future__ import annotations

import random

import pytest
import torch

import testbed

RELATIVE = "relative to token norm"
FPE = "below latent resolution (FPE default)"
STEPS = 4


def node_out(result):
    """First output of a core node, V3 (NodeOutput) or V1 (tuple)."""
    return result.args[0] if hasattr(result, "args") else result[0]


def core(cls, *args):
    """Run a core node, V3 (classmethod execute) or V1 (FUNCTION on an instance; ComfyUI <= 0.3.5x),
    and return its first output."""
    if hasattr(cls, "execute"):
        return node_out(cls.execute(*args))
    return node_out(getattr(cls(), cls.FUNCTION)(*args))


class Counter:
    """Another pack's attn1_patch / attn1 replace: counts calls per layer, identity otherwise.
    Immutable for ComfyUI's deepcopy (a real pack would keep such state in a closure)."""

    def __init__(self):
        self.calls: dict[str, int] = {}

    def __deepcopy__(self, memo):
        return self

    def note(self, extra):
        key = f"{extra['block'][0]}.{extra['block'][1]}.{extra['block_index']}"
        self.calls[key] = self.calls.get(key, 0) + 1

    def patch(self, n, c, v, extra):
        self.note(extra)
        return n, c, v

    def replace(self, q, k, v, extra):
        from comfy.ldm.modules.attention import optimized_attention

        self.note(extra)
        return optimized_attention(q, k, v, extra["n_heads"])


def lora(model):
    """A LoRA-like weight patch (ModelPatcher.add_patches) on attn1 and attn2 projections of the middle
    and an output block."""
    m = model.clone()
    g = torch.Generator().manual_seed(11)
    sd = model.model_state_dict()
    patches = {k: (0.05 * torch.randn(sd[k].shape, generator=g),) for k in sorted(sd)
               if (".middle_block.1." in k or ".output_blocks.4.1." in k) and k.endswith(("to_q.weight", "to_v.weight"))}
    assert patches
    m.add_patches(patches, 1.0)
    return m


def foreign_attn1_patch(model, counter):
    m = model.clone()
    m.set_model_attn1_patch(counter.patch)
    return m


def foreign_attn1_replace(model, counter):
    """Like a third-party pack: one replace per swapped block, block-wide key, plus an exact key on one."""
    m = model.clone()
    for block, idx in (("input", 4), ("input", 7), ("middle", 0), ("output", 4)):
        m.set_model_attn1_replace(counter.replace, block, idx)
    m.set_model_attn1_replace(counter.replace, "output", 3, 0)
    return m


def others():
    import comfy_extras.nodes_attention_multiply as am
    import comfy_extras.nodes_freelunch as fl
    import comfy_extras.nodes_hypertile as ht
    import comfy_extras.nodes_pag as pag
    import comfy_extras.nodes_sag as sag

    return {
        "lora": lambda m, c: lora(m),
        "pag": lambda m, c: core(pag.PerturbedAttentionGuidance, m, 3.0),
        "sag": lambda m, c: core(sag.SelfAttentionGuidance, m, 0.5, 2.0),
        "freeu": lambda m, c: core(fl.FreeU, m, 1.3, 1.4, 0.9, 0.2),
        # tile_size 32 -> 4x4-token tiles: the 16x16 latent's level-1 layers (swapped ones) are tiled 2x2.
        "hypertile": lambda m, c: core(ht.HyperTile, m, 32, 1, 1, False),
        "attn_multiply": lambda m, c: core(am.UNetSelfAttentionMultiply, m, 1.0, 1.2, 0.8, 1.0),
        "foreign_attn1_patch": foreign_attn1_patch,
        "foreign_attn1_replace": foreign_attn1_replace,
    }


OTHERS = ("lora", "pag", "sag", "freeu", "hypertile", "attn_multiply", "foreign_attn1_patch", "foreign_attn1_replace")
OURS = ("direction", "swap", "direction+swap", "two_directions")


@pytest.fixture(scope="module")
def bed(pack):
    sae = testbed.pack_module
    model = testbed.tiny_model("sd15")
    directions = sae("nodes.node_directions").ComputeAttentionEigendirections.execute(model, "all", 2, "").args[0]
    swap_nodes = sae("nodes.node_swap")
    cond = swap_nodes.PairConditioning.execute(testbed.tiny_conditioning("sd15", 1),
                                               testbed.tiny_conditioning("sd15", 2)).args[0]
    latent = swap_nodes.MakePairs.execute({"samples": testbed.empty_latent(1)}).args[0]
    return {"sae": sae, "model": model, "d": directions, "cond": cond, "neg": testbed.tiny_conditioning("sd15", 3),
            "latent": latent}


def ours(bed, name, model):
    sae = bed["sae"]
    apply_node = sae("nodes.node_apply").ApplyLatentDirection
    swap_node = sae("nodes.node_swap").SelfAttentionSwap

    def direction(m, index=0, sweep="0, 0.4"):
        # alpha 0 on sources, 0.4 on targets: the source rows stay a plain generation.
        return apply_node.execute(m, bed["d"], index, 0.0, 0.5, 0.8, RELATIVE, "", sweep).args[0]

    def swap(m):
        return swap_node.execute(m, FPE, 0.0, 0.8, "conditional only", "", None, True).args[0]

    if name == "direction":
        return direction(model)
    if name == "swap":
        return swap(model)
    if name == "direction+swap":
        return swap(direction(model))
    if name == "two_directions":
        return direction(direction(model), index=1, sweep="0, -0.3")
    raise ValueError(name)


def run(bed, model):
    random.seed(0)  # HyperTile picks tile counts with Python's global random
    lat = bed["latent"]
    return testbed.sample(model, bed["cond"], bed["neg"], lat["samples"], batch_index=lat["batch_index"], steps=STEPS)


@pytest.mark.parametrize("order", ["ours_last", "ours_first"])
@pytest.mark.parametrize("other", OTHERS)
@pytest.mark.parametrize("mine", OURS)
def test_pair_is_finite_deterministic_and_keeps_its_known_effect(bed, mine, other, order):
    """Sampled twice: finite and bit-identical. Known effects: our edit still changes the target (vs the
    other node alone); sources stay what the other node alone gives (our nodes touch target rows only);
    the other node still acts (vs ours alone), and a foreign patch/replace is still called on every
    layer it was registered for (the swap calls through a foreign replace registered before it; one
    registered after it takes the layer over, as documented)."""
    counter = Counter()
    make_other = others()[other]
    base = bed["model"]
    if order == "ours_last":
        model = ours(bed, mine, make_other(base, counter))
    else:
        model = make_other(ours(bed, mine, base), counter)
    counter.calls.clear()
    first = run(bed, model)
    calls = dict(counter.calls)
    second = run(bed, model)
    assert torch.isfinite(first).all()
    assert torch.equal(first, second), "the same graph and seed must give the same latent"

    other_alone = run(bed, make_other(base, Counter()))
    ours_alone = run(bed, ours(bed, mine, base))
    plain = run(bed, base)
    assert not torch.equal(first[1], other_alone[1]), "our edit still changes the target"
    if not (other == "foreign_attn1_replace" and order == "ours_first" and "swap" in mine):
        # Sources are the other node's plain generation. (Exception, documented: a replace registered
        # after the swap takes its layers over; then the swap is not there to leave sources alone.)
        torch.testing.assert_close(first[0], other_alone[0], rtol=0, atol=1e-5)
    if other not in ("foreign_attn1_patch", "foreign_attn1_replace"):
        assert not torch.equal(first, ours_alone), f"{other} still acts next to our nodes"
        assert not torch.equal(other_alone, plain)
    if other == "foreign_attn1_patch":
        assert set(calls) == {layer.key for layer in bed["d"].layers}, "called on every layer"
    if other == "foreign_attn1_replace":
        registered = {"input.4.0", "input.7.0", "middle.0.0", "output.4.0", "output.3.0"}
        assert set(calls) == registered, calls


def test_swap_keeps_pag_working(bed):
    """Core PAG replaces the middle block's attention (block-wide key) for its extra pass. The swap
    registers block-wide keys for whole blocks, so PAG's pass overrides it there as PAG intends: PAG
    after the swap changes the result exactly as much as PAG before it (an exact-key swap would have
    silently disabled PAG)."""
    import comfy_extras.nodes_pag as pag

    base = bed["model"]
    swapped = ours(bed, "swap", base)
    keys = set(swapped.model_options["transformer_options"]["patches_replace"]["attn1"])
    assert ("middle", 0) in keys and not any(len(k) == 3 for k in keys), keys
    pag_after = run(bed, core(pag.PerturbedAttentionGuidance, swapped, 3.0))
    pag_before = run(bed, ours(bed, "swap", core(pag.PerturbedAttentionGuidance, base, 3.0)))
    swap_only = run(bed, swapped)
    assert not torch.equal(pag_after, swap_only)
    assert torch.equal(pag_after, pag_before)


def test_swap_under_hypertile_pairs_tiles_of_the_same_region(bed):
    """HyperTile splits each row's tokens into tiles before attention ((b nh nw) rows). The swap pairs
    tile j of a target with tile j of its source: the source rows stay exactly HyperTile's own result
    and the swap still pulls the target (identical prompts: the target equals the source)."""
    import comfy_extras.nodes_hypertile as ht

    sae = bed["sae"]
    same = sae("nodes.node_swap").PairConditioning.execute(testbed.tiny_conditioning("sd15", 1),
                                                          testbed.tiny_conditioning("sd15", 1)).args[0]
    tiled = core(ht.HyperTile, bed["model"], 32, 1, 1, False)
    lat = bed["latent"]

    def sample(m, cond):
        random.seed(0)
        return testbed.sample(m, cond, bed["neg"], lat["samples"], batch_index=lat["batch_index"], steps=STEPS)

    alone = sample(tiled, bed["cond"])
    both = sample(ours(bed, "swap", tiled), bed["cond"])
    assert torch.equal(both[0], alone[0]), "sources untouched"
    assert not torch.equal(both[1], alone[1])
    ident = sample(ours(bed, "swap", tiled), same)
    assert torch.equal(ident[1], ident[0]), "same prompt: the tile-wise swap reproduces the source"


def test_direction_before_or_after_weight_patches_is_the_same(bed):
    """Apply Latent Direction (an attn1_patch on activations) commutes with weight patches (LoRA, UNet
    self-attention multiply) and FreeU (output-block patch): node order does not change the image."""
    import comfy_extras.nodes_attention_multiply as am
    import comfy_extras.nodes_freelunch as fl

    base = bed["model"]
    for make in (lora, lambda m: core(am.UNetSelfAttentionMultiply, m, 1.0, 1.2, 0.8, 1.0),
                 lambda m: core(fl.FreeU, m, 1.3, 1.4, 0.9, 0.2)):
        a = run(bed, ours(bed, "direction", make(base)))
        b = run(bed, make(ours(bed, "direction", base)))
        assert torch.equal(a, b)


def test_sag_after_swap_takes_the_middle_layer_documented(bed):
    """Core SAG registers an exact-key replace on middle.0.0 to record attention. Placed after the swap,
    it takes that layer over (ComfyUI keeps one replace per key); placed before, the swap calls through
    it and both act. Documented in docs/composition.md: put SAG before Self-Attention Swap."""
    import comfy_extras.nodes_sag as sag

    base = bed["model"]
    before = ours(bed, "swap", core(sag.SelfAttentionGuidance, base, 0.5, 2.0))
    after = core(sag.SelfAttentionGuidance, ours(bed, "swap", base), 0.5, 2.0)
    patch_cls = bed["sae"]("sae_patches.swap_patch").SelfAttentionSwapPatch
    rep_before = before.model_options["transformer_options"]["patches_replace"]["attn1"]
    rep_after = after.model_options["transformer_options"]["patches_replace"]["attn1"]
    assert isinstance(rep_before[("middle", 0, 0)], patch_cls)
    assert rep_before[("middle", 0, 0)].inner is not None, "the swap wraps SAG's recorder"
    assert not isinstance(rep_after[("middle", 0, 0)], patch_cls), "SAG after the swap owns middle.0.0"
    assert all(isinstance(p, patch_cls) for k, p in rep_after.items() if k != ("middle", 0, 0))
