"""Self-Attention Edit: training-free image editing through self-attention (ComfyUI custom nodes).

Registration only. Importing this file needs no ComfyUI; the nodes are imported when ComfyUI asks.

Layers: sae_math/ (pure math, no ComfyUI import), sae_patches/ (model access, patches through ModelPatcher,
model-family adapters), nodes/ (node schemas and the extension that lists them).
"""

WEB_DIRECTORY = "./js"


async def comfy_entrypoint():
    from .nodes.extension import SelfAttentionEditExtension

    return SelfAttentionEditExtension()
