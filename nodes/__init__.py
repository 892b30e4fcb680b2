"""Self-Attention Edit: pure math modules (no ComfyUI import) and ComfyUI node modules.

Pure math, importable without ComfyUI: eigen, layers, directions, direction_math, swap_math.
Patch layer (ComfyUI ModelPatcher): weights, direction_patch, swap_patch, inversion.
Node schemas: node_*.py; the extension that lists them: extension.py.
"""
