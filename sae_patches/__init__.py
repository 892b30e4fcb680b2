"""The ComfyUI-facing layer of Self-Attention Edit: model access and patches installed through ModelPatcher.

weights (reading the q/k/v weights a MODEL samples with; directions with a cache), direction_patch (Apply
Latent Direction's patch and its sampling wrappers), swap_patch (Free-Prompt-Editing's swap), inversion
(DDIM inversion), demo_model (the shapes demo model's builder and loader). Modules import ComfyUI at call
time or at import; none is imported by this package's __init__ (importing the pack needs no ComfyUI).
"""
