"""Run as a script (a fresh process, so nothing of the pack is loaded yet): records the identity of every
attribute of ComfyUI's and torch's modules (and of the classes the pack works with), then loads the pack
through ComfyUI's loader, runs every node and samples with their outputs, and prints as JSON every
attribute that was rebound, added or removed. An empty list means no global monkeypatching."""

from __future__ import annotations

import importlib
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import testbed  # noqa: E402

MODULES = [
    "comfy.ldm.modules.attention", "comfy.ldm.modules.diffusionmodules.openaimodel", "comfy.model_patcher",
    "comfy.samplers", "comfy.sample", "comfy.model_management", "comfy.model_base", "comfy.patcher_extension",
    "comfy.lora", "comfy.utils", "comfy.ops", "comfy.k_diffusion.sampling", "comfy.model_sampling",
    "comfy.supported_models", "nodes", "folder_paths", "execution", "comfy_api.latest",
    "torch", "torch.nn", "torch.nn.functional", "torch.linalg", "safetensors.torch",
]
CLASSES = [
    ("comfy.model_patcher", "ModelPatcher"), ("comfy.ldm.modules.attention", "CrossAttention"),
    ("comfy.ldm.modules.attention", "BasicTransformerBlock"), ("comfy.ldm.modules.attention", "SpatialTransformer"),
    ("comfy.ldm.modules.diffusionmodules.openaimodel", "UNetModel"), ("comfy.samplers", "KSampler"),
    ("comfy.samplers", "CFGGuider"), ("comfy.model_base", "BaseModel"), ("torch.nn", "Module"),
    ("torch.nn", "Linear"), ("torch", "Tensor"),
]


def snapshot() -> dict[str, dict[str, int]]:
    out = {}
    for name in MODULES:
        mod = importlib.import_module(name)
        out[name] = {k: id(v) for k, v in vars(mod).items() if not k.startswith("__")}
    for mod_name, cls_name in CLASSES:
        cls = getattr(importlib.import_module(mod_name), cls_name)
        out[f"{mod_name}.{cls_name}"] = {k: id(v) for k, v in vars(cls).items() if not k.startswith("__")}
    return out


def run_every_node() -> None:
    import torch

    sae = testbed.pack_module
    nd, na, ns, nb = (sae(f"nodes.{m}") for m in ("node_directions", "node_apply", "node_swap", "node_batch"))
    import folder_paths

    model = testbed.tiny_model("sd15")
    d = nd.ComputeAttentionEigendirections.execute(model, "all", 2, "").args[0]
    nd.SaveAttentionDirections.execute(d, "attention_directions/probe")
    nd.register_folder()
    name = folder_paths.get_filename_list("attention_directions")[0]
    d = nd.LoadAttentionDirections.execute(name).args[0]
    edited = na.ApplyLatentDirection.execute(model, d, 0, 0.3, 0.5, 0.8, "relative to token norm", "", "").args[0]
    pos, neg = testbed.tiny_conditioning("sd15", 1), testbed.tiny_conditioning("sd15", 2)
    testbed.sample(edited, pos, neg, testbed.empty_latent(1), steps=3)
    noise, inv = sae("nodes.node_invert").InvertLatent.execute(model, pos, {"samples": torch.randn(1, 4, 16, 16)}, 3, "normal").args[:2]
    swapped = ns.SelfAttentionSwap.execute(edited, "below latent resolution (FPE default)", 0.0, 0.8,
                                           "conditional only", "", inv, True).args[0]
    cond = ns.PairConditioning.execute(pos, testbed.tiny_conditioning("sd15", 3)).args[0]
    lat = ns.MakePairs.execute(noise).args[0]
    out = testbed.sample(swapped, cond, neg, lat["samples"], batch_index=lat["batch_index"], steps=3)
    ns.SplitPairs.execute(out.movedim(1, -1)[..., :3])
    rep = nb.RepeatLatentSameNoise.execute({"samples": testbed.empty_latent(1)}, 3).args[0]
    nb.ImageGrid.execute(torch.zeros(rep["samples"].shape[0], 8, 8, 3), 2, 1)


def main() -> int:
    testbed.import_comfyui()
    import folder_paths

    folder_paths.set_output_directory(tempfile.mkdtemp())  # the probe's own setting, before the snapshot
    before = snapshot()
    testbed.load_pack()
    run_every_node()
    if "--self-test" in sys.argv:  # what a monkeypatching pack would do: the probe must report it
        import comfy.samplers

        original = comfy.samplers.sampling_function
        comfy.samplers.sampling_function = lambda *a, **k: original(*a, **k)
    after = snapshot()
    changes = []
    for scope, attrs in before.items():
        for k in sorted(set(attrs) | set(after[scope])):
            if attrs.get(k) != after[scope].get(k):
                changes.append(f"{scope}.{k}: {'added' if k not in attrs else 'removed' if k not in after[scope] else 'rebound'}")
    print(json.dumps(changes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
