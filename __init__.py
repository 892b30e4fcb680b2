"""Self-Attention Edit: training-free image editing through self-attention (ComfyUI custom nodes).

Registration only. Importing this file needs no ComfyUI; the nodes are imported when ComfyUI asks.
"""

WEB_DIRECTORY = "./js"


async def comfy_entrypoint():
    from .nodes.extension import SelfAttentionEditExtension

    return SelfAttentionEditExtension()
