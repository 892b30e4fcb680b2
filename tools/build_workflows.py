"""Builds the example workflows in ComfyUI's UI (front-end) format from short Python descriptions.

Widget order and socket types come from the node definitions of a real ComfyUI with the pack loaded,
so the files load in the front end without widget errors. Run:
    $SAE_VENV/bin/python tools/build_workflows.py      (writes example_workflows/*.json)
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

SEED_WIDGETS = {"seed", "noise_seed"}
# Every workflow starts from the shapes-world demo model the pack ships (real edits on any machine, in
# seconds on a CPU); swap its loader for Load Checkpoint (and the prompts) to edit with your own model.
DEMO_LOADER = "SAEdit_LoadShapesDemoModel"
DEMO_CHECKPOINT = "shapes-world demo (embedded)"
SIZE = 64  # the demo model's image size; use 512 with an SD1.5 checkpoint, 1024 with SDXL
STEPS = 20
CFG = 5.0


class Graph:
    def __init__(self, defs):
        self.defs = defs
        self.nodes, self.links = [], []
        self.extra = {}

    def add(self, type_, **kwargs):
        d = self.defs[type_]
        node_id = len(self.nodes) + 1
        inputs, widgets = [], []
        for name, spec, optional in d["inputs"]:
            value = kwargs.pop(name, None)
            kind = spec[0]
            is_widget = isinstance(kind, list) or kind in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
            if isinstance(value, tuple):  # a link: (node, output slot)
                src, slot = value
                link_id = len(self.links) + 1
                stype = self.nodes[src - 1]["outputs"][slot]["type"]
                self.links.append([link_id, src, slot, node_id, len(inputs), stype])
                self.nodes[src - 1]["outputs"][slot]["links"].append(link_id)
                entry = {"name": name, "type": stype, "link": link_id}
                if is_widget:
                    entry["widget"] = {"name": name}
                    widgets.append(None)
                inputs.append(entry)
            elif is_widget:
                if value is None:
                    value = spec[1].get("default") if len(spec) > 1 else None
                    if value is None and isinstance(kind, list):
                        value = kind[0]
                widgets.append(value)
                if name in SEED_WIDGETS:
                    widgets.append("fixed")  # the front end's control_after_generate value
            elif not optional:
                raise ValueError(f"{type_}: required input {name} not connected")
        if kwargs:
            raise ValueError(f"{type_}: unknown inputs {sorted(kwargs)}")
        outputs = [{"name": n, "type": t, "links": [], "slot_index": i}
                   for i, (t, n) in enumerate(zip(d["return_types"], d["return_names"]))]
        self.nodes.append({
            "id": node_id, "type": type_, "pos": [0, 0], "size": [320, 120], "flags": {}, "order": node_id - 1,
            "mode": 0, "inputs": inputs, "outputs": outputs, "properties": {"Node name for S&R": type_},
            "widgets_values": widgets})
        return node_id

    def note(self, text):
        """A front-end Note node (no backend class: the API conversion drops it, as the front end does)."""
        node_id = len(self.nodes) + 1
        self.nodes.append({
            "id": node_id, "type": "Note", "pos": [0, 0], "size": [420, 220], "flags": {}, "order": node_id - 1,
            "mode": 0, "inputs": [], "outputs": [], "properties": {"text": ""}, "widgets_values": [text]})
        return node_id

    def out(self, node_id, slot=0):
        return (node_id, slot)

    def to_json(self, title):
        # Lay nodes out left to right by dependency depth so the graph is readable when opened.
        depth = {}
        for n in self.nodes:
            srcs = [lk[1] for lk in self.links if lk[3] == n["id"]]
            depth[n["id"]] = 1 + max((depth[s] for s in srcs), default=-1)
        rows = {}
        for n in self.nodes:
            col = depth[n["id"]]
            row = rows.get(col, 0)
            rows[col] = row + 1
            n["pos"] = [40 + 380 * col, 40 + 220 * row]
        return {"last_node_id": len(self.nodes), "last_link_id": len(self.links), "nodes": self.nodes,
                "links": self.links, "groups": [], "config": {}, "extra": {"sae_title": title, **self.extra},
                "version": 0.4}


def node_defs():
    import testbed

    testbed.load_pack()
    import asyncio

    import nodes

    # Core nodes the Flux workflows use that live in comfy_extras (FluxGuidance, EmptySD3LatentImage): loaded
    # the way the server loads them, only these two files.
    extras = Path(nodes.__file__).resolve().parent / "comfy_extras"
    for name in ("nodes_flux.py", "nodes_sd3.py"):
        if not asyncio.run(nodes.load_custom_node(str(extras / name), module_parent="comfy_extras")):
            raise RuntimeError(f"ComfyUI's comfy_extras/{name} did not load")

    defs = {}
    for name, cls in nodes.NODE_CLASS_MAPPINGS.items():
        it = cls.INPUT_TYPES()
        inputs = []
        for section, optional in (("required", False), ("optional", True)):
            for k, spec in it.get(section, {}).items():
                inputs.append((k, spec if isinstance(spec, (list, tuple)) else (spec,), optional))
        rt = list(cls.RETURN_TYPES)
        rn = list(getattr(cls, "RETURN_NAMES", None) or rt)
        defs[name] = {"inputs": inputs, "return_types": rt, "return_names": rn}
    return defs


# The demo workflows' edit settings, from the semantic benchmark on the demo model (docs/semantic.md, 64 seeds):
# the paper's alpha range (+-0.4) and the middle block move nothing the analyser can see on this model; on
# every layer, alpha +-2 x token norm moves the shape's size by about one independent generation's change,
# at +-4 most pictures break; the swap keeps the most layout with every layer swapped to end 0.8 (colour
# edit: 7.7 px against 11.5 px with FPE's layers, 14.1 px without). The single edits use the one direction
# and sign that changes the size that much and keeps the picture (bench/semantic_demo.py: direction 1 at
# alpha -2 shrinks the shape, size change 1.07, clean 0.89 against 0.92 unedited; direction 0 at +2, the
# earlier choice, 0.86 with clean 0.52). The nodes' own defaults stay the papers' (their models are not this
# toy); these are the demo's.
DEMO_DIRECTION_LAYERS = "all"
DEMO_ALPHA_SWEEP = "-4, -2, 0, 2, 4"
DEMO_DIRECTION_INDEX = 1
DEMO_ALPHA = -2.0
DEMO_SWAP_LAYERS = "all"
FPE_LAYERS = "below latent resolution (FPE default)"


@dataclass(frozen=True)
class Profile:
    """One model the demo graphs are built for. The SD1.5 / SDXL twins keep every graph's structure and
    prompts and take the papers' settings (middle block, alpha -0.4..0.4, the swap's FPE layers) at the
    model's native size and step count; they need a checkpoint this machine does not have
    (extra.sae_requires), so they are converted and loaded in the tests, never run there."""

    suffix: str
    size: int
    steps: int
    cfg: float
    direction_layers: str
    alpha_sweep: str
    alpha: float
    swap_layers: str
    checkpoint: str | None = None  # None: the embedded demo model
    title: str = ""
    direction_index: int = 0  # the single edits' direction (the explorer shows 0, 1, 2)


DEMO = Profile("", SIZE, STEPS, CFG, DEMO_DIRECTION_LAYERS, DEMO_ALPHA_SWEEP, DEMO_ALPHA, DEMO_SWAP_LAYERS,
               direction_index=DEMO_DIRECTION_INDEX)
TWINS = (
    Profile("_sd15", 512, 30, 7.0, "middle block", "-0.4, -0.2, 0, 0.2, 0.4", 0.3, FPE_LAYERS,
            "v1-5-pruned-emaonly.safetensors", "SD1.5"),
    Profile("_sdxl", 1024, 30, 6.0, "middle block", "-0.4, -0.2, 0, 0.2, 0.4", 0.3, FPE_LAYERS,
            "sd_xl_base_1.0.safetensors", "SDXL"),
)


def base(g, p: Profile = DEMO):
    """The loader (the demo model, or the twin's checkpoint) and the empty negative prompt."""
    if p.checkpoint is None:
        ckpt = g.add(DEMO_LOADER, checkpoint=DEMO_CHECKPOINT)
    else:
        g.extra["sae_requires"] = {"models": {"checkpoints": [p.checkpoint]},
                                   "reason": f"needs a {p.title} checkpoint ({p.checkpoint}), which the test machines "
                                             "do not have"}
        g.note(f"The {p.title} twin of the demo-model workflow of the same name: the same graph and prompts at "
               f"{p.size} px, {p.steps} steps, cfg {p.cfg:g}, with the papers' settings (directions of the "
               f"'{p.direction_layers}' layers, alpha {p.alpha_sweep}; the swap's FPE layers). Put "
               f"{p.checkpoint} (or any {p.title} checkpoint) in models/checkpoints. The demo model's settings "
               "differ because they were measured on it (docs/semantic.md); these were not measured here.")
        ckpt = g.add("CheckpointLoaderSimple", ckpt_name=p.checkpoint)
    neg = g.add("CLIPTextEncode", clip=g.out(ckpt, 1), text="")  # the demo model's unconditional caption
    return ckpt, neg


def _swap_kwargs(p: Profile) -> dict:
    return {} if p.swap_layers == FPE_LAYERS else {"layers": p.swap_layers}


def direction_explorer(g, p: Profile = DEMO):
    ckpt, neg = base(g, p)
    pos = g.add("CLIPTextEncode", clip=g.out(ckpt, 1), text="a red circle on a gray background")
    dirs = g.add("SAEdit_ComputeEigendirections", model=g.out(ckpt), layers=p.direction_layers, top_k=8)
    lat = g.add("SAEdit_RepeatLatentSameNoise", latent=g.out(g.add("EmptyLatentImage", width=p.size, height=p.size,
                                                                   batch_size=1)), amount=5)
    images = None
    for index in range(3):
        m = g.add("SAEdit_ApplyLatentDirection", model=g.out(ckpt), directions=g.out(dirs), index=index,
                  alpha_sweep=p.alpha_sweep)
        s = g.add("KSampler", model=g.out(m), positive=g.out(pos), negative=g.out(neg), latent_image=g.out(lat),
                  seed=42, steps=p.steps, cfg=p.cfg, sampler_name="euler", scheduler="normal")
        img = g.add("VAEDecode", samples=g.out(s), vae=g.out(ckpt, 2))
        images = img if images is None else g.add("ImageBatch", image1=g.out(images), image2=g.out(img))
    grid = g.add("SAEdit_ImageGrid", images=g.out(images), columns=5)
    g.add("SaveImage", images=g.out(grid), filename_prefix="sae/direction_explorer")
    return 1, (grid_size(5, 3, p.size),)


def grid_size(cols, rows, size=SIZE, gap=4):
    return (cols * size + (cols - 1) * gap, rows * size + (rows - 1) * gap)


def single_direction_edit(g, p: Profile = DEMO):
    ckpt, neg = base(g, p)
    pos = g.add("CLIPTextEncode", clip=g.out(ckpt, 1), text="a blue square on a white background")
    dirs = g.add("SAEdit_ComputeEigendirections", model=g.out(ckpt), layers=p.direction_layers, top_k=4)
    m = g.add("SAEdit_ApplyLatentDirection", model=g.out(ckpt), directions=g.out(dirs), index=p.direction_index,
              alpha=p.alpha)
    lat = g.add("EmptyLatentImage", width=p.size, height=p.size, batch_size=1)
    images = []
    for model in (g.out(ckpt), g.out(m)):
        s = g.add("KSampler", model=model, positive=g.out(pos), negative=g.out(neg), latent_image=g.out(lat),
                  seed=7, steps=p.steps, cfg=p.cfg, sampler_name="euler", scheduler="normal")
        images.append(g.add("VAEDecode", samples=g.out(s), vae=g.out(ckpt, 2)))
    both = g.add("ImageBatch", image1=g.out(images[0]), image2=g.out(images[1]))
    g.add("SaveImage", images=g.out(both), filename_prefix="sae/single_direction_edit")
    return 2, ((p.size, p.size),)


def _pairs_sampling(g, ckpt, neg, model, src_text, tgt_text, latent, prefix, p: Profile, advanced=False):
    src = g.add("CLIPTextEncode", clip=g.out(ckpt, 1), text=src_text)
    tgt = g.add("CLIPTextEncode", clip=g.out(ckpt, 1), text=tgt_text)
    cond = g.add("SAEdit_PairConditioning", source=g.out(src), target=g.out(tgt))
    pairs = g.add("SAEdit_MakePairs", latent=latent)
    if advanced:
        s = g.add("KSamplerAdvanced", model=model, add_noise="disable", noise_seed=0, steps=p.steps, cfg=p.cfg,
                  sampler_name="euler", scheduler="normal", positive=g.out(cond), negative=g.out(neg),
                  latent_image=g.out(pairs), start_at_step=0, end_at_step=10000, return_with_leftover_noise="disable")
    else:
        s = g.add("KSampler", model=model, positive=g.out(cond), negative=g.out(neg), latent_image=g.out(pairs),
                  seed=3, steps=p.steps, cfg=p.cfg, sampler_name="euler", scheduler="normal")
    img = g.add("VAEDecode", samples=g.out(s), vae=g.out(ckpt, 2))
    split = g.add("SAEdit_SplitPairs", images=g.out(img))
    g.add("SaveImage", images=g.out(split, 0), filename_prefix=f"sae/{prefix}_source")
    g.add("SaveImage", images=g.out(split, 1), filename_prefix=f"sae/{prefix}_target")


def prompt_edit_swap(g, p: Profile = DEMO):
    ckpt, neg = base(g, p)
    swap = g.add("SAEdit_SelfAttentionSwap", model=g.out(ckpt), **_swap_kwargs(p))
    lat = g.add("EmptyLatentImage", width=p.size, height=p.size, batch_size=1)
    _pairs_sampling(g, ckpt, neg, g.out(swap), "a red circle on a white background", "a blue circle on a white background",
                    g.out(lat), "prompt_edit", p)
    return 2, ((p.size, p.size),)


def real_image_edit(g, p: Profile = DEMO):
    ckpt, neg = base(g, p)
    image = g.add("LoadImage", image="sae_example.png")
    if p.size != SIZE:  # the example picture is the demo's 64 px; your photo at the model's size otherwise
        image = g.add("ImageScale", image=g.out(image), upscale_method="lanczos", width=p.size, height=p.size,
                      crop="disabled")
    enc = g.add("VAEEncode", pixels=g.out(image), vae=g.out(ckpt, 2))
    # The input is a procedural shapes-world picture (tools/assets/sae_example.png), not a generation.
    source = "a green triangle on a gray background"
    caption = g.add("CLIPTextEncode", clip=g.out(ckpt, 1), text=source)
    inv = g.add("SAEdit_InvertLatent", model=g.out(ckpt), positive=g.out(caption), latent=g.out(enc), steps=p.steps,
                scheduler="normal")
    swap = g.add("SAEdit_SelfAttentionSwap", model=g.out(ckpt), inversion=g.out(inv, 1), **_swap_kwargs(p))
    _pairs_sampling(g, ckpt, neg, g.out(swap), source, "a green triangle on a black background",
                    g.out(inv, 0), "real_image_edit", p, advanced=True)
    return 2, ((p.size, p.size),)


def direction_with_swap(g, p: Profile = DEMO):
    ckpt, neg = base(g, p)
    dirs = g.add("SAEdit_ComputeEigendirections", model=g.out(ckpt), layers=p.direction_layers, top_k=4)
    edit = g.add("SAEdit_ApplyLatentDirection", model=g.out(ckpt), directions=g.out(dirs), index=p.direction_index,
                 alpha=0.0, alpha_sweep=f"0, {p.alpha:g}")
    swap = g.add("SAEdit_SelfAttentionSwap", model=g.out(edit), **_swap_kwargs(p))
    lat = g.add("EmptyLatentImage", width=p.size, height=p.size, batch_size=1)
    text = "a yellow cross on a black background"
    _pairs_sampling(g, ckpt, neg, g.out(swap), text, text, g.out(lat), "direction_with_swap", p)
    return 2, ((p.size, p.size),)


# ---------------------------------------------------------------------------------------------------
# Flux-style models (Flux.1 dev with its usual loaders). These need Flux weights, which do not exist on the
# test machines: they are loaded in the browser test and converted to API format, never run there
# (extra.sae_requires: the model files, placed as empty stand-ins so the loaders' combos list them, and why).

FLUX_SIZE = 1024
FLUX_STEPS = 20
FLUX_GUIDANCE = 3.5
FLUX_MODELS = {"diffusion_models": ["flux1-dev.safetensors"],
               "text_encoders": ["clip_l.safetensors", "t5xxl_fp16.safetensors"], "vae": ["ae.safetensors"]}
FLUX_REASON = "needs the Flux.1 dev weights (about 30 GB), which the test machines do not have"
FLUX_FILES = ("Expects ComfyUI's usual Flux.1 files: models/diffusion_models/flux1-dev.safetensors (UNETLoader), "
              "models/text_encoders/clip_l.safetensors and t5xxl_fp16.safetensors (DualCLIPLoader, type flux; "
              "t5xxl_fp8_e4m3fn.safetensors works too), models/vae/ae.safetensors (VAELoader). Flux.1 schnell, "
              "Kontext and Chroma load the same way (Chroma: CLIPLoader with t5 only, type chroma); Flux.2: its own "
              "text encoder and VAE. Needs ComfyUI 0.33 or newer for the swap and the inversion (docs/dit.md).")


def flux_base(g, notes):
    g.extra["sae_requires"] = {"models": FLUX_MODELS, "reason": FLUX_REASON}
    g.note(notes + "\n\n" + FLUX_FILES)
    unet = g.add("UNETLoader", unet_name=FLUX_MODELS["diffusion_models"][0], weight_dtype="default")
    clip = g.add("DualCLIPLoader", clip_name1="clip_l.safetensors", clip_name2="t5xxl_fp16.safetensors", type="flux")
    vae = g.add("VAELoader", vae_name="ae.safetensors")
    neg = g.add("CLIPTextEncode", clip=g.out(clip), text="")  # unused at cfg 1 (Flux dev is guidance-distilled)
    return unet, clip, vae, neg


def flux_text(g, clip, text):
    return g.add("FluxGuidance", conditioning=g.out(g.add("CLIPTextEncode", clip=g.out(clip), text=text)),
                 guidance=FLUX_GUIDANCE)


def flux_direction_edit(g):
    unet, clip, vae, neg = flux_base(g, (
        "Method A on Flux: eigendirections of the image stream's q/k/v weights (img_attn.qkv of the double "
        "blocks, the first 3D rows of linear1 in the single blocks) of the FPE-preset layers (on Flux.1: Stable "
        "Flow's vital layers), then one direction added to the image tokens' attention input over 50-80% of the "
        "denoising. Original and edited side by side."))
    pos = flux_text(g, clip, "a photo of a red vintage car parked on a cobblestone street")
    # 'middle block' (the node's default) names a UNet part; on Flux the FPE preset is the family default.
    dirs = g.add("SAEdit_ComputeEigendirections", model=g.out(unet), layers="below latent resolution (FPE default)",
                 top_k=4)
    m = g.add("SAEdit_ApplyLatentDirection", model=g.out(unet), directions=g.out(dirs), index=0, alpha=0.3)
    lat = g.add("EmptySD3LatentImage", width=FLUX_SIZE, height=FLUX_SIZE, batch_size=1)
    images = []
    for model in (g.out(unet), g.out(m)):
        s = g.add("KSampler", model=model, positive=g.out(pos), negative=g.out(neg), latent_image=g.out(lat),
                  seed=7, steps=FLUX_STEPS, cfg=1.0, sampler_name="euler", scheduler="simple")
        images.append(g.add("VAEDecode", samples=g.out(s), vae=g.out(vae)))
    both = g.add("ImageBatch", image1=g.out(images[0]), image2=g.out(images[1]))
    g.add("SaveImage", images=g.out(both), filename_prefix="sae/flux_direction_edit")
    return 2, ((FLUX_SIZE, FLUX_SIZE),)


def _flux_pairs(g, model, clip, vae, neg, src_text, tgt_text, latent, prefix, advanced=False):
    src = g.add("CLIPTextEncode", clip=g.out(clip), text=src_text)
    tgt = g.add("CLIPTextEncode", clip=g.out(clip), text=tgt_text)
    cond = g.add("FluxGuidance", conditioning=g.out(g.add("SAEdit_PairConditioning", source=g.out(src),
                                                           target=g.out(tgt))), guidance=FLUX_GUIDANCE)
    pairs = g.add("SAEdit_MakePairs", latent=latent)
    if advanced:
        s = g.add("KSamplerAdvanced", model=model, add_noise="disable", noise_seed=0, steps=FLUX_STEPS, cfg=1.0,
                  sampler_name="euler", scheduler="simple", positive=g.out(cond), negative=g.out(neg),
                  latent_image=g.out(pairs), start_at_step=0, end_at_step=10000, return_with_leftover_noise="disable")
    else:
        s = g.add("KSampler", model=model, positive=g.out(cond), negative=g.out(neg), latent_image=g.out(pairs),
                  seed=3, steps=FLUX_STEPS, cfg=1.0, sampler_name="euler", scheduler="simple")
    split = g.add("SAEdit_SplitPairs", images=g.out(g.add("VAEDecode", samples=g.out(s), vae=g.out(vae))))
    g.add("SaveImage", images=g.out(split, 0), filename_prefix=f"sae/{prefix}_source")
    g.add("SaveImage", images=g.out(split, 1), filename_prefix=f"sae/{prefix}_target")


def flux_prompt_edit_swap(g):
    unet, clip, vae, neg = flux_base(g, (
        "Method B on Flux (Free-Prompt-Editing in the joint attention): source and target are sampled as a pair; "
        "in the FPE-preset blocks (on Flux.1: Stable Flow's vital layers) the target's image tokens attend with "
        "the source's q/k over the first 80% of the denoising, keeping their own values: the source's layout, "
        "the target prompt's content. FluxGuidance goes after Source/Target Conditioning."))
    swap = g.add("SAEdit_SelfAttentionSwap", model=g.out(unet))
    lat = g.add("EmptySD3LatentImage", width=FLUX_SIZE, height=FLUX_SIZE, batch_size=1)
    _flux_pairs(g, g.out(swap), clip, vae, neg, "a photo of a cat sitting on a wooden bench in a park",
                "a photo of a dog sitting on a wooden bench in a park", g.out(lat), "flux_prompt_edit")
    return 2, ((FLUX_SIZE, FLUX_SIZE),)


def flux_real_image_edit(g):
    unet, clip, vae, neg = flux_base(g, (
        "Real-image edit on Flux: Invert Latent runs the flow ODE backwards (empty source prompt, cfg 1), the "
        "swap pins the source to the recorded trajectory and starts the sampler at the inverted latent "
        "(KSamplerAdvanced, add_noise disabled, same steps and scheduler). For a plain reconstruction without "
        "the swap, sample with Invert Latent's 'model' output instead: a flow sampler with add_noise disabled "
        "otherwise starts from zeros. Replace the example picture with your photo (1024 px works best)."))
    image = g.add("LoadImage", image="sae_example.png")
    enc = g.add("VAEEncode", pixels=g.out(image), vae=g.out(vae))
    inv = g.add("SAEdit_InvertLatent", model=g.out(unet), positive=g.out(flux_text(g, clip, "")), latent=g.out(enc),
                steps=FLUX_STEPS, scheduler="simple")
    swap = g.add("SAEdit_SelfAttentionSwap", model=g.out(unet), inversion=g.out(inv, 1))
    _flux_pairs(g, g.out(swap), clip, vae, neg, "", "a watercolor painting", g.out(inv, 0), "flux_real_image_edit",
                advanced=True)
    return 2, ((SIZE, SIZE),)  # the example picture's size; your photo's otherwise


DEMO_WORKFLOWS = {
    "direction_explorer": (direction_explorer, "Alpha sweep (-4..4 x token norm) over the top 3 directions of all layers, as a grid"),
    "single_direction_edit": (single_direction_edit, "One direction edit: original and edited side by side"),
    "prompt_edit_swap": (prompt_edit_swap, "Prompt edit of a generated image with Self-Attention Swap"),
    "real_image_edit": (real_image_edit, "Real-image edit: DDIM inversion, then the swap with source pinning"),
    "direction_with_swap": (direction_with_swap, "A direction edit whose structure is held by the swap"),
}
TWIN_TITLES = {
    "direction_explorer": "alpha sweep -0.4..0.4 over the top 3 middle-block directions",
    "single_direction_edit": "one direction edit, original and edited",
    "prompt_edit_swap": "prompt edit with Self-Attention Swap",
    "real_image_edit": "real-image edit, DDIM inversion + swap",
    "direction_with_swap": "a direction edit held by the swap",
}
WORKFLOWS = {
    **DEMO_WORKFLOWS,
    **{f"{name}{p.suffix}": (partial(fn, p=p), f"{p.title}: {TWIN_TITLES[name]} (needs a {p.title} checkpoint)")
       for p in TWINS for name, (fn, _title) in DEMO_WORKFLOWS.items()},
    "flux_direction_edit": (flux_direction_edit, "Flux.1: one direction edit, original and edited (needs Flux weights)"),
    "flux_prompt_edit_swap": (flux_prompt_edit_swap, "Flux.1: prompt edit with Self-Attention Swap (needs Flux weights)"),
    "flux_real_image_edit": (flux_real_image_edit, "Flux.1: real-image edit, flow inversion + swap (needs Flux weights)"),
}


EXAMPLE_IMAGE = REPO / "tools" / "assets" / "sae_example.png"
# The real-image edit's input: a procedural shapes-world picture (the generator's, not the model's).
EXAMPLE_SCENE = {"seed": 2026, "index": 0, "factors": ("green", "triangle", "gray")}


def write_example_image(path: Path = EXAMPLE_IMAGE) -> None:
    from PIL import Image

    from tools.comfy_env import load_pack_module

    world = load_pack_module("sae_math.shapes_world")
    scene = world.sample_scene(EXAMPLE_SCENE["seed"], EXAMPLE_SCENE["index"], SIZE, EXAMPLE_SCENE["factors"])
    Image.fromarray(world.render(scene, SIZE)).save(path)


def build(out_dir: Path = REPO / "example_workflows") -> dict:
    """Write every workflow; the expected outputs (total image count, image size at the default size)
    go into each file's extra.sae_expected for the runner and the tests."""
    defs = node_defs()
    write_example_image()
    expected = {}
    out_dir.mkdir(exist_ok=True)
    for name, (fn, title) in WORKFLOWS.items():
        g = Graph(defs)
        count, sizes = fn(g)
        expected[name] = g.extra["sae_expected"] = {"images": count, "size": list(sizes[0])}
        (out_dir / f"{name}.json").write_text(json.dumps(g.to_json(title), indent=1) + "\n")
    return expected


if __name__ == "__main__":
    import os

    if not os.environ.get("COMFYUI_PATH"):
        sys.exit("run with COMFYUI_PATH set (eval \"$(scripts/bootstrap.sh)\")")
    for name, e in build().items():
        sys.stdout.write(f"{name}: {e}\n")
