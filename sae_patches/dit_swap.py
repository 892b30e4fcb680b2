"""Free-Prompt-Editing's self-attention swap on diffusion transformers (ComfyUI 0.33): the target rows'
image tokens attend with their source rows' q and k inside the joint attention of the chosen blocks.
Math in sae_math/joint_swap.py; when (sigma window, one decision per model call) and which rows
(positive-chunk roles from ChunkRolesWrapper/GuiderCondsWrapper, pairs [s1, t1, s2, t2, ...]) are
swap_patch's SwapWindow, shared with the UNet path.

Hooks, per family (read from ComfyUI 0.33.0's code):
  - Flux.1 / Flux.2 / Chroma (comfy/ldm/flux/layers.py, chroma reuses the blocks) and Qwen-Image
    (comfy/ldm/qwen_image/model.py): core calls `attn1_patch(q, k, v, pe=, attn_mask=, extra_options=)`
    in every double and single block with the joint (B, H, N, D) q/k/v after QK-norm, before RoPE;
    extra_options carries img_slice ([text tokens, all tokens]), block_type ("double"/"single"),
    block_index and, with reference images, reference_image_num_tokens. -> JointSwapAttn1Patch,
    registered with set_model_attn1_patch. Layers: ("double", i), ("single", i).
  - SD3/3.5 (comfy/ldm/modules/diffusionmodules/mmdit.py): no attn1_patch and no block_index in
    transformer_options; each joint block is looked up in patches_replace["dit"][("double_block", i)]
    and its joint attention calls optimized_attention(q, k, v, heads=, transformer_options=) with
    (B, N, H*D) tensors, text (context, registers first) before image. -> MMDiTBlockMarker on each chosen
    block names the block and its text/image token counts in a copy of the block's transformer_options;
    JointSwapOverride (transformer_options["optimized_attention_override"]) swaps in the attention calls
    of a marked block: the joint call (N = text + image, image last) and, on SD3.5 Medium's MMDiT-X
    blocks, the image-only self-attention (N = image). Layers: ("double", i).
  - Lumina2 / Z-Image (comfy/ldm/lumina/model.py): no attn1_patch, no block replaces; NextDiT's main
    loop sets transformer_options block_type "double" and block_index i (the context/noise refiners run
    before it, without them) and JointAttention calls optimized_attention_masked(q, k, v, heads, mask,
    skip_reshape=True, transformer_options=) with (B, H, N, D) q/k after RoPE, text first, image last
    (padded to pad_tokens_multiple; Z-Image Omni's reference images precede the main image). ->
    JointSwapOverride reading block_type/block_index, the image token count from the latent's size
    (SwapLatentShape, an APPLY_MODEL wrapper) and the model's patch size/padding. Layers: ("double", i).
In every case the swap touches only q and k of the image tokens; v, text tokens and reference tokens are
each row's own; outside the window, on rows not chosen, or in blocks not chosen the call is unchanged.
"""

from __future__ import annotations

import torch

from ..sae_math.errors import NodeInputError
from ..sae_math.joint_swap import image_token_range, padded_image_tokens, swap_image_qk
from .swap_patch import SWAP_NODE, refuse_text_width, refuse_unpaired_batch

# transformer_options keys this module adds (in copies of the options, never in the caller's dict).
BLOCK_KEY = "self_attention_edit.dit_block"  # MMDiTBlockMarker -> (layer, text tokens, image tokens)
LATENT_SHAPE_KEY = "self_attention_edit.latent_shape"  # SwapLatentShape -> x.shape of the model call
SHAPE_WRAPPER_KEY = "self_attention_edit.dit_swap_shape"


def _layer(opts) -> tuple | None:
    block_type, index = opts.get("block_type"), opts.get("block_index")
    return None if block_type is None or index is None else (block_type, int(index))


def _index(window, opts, rows: int, device):
    """(rows,) gather index of this call (targets read their sources), or None when nothing is swapped
    (outside the window, no chosen chunk)."""
    edited = window.plan(opts).edited
    if edited is None:
        return None
    try:
        return window.gather_index(edited, rows, opts, device)
    except ValueError as e:  # an unpaired batch that reached the block without SwapLatentShape's check
        raise NodeInputError(SWAP_NODE, "latent_image (of the sampler)", f"{rows} attention rows", str(e)) from e


