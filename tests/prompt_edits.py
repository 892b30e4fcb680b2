"""Editing API-format prompts for server tests: find nodes, shrink example workflows to 64 px and few
steps (and a 64 px input image) so long server runs stay short on a CPU."""

from __future__ import annotations

import copy
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SMALL_IMAGE = "sae_small.png"


def small_input_image(server) -> None:
    """The examples' input image, resized to 64 px, in the server's input folder as SMALL_IMAGE."""
    from PIL import Image

    with Image.open(REPO / "tools" / "assets" / "sae_example.png") as im:
        im.convert("RGB").resize((64, 64)).save(server.tmp / "base" / "input" / SMALL_IMAGE)


def nodes_of(api: dict, class_type: str) -> list[dict]:
    return [n for n in api.values() if n["class_type"] == class_type]


def node_id(api: dict, class_type: str) -> str:
    return next(k for k, n in api.items() if n["class_type"] == class_type)


def shrink(api: dict, seed: int, steps: int = 2) -> dict:
    """The same graph at 64 px, `steps` steps, 2-element sweeps; seed varied so ComfyUI re-executes the
    samplers instead of serving its output cache."""
    api = copy.deepcopy(api)
    for n in api.values():
        inputs, kind = n["inputs"], n["class_type"]
        if kind == "EmptyLatentImage":
            inputs.update(width=64, height=64)
        elif kind == "KSampler":
            inputs.update(steps=steps, seed=seed)
        elif kind == "KSamplerAdvanced":
            inputs.update(steps=steps, noise_seed=seed)
        elif kind == "SAEdit_InvertLatent":
            inputs.update(steps=steps)
        elif kind == "SAEdit_RepeatLatentSameNoise":
            inputs.update(amount=2)
        elif kind == "SAEdit_ApplyLatentDirection" and inputs.get("alpha_sweep"):
            inputs.update(alpha_sweep="-0.4, 0.4")
        elif kind == "LoadImage":
            inputs.update(image=SMALL_IMAGE)
    return api


