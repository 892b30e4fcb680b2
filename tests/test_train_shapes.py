"""The demo model's training tool: deterministic, and a resumed run computes what an uninterrupted one does
(a cut session loses nothing). Tiny step counts; the real run is scripts/train-shapes.sh."""

from __future__ import annotations

import argparse
import sys

import pytest
import torch

import testbed

sys.path.insert(0, str(testbed.REPO))

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def train():
    root = testbed.import_comfyui()
    version = (root / "comfyui_version.py").read_text()
    if '__version__ = "0.3.' not in version:
        # scripts/train-shapes.sh trains on the default test bed (ComfyUI 0.3.75); on 0.33 the trainer's
        # optimiser finds no trainable parameters in the modules ComfyUI builds (found in the session that
        # added the 0.33 pass, not yet investigated; the model it exports loads and samples on both).
        pytest.skip("the demo model's trainer runs on the ComfyUI 0.3.x test bed only (scripts/train-shapes.sh)")
    from tools import train_shapes

    return train_shapes


def args_for(run_dir, steps=None, pool=512):
    return argparse.Namespace(run_dir=run_dir, steps=steps, pool=pool, out=None, threads=1)


def stage_weights(run_dir, stage):
    state = torch.load(run_dir / f"{stage}.pt", weights_only=False)
    return state["step"], state["modules"]


def assert_same(a, b):
    assert a.keys() == b.keys()
    for key in a:
        for name, t in a[key].items():
            assert torch.equal(t, b[key][name]), f"{key}.{name}"


def run_straight_and_resumed(stage, straight, resumed, arch, split, total):
    """`stage` to step `total` in one run under `straight`, and to `split` then `total` under `resumed`."""
    stage(args_for(straight, steps=total), arch)
    stage(args_for(resumed, steps=split), arch)
    stage(args_for(resumed, steps=total), arch)


def test_resumed_training_equals_uninterrupted_training(train, tmp_path):
    arch = train._architecture()
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    for d in (straight, resumed):
        d.mkdir()
    run_straight_and_resumed(train.stage_vae, straight, resumed, arch, split=2, total=4)
    (s1, w1), (s2, w2) = stage_weights(straight, "vae"), stage_weights(resumed, "vae")
    assert s1 == s2 == 4
    assert_same(w1, w2)

    for d in (straight, resumed):
        train.stage_fold(args_for(d, pool=256), arch)
    a, b = torch.load(straight / "latents.pt"), torch.load(resumed / "latents.pt")
    assert torch.equal(a["latents"], b["latents"]) and torch.equal(a["captions"], b["captions"])
    # Folding makes SD15's scale factor give unit-variance latents (what every core node assumes).
    assert 0.8 < a["latents"].float().std() < 1.2

    run_straight_and_resumed(train.stage_unet, straight, resumed, arch, split=3, total=4)
    (s1, w1), (s2, w2) = stage_weights(straight, "unet"), stage_weights(resumed, "unet")
    assert s1 == s2 == 4
    assert_same(w1, w2)
    ema1 = torch.load(straight / "unet.pt", weights_only=False)["ema"]
    ema2 = torch.load(resumed / "unet.pt", weights_only=False)["ema"]
    assert all(torch.equal(x, y) for x, y in zip(ema1, ema2))


def test_exported_file_loads_as_a_demo_model(train, tmp_path, sae):
    arch = train._architecture()
    train.stage_vae(args_for(tmp_path, steps=1), arch)
    train.stage_fold(args_for(tmp_path, pool=64), arch)
    train.stage_unet(args_for(tmp_path, steps=1), arch)
    out = tmp_path / "demo.safetensors"
    train.stage_export(argparse.Namespace(run_dir=tmp_path, out=str(out)), arch)
    dm = sae("sae_patches.demo_model")
    assert dm.read_architecture(out) == arch
    model, clip, vae = dm.load_demo_checkpoint(out)
    assert model.model.diffusion_model.input_blocks[0][0].weight.dtype == torch.float32  # CPU computes in fp32