class JointSwapAttn1Patch:
    """attn1_patch for DiTs whose core passes the joint q/k/v to it (Flux double/single blocks, Chroma,
    Flux.2, Qwen-Image). layers: the (block_type, block_index) pairs to swap in; window: the node's
    SwapWindow (one decision per model call for all layers). Returns the swapped q, k (and v as given)
    in core's dict form, or {} to leave the call as it is."""

    def __init__(self, layers, window):
        self.layers = frozenset(layers)
        self.window = window

    def __deepcopy__(self, memo):
        return self  # immutable; the window's caches only memoise

    def __call__(self, q, k, v, pe=None, attn_mask=None, extra_options=None, **kwargs):
        opts = extra_options or {}
        if _layer(opts) not in self.layers or "img_slice" not in opts:
            return {}
        index = _index(self.window, opts, q.shape[0], q.device)
        if index is None:
            return {}
        start, end = image_token_range(opts["img_slice"], q.shape[2], opts.get("reference_image_num_tokens"))
        q, k = swap_image_qk(q, k, index, start, end, token_dim=2)
        return {"q": q, "k": k, "v": v}


class MMDiTBlockMarker:
    """patches_replace["dit"][("double_block", i)] for SD3/3.5: runs the block (or the replace another
    node had put there: `inner`) with a copy of its transformer_options naming the block and its token
    counts, which JointSwapOverride reads."""

    def __init__(self, index: int, inner=None):
        self.index = int(index)
        self.inner = inner

    def __deepcopy__(self, memo):
        return self

    def __call__(self, args, extra):
        opts = dict(args.get("transformer_options") or {})
        txt = args.get("txt")
        opts[BLOCK_KEY] = (("double", self.index), 0 if txt is None else int(txt.shape[1]), int(args["img"].shape[1]))
        args = {**args, "transformer_options": opts}
        if self.inner is not None:
            return self.inner(args, extra)
        return extra["original_block"](args)


def mmdit_image_range(opts, tokens: int):
    """(layer, start, end) of an attention call inside a marked SD3 block, or None (unmarked block, or an
    attention whose length is neither text + image nor image alone)."""
    mark = opts.get(BLOCK_KEY)
    if mark is None:
        return None
    layer, txt, img = mark
    if tokens == txt + img:
        return layer, txt, tokens  # joint attention: [context (registers, text), x]
    if tokens == img:
        return layer, 0, tokens  # MMDiT-X image self-attention (SD3.5 Medium)
    return None


class LuminaImageRange:
    """Where the main image's tokens are in a Lumina2/Z-Image main-layer attention call: the last
    padded_image_tokens(h, w, patch, multiple) tokens, h x w the latent's size (SwapLatentShape)."""

    def __init__(self, patch_size: int, pad_tokens_multiple: int | None):
        self.patch_size = int(patch_size)
        self.multiple = pad_tokens_multiple

    def __deepcopy__(self, memo):
        return self

    def __call__(self, opts, tokens: int):
        layer = _layer(opts)
        shape = opts.get(LATENT_SHAPE_KEY)
        if layer is None or layer[0] != "double" or shape is None:
            return None
        img = padded_image_tokens(shape[-2], shape[-1], self.patch_size, self.multiple)
        if img > tokens:
            return None
        return layer, tokens - img, tokens


def _skip_reshape(args, kwargs) -> bool:
    # optimized_attention(q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False, ...)
    return bool(kwargs["skip_reshape"]) if "skip_reshape" in kwargs else (len(args) > 6 and bool(args[6]))


class JointSwapOverride:
    """transformer_options["optimized_attention_override"] for DiTs without an attn1_patch (SD3/3.5,
    Lumina2/Z-Image), called by ComfyUI's wrap_attn as override(func, q, k, v, heads, ...,
    transformer_options=...). image_range(opts, tokens) -> (layer, start, end) or None says whether the
    call is a chosen block's attention and where its image tokens are (mmdit_image_range,
    LuminaImageRange). inner: the override another node had set, called instead of func so both act."""

    def __init__(self, layers, window, image_range, inner=None):
        self.layers = frozenset(layers)
        self.window = window
        self.image_range = image_range
        self.inner = inner
        if inner is not None and hasattr(inner, "container_function"):
            self.container_function = inner.container_function

    def __deepcopy__(self, memo):
        return self

    def __call__(self, func, *args, **kwargs):
        opts = kwargs.get("transformer_options") or {}
        if len(args) >= 3:
            q, k = args[0], args[1]
            token_dim = 2 if _skip_reshape(args, kwargs) else 1
            where = self.image_range(opts, q.shape[token_dim])
            if where is not None and where[0] in self.layers:
                index = _index(self.window, opts, q.shape[0], q.device)
                if index is not None:
                    q, k = swap_image_qk(q, k, index, where[1], where[2], token_dim)
                    args = (q, k) + tuple(args[2:])
        if self.inner is not None:
            return self.inner(func, *args, **kwargs)
        return func(*args, **kwargs)


