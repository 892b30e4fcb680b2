"""Free-Prompt-Editing's self-attention swap inside the joint attention of a diffusion transformer
(pure torch, no ComfyUI).

DiTs (Flux.1/Flux.2/Chroma, Qwen-Image, SD3.5, Lumina2/Z-Image) attend over one joint sequence: text tokens
first, then the generated image's tokens, then any reference-image tokens (Kontext, Flux.2, Qwen-Edit
append them after the image's). For a target row t with source row s, the swap replaces the target's
IMAGE tokens' q and k by the source's; text tokens' q/k and every value are the row's own. The target's
logits then hold, block by block (rows: queries, columns: keys):

    image -> image : q_s,img . k_s,img   the source's own logits (its image-image map)
    image -> text  : q_s,img . k_t,txt
    text  -> image : q_t,txt . k_s,img
    text  -> text  : q_t,txt . k_t,txt   the target's own

so the image-image block of the target's attention map is the source's up to each row's softmax
normaliser, which also sums the text columns (renormalised over the image columns it is the source's
exactly; with identical text keys it is the source's outright). Values stay the target's, as FPE does on
the UNet. Reference-image tokens are left alone: the target keeps its own view of the reference.

Swapping before RoPE equals swapping after RoPE when source and target share the image tokens' positions:
RoPE rotates token n of row r by the angle of pe[r, n], so R(pe[t, n]) q_s[n] = R(pe[s, n]) q_s[n] iff
pe[t, n] = pe[s, n]. In ComfyUI 0.33 this always holds inside one model call: Flux/Chroma/Flux.2 and
Qwen-Image build one position grid per call and repeat it over the batch (rope_options apply to the whole
call), and a source/target pair has one latent size. It would fail only for a patch that gives rows of
one call different image positions. Where each hook sits (ComfyUI 0.33 source):
  - Flux double/single blocks and Qwen-Image call `attn1_patch` with the joint q, k, v after QK-norm
    and BEFORE RoPE (flux/math.attention and Qwen's apply_rope1 rotate afterwards): the identity above
    is what makes the swap exact there.
  - Lumina2/Z-Image rotate inside JointAttention (fused rms_rope) before optimized_attention: the
    attention override sees q/k AFTER RoPE, so the swap gives the source's rotated q/k outright.
  - SD3/3.5 (mmdit) has no RoPE (positions are added to the input once): nothing to commute.
"""

from __future__ import annotations

import torch


def image_token_range(img_slice, total_tokens: int, reference_tokens=()) -> tuple[int, int]:
    """[start, end) of the generated image's tokens in a joint sequence of total_tokens.

    img_slice: (start, end) as ComfyUI 0.33 gives it in extra_options["img_slice"] (Flux, Qwen-Image:
    [text tokens, all tokens]); its end includes the reference-image tokens, which come last:
    reference_tokens (transformer_options["reference_image_num_tokens"], one count per reference image)
    are cut off the end. Raises ValueError when the range is empty or outside the sequence."""
    start, end = int(img_slice[0]), int(img_slice[1])
    end -= sum(int(n) for n in (reference_tokens or ()))
    if not 0 <= start < end <= int(total_tokens):
        raise ValueError(f"image tokens [{start}, {end}) do not lie in a joint sequence of {total_tokens} tokens "
                         f"(img_slice {list(img_slice)}, reference tokens {list(reference_tokens or ())})")
    return start, end


def padded_image_tokens(height: int, width: int, patch: int, multiple: int | None) -> int:
    """Image tokens of a latent of height x width in Lumina2/Z-Image: ceil(h/p) * ceil(w/p) patches (the
    latent is padded to the patch size), padded up to a multiple of `multiple` (Z-Image's
    pad_tokens_multiple; None: no padding). The padding tokens belong to the image stream (they sit
    after the image's tokens, are cut off at unpatchify) and are swapped with it."""
    n = -(-int(height) // patch) * -(-int(width) // patch)
    if multiple:
        n += (-n) % int(multiple)
    return n


def swap_image_tokens(x: torch.Tensor, index: torch.Tensor, start: int, end: int, token_dim: int) -> torch.Tensor:
    """x with every row r's tokens [start, end) along token_dim read from row index[r]; other tokens
    untouched. A new tensor (x is not modified). x: (B, H, N, D) with token_dim 2, or (B, N, H*D) with
    token_dim 1; index: (B,) long on x's device."""
    n = x.shape[token_dim]
    parts = []
    if start > 0:
        parts.append(x.narrow(token_dim, 0, start))
    parts.append(x.narrow(token_dim, start, end - start).index_select(0, index))
    if end < n:
        parts.append(x.narrow(token_dim, end, n - end))
    return torch.cat(parts, dim=token_dim)


def swap_image_qk(q: torch.Tensor, k: torch.Tensor, index: torch.Tensor, start: int, end: int,
                  token_dim: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """(q, k) of one joint attention call with each row's image tokens' q and k read from row index[r]
    (targets read their sources: swap_math.row_index). v is not an argument: values stay each row's."""
    return (swap_image_tokens(q, index, start, end, token_dim),
            swap_image_tokens(k, index, start, end, token_dim))


def explicit_joint_swap_reference(q, k, v, start: int, end: int, targets, sources, scale=None) -> torch.Tensor:
    """Reference for the swap, the explicit way: build every row's (H, N, N) logit map from the rows' own
    q and k, give each target the blocks listed in the module docstring (its image-image block the
    source's own map block), softmax, multiply by the target's own values. In float64, materialising
    (B, H, N, N). q, k, v: (B, H, N, D) after RoPE; returns (B, H, N, D) float64. No attention mask."""
    q, k, v = q.double(), k.double(), v.double()
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    n = q.shape[2]
    img = torch.arange(start, end)
    txt = torch.tensor([i for i in range(n) if not start <= i < end], dtype=torch.long)  # text and reference
    logits = (q @ k.transpose(-1, -2)) * scale  # (B, H, N, N)
    swapped = logits.clone()
    for t, s in zip(targets, sources):
        lt = swapped[t]
        lt[:, img[:, None], img[None, :]] = logits[s][:, img[:, None], img[None, :]]
        lt[:, img[:, None], txt[None, :]] = (q[s][:, img] @ k[t][:, txt].transpose(-1, -2)) * scale
        lt[:, txt[:, None], img[None, :]] = (q[t][:, txt] @ k[s][:, img].transpose(-1, -2)) * scale
    return torch.softmax(swapped, dim=-1) @ v
