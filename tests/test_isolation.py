"""Isolation: our nodes never change their inputs, other prompts, other clones or ComfyUI itself.

- Through a real server: an unpatched prompt gives a bit-identical image before and after prompts using
  directions, the swap and inversion on the same (cached) checkpoint.
- In process: applying a node twice never changes the first result; clones share no mutable state;
  patch objects follow ModelPatcher's device and dtype moves; no global monkeypatching (checked in a
  fresh process that snapshots every attribute of ComfyUI's and torch's modules).
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import testbed
from prompt_edits import node_id, shrink, small_input_image
from snapshots import snapshot, unchanged
from tools.workflow_convert import ui_to_api

REPO = Path(__file__).resolve().parent.parent
RELATIVE = "relative to token norm"
FPE = "below latent resolution (FPE default)"


def pixels(server, entry) -> list[np.ndarray]:
    out = []
    for path in server.output_files(entry):
        with Image.open(path) as im:
            out.append(np.asarray(im.convert("RGB")).copy())
    return out


@pytest.mark.server
@pytest.mark.slow
def test_unpatched_prompt_is_bit_identical_before_and_after_patched_prompts(comfy_server, object_info):
    """Same server, same cached checkpoint: a plain txt2img prompt, then prompts with directions, the swap
    and inversion, then the plain prompt again (its sampler really re-executed, not served from cache):
    identical pixels."""
    server = comfy_server
    small_input_image(server)
    plain = shrink(ui_to_api(json.loads((REPO / "tests" / "workflows" / "core_txt2img.json").read_text()),
                             object_info), seed=5)
    sampler = node_id(plain, "KSampler")
    first = server.run(plain)
    for name in ("single_direction_edit", "prompt_edit_swap", "real_image_edit", "direction_with_swap"):
        wf = json.loads((REPO / "example_workflows" / f"{name}.json").read_text())
        server.run(shrink(ui_to_api(wf, object_info), seed=5), timeout=600)
    again = server.run(copy.deepcopy(plain))
    cached = [n for kind, d in again["status"]["messages"] if kind == "execution_cached" for n in d["nodes"]]
    assert sampler not in cached, "the plain sampler must run again, not come from ComfyUI's cache"
    a, b = pixels(server, first), pixels(server, again)
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        assert np.array_equal(x, y)


def directions_and_nodes(sae):
    model = testbed.tiny_model("sd15")
    d = sae("nodes.node_directions").ComputeAttentionEigendirections.execute(model, "all", 2, "").args[0]
    return model, d


def apply(sae, model, d, alpha=0.3, index=0):
    return sae("nodes.node_apply").ApplyLatentDirection.execute(model, d, index, alpha, 0.5, 0.8, RELATIVE, "", "").args[0]


def swap(sae, model, inversion=None):
    return sae("nodes.node_swap").SelfAttentionSwap.execute(model, FPE, 0.0, 0.8, "conditional only", "",
                                                            inversion, True).args[0]


def run_pairs(sae, model):
    ns = sae("nodes.node_swap")
    cond = ns.PairConditioning.execute(testbed.tiny_conditioning("sd15", 1), testbed.tiny_conditioning("sd15", 2)).args[0]
    lat = ns.MakePairs.execute({"samples": testbed.empty_latent(1)}).args[0]
    return testbed.sample(model, cond, testbed.tiny_conditioning("sd15", 3), lat["samples"],
                          batch_index=lat["batch_index"], steps=4)


def test_applying_a_node_twice_never_changes_the_first_result(sae):
    """A node applied again (to the same input, or chained on its own output) leaves the first output
    sampling exactly as before, and leaves the input model, directions and inversion unchanged."""
    model, d = directions_and_nodes(sae)
    snap_model, snap_d = snapshot(model), snapshot(d)
    once = apply(sae, model, d)
    r1 = run_pairs(sae, once)
    apply(sae, model, d, alpha=-0.3)
    apply(sae, once, d, alpha=0.2, index=1)
    assert torch.equal(run_pairs(sae, once), r1)

    s1 = swap(sae, model)
    r2 = run_pairs(sae, s1)
    swap(sae, model)
    swap(sae, s1)
    assert torch.equal(run_pairs(sae, s1), r2)

    ns = sae("nodes.node_invert")
    _, inv = ns.InvertLatent.execute(model, testbed.tiny_conditioning("sd15", 1),
                                     {"samples": torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(1))},
                                     4, "normal").args[:2]
    snap_inv = snapshot(inv.latents)
    p1 = swap(sae, model, inv)
    r3 = run_pairs(sae, p1)
    swap(sae, p1, inv)
    assert torch.equal(run_pairs(sae, p1), r3)
    assert unchanged(snap_inv, inv.latents)

    d2 = sae("nodes.node_directions").ComputeAttentionEigendirections.execute(model, "all", 4, "").args[0]
    assert d2.k == 4 and unchanged(snap_d, d)
    assert unchanged(snap_model, model)


def containers(obj, path="model_options"):
    """Every dict/list reachable in model_options, with its path."""
    if isinstance(obj, dict):
        yield path, obj
        for k, v in obj.items():
            yield from containers(v, f"{path}[{k!r}]")
    elif isinstance(obj, list):
        yield path, obj
        for i, v in enumerate(obj):
            yield from containers(v, f"{path}[{i}]")


def forget_meta_patches(model):
    """Tensors on "meta" hold no data and cannot move back: drop them before the patcher is collected."""
    model.model_options["transformer_options"].pop("patches", None)
    model.model_options["transformer_options"].pop("patches_replace", None)


def test_clones_share_no_mutable_state(sae):
    """A clone of a patched model shares no dict or list of model_options with it, and the patch objects
    they share are immutable: moving or patching the clone never changes the original."""
    model, d = directions_and_nodes(sae)
    patched = swap(sae, apply(sae, model, d))
    snap = snapshot(patched)
    clone = patched.clone()
    mine = {id(c): p for p, c in containers(patched.model_options)}
    shared = [p for p, c in containers(clone.model_options) if id(c) in mine]
    assert not shared, shared
    direction_cls = sae("sae_patches.direction_patch").LatentDirectionPatch
    for p in clone.model_options["transformer_options"]["patches"]["attn1_patch"]:
        if isinstance(p, direction_cls):
            for v in p.vectors.values():
                assert not v.requires_grad
    clone.model_patches_to(torch.device("meta"))
    clone.model_patches_to(torch.float16)
    apply(sae, clone, d, alpha=0.1)
    swap(sae, clone)
    clone.set_model_attn1_patch(lambda n, c, v, e: (n, c, v))
    assert unchanged(snap, patched)
    forget_meta_patches(clone)


def test_patch_objects_follow_device_and_dtype_moves(sae):
    """ModelPatcher.model_patches_to(device) then (dtype), as ComfyUI's loader calls them: our patch
    objects come back moved (vectors on the new device, kept in float32 for precision), a foreign replace
    wrapped by the swap is moved too, the input model's patch objects stay where they were, and a clone
    moved to (cpu, float16) samples exactly like the unmoved model."""
    model, d = directions_and_nodes(sae)

    class Movable:
        def __init__(self, device="cpu"):
            self.device = device

        def to(self, device_or_dtype):
            return Movable(device_or_dtype) if isinstance(device_or_dtype, torch.device) else self

        def __call__(self, q, k, v, extra):
            from comfy.ldm.modules.attention import optimized_attention

            return optimized_attention(q, k, v, extra["n_heads"])

    foreign = model.clone()
    foreign.set_model_attn1_replace(Movable(), "middle", 0, 0)
    patched = swap(sae, apply(sae, foreign, d))
    reference = run_pairs(sae, patched)
    moved = patched.clone()
    moved.model_patches_to(torch.device("meta"))
    moved.model_patches_to(torch.float16)
    to = moved.model_options["transformer_options"]
    direction_cls = sae("sae_patches.direction_patch").LatentDirectionPatch
    ours = [p for p in to["patches"]["attn1_patch"] if isinstance(p, direction_cls)]
    assert ours and all(v.device.type == "meta" and v.dtype == torch.float32 for p in ours for v in p.vectors.values())
    inner = to["patches_replace"]["attn1"][("middle", 0, 0)].inner
    assert isinstance(inner, Movable) and inner.device == torch.device("meta")
    original = patched.model_options["transformer_options"]
    assert all(v.device.type == "cpu" for p in original["patches"]["attn1_patch"] if isinstance(p, direction_cls)
               for v in p.vectors.values())
    assert torch.device(original["patches_replace"]["attn1"][("middle", 0, 0)].inner.device).type == "cpu"
    forget_meta_patches(moved)
    again = patched.clone()
    again.model_patches_to(torch.device("cpu"))
    again.model_patches_to(torch.float16)
    assert torch.equal(run_pairs(sae, again), reference)


def test_no_global_monkeypatching():
    """In a fresh process: loading the pack and running every node (and sampling with them) rebinds,
    adds or removes no attribute of ComfyUI's or torch's modules or of the classes the pack uses. The
    probe's self-test (which monkeypatches comfy.samplers on purpose) shows the check can fail."""
    probe = Path(__file__).resolve().parent / "global_state_probe.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def changes(*args):
        out = subprocess.run([sys.executable, str(probe), *args], capture_output=True, text=True, env=env,
                             timeout=600, cwd=str(REPO))
        assert out.returncode == 0, out.stderr[-3000:]
        return json.loads(out.stdout.strip().splitlines()[-1])

    assert changes() == []
    assert changes("--self-test") == ["comfy.samplers.sampling_function: rebound"]