class SwapLatentShape:
    """WrappersMP.APPLY_MODEL wrapper of a swapped DiT: refuses a latent batch that is not made of pairs
    and text embeddings of another width than the model's text input takes (text_width; None: not
    checked), before the model runs, as the UNet path's SwapInputCheck does; hands x's shape to the
    attention override through a copy of transformer_options (Lumina2's image token count). The
    APPLY_MODEL signature is the same for every model, unlike DIFFUSION_MODEL's. Immutable."""

    def __init__(self, text_width: int | None = None, display: str = "this"):
        self.text_width = text_width
        self.display = display

    def __deepcopy__(self, memo):
        return self

    def __call__(self, executor, x, t, c_concat, c_crossattn, control, transformer_options, *args, **kwargs):
        refuse_unpaired_batch(x.shape[0], transformer_options)
        if isinstance(c_crossattn, torch.Tensor) and c_crossattn.ndim == 3:
            refuse_text_width(c_crossattn.shape[-1], self.text_width, f"this {self.display} model's text input",
                              "CLIP-L on a T5 model", "the text encoder this model uses")
        transformer_options = {**transformer_options, LATENT_SHAPE_KEY: tuple(x.shape)}
        return executor(x, t, c_concat, c_crossattn, control, transformer_options, *args, **kwargs)


HOOKS = ("attn1_patch", "mmdit", "lumina")


def install_joint_swap(m, hook: str, layers, window, diffusion_model=None, text_width: int | None = None,
                       display: str = "this") -> None:
    """Register the DiT swap on the clone m (a ModelPatcher the caller cloned; the input MODEL is never
    touched). hook: "attn1_patch" (Flux, Flux.2, Chroma, Qwen-Image), "mmdit" (SD3/3.5) or "lumina"
    (Lumina2/Z-Image); layers: (block_type, block_index) pairs; window: the node's SwapWindow;
    diffusion_model: the DiT module (for "lumina": patch_size and pad_tokens_multiple); text_width: the
    width of the text embeddings the model takes (checked before it runs), display: the family's name for
    that error. The caller also
    installs swap_patch's GuiderCondsWrapper / ChunkRolesWrapper (roles) and, with an inversion,
    PinSourceToTrajectory, as the UNet path does."""
    import comfy.patcher_extension as pe

    layers = frozenset((str(t), int(i)) for t, i in layers)
    if hook not in HOOKS:
        raise ValueError(f"unknown DiT swap hook {hook!r}; one of {HOOKS}")
    m.add_wrapper_with_key(pe.WrappersMP.APPLY_MODEL, SHAPE_WRAPPER_KEY, SwapLatentShape(text_width, display))
    if hook == "attn1_patch":
        m.set_model_attn1_patch(JointSwapAttn1Patch(layers, window))
        return
    to = m.model_options.setdefault("transformer_options", {})
    inner = to.get("optimized_attention_override")
    if hook == "mmdit":
        replaces = to.get("patches_replace", {}).get("dit", {})
        for _block_type, i in sorted(layers):
            key = ("double_block", i)
            m.set_model_patch_replace(MMDiTBlockMarker(i, replaces.get(key)), "dit", "double_block", i)
        image_range = mmdit_image_range
    else:
        dm = diffusion_model if diffusion_model is not None else m.get_model_object("diffusion_model")
        image_range = LuminaImageRange(dm.patch_size, getattr(dm, "pad_tokens_multiple", None))
    # Re-read: set_model_patch_replace put a new transformer_options dict in model_options. A new dict
    # again, so no dict the clone shares with the input model is written to.
    m.model_options["transformer_options"] = {
        **m.model_options["transformer_options"],
        "optimized_attention_override": JointSwapOverride(layers, window, image_range, inner)}
