"""Self-Attention Edit: pure math modules (no ComfyUI import) and ComfyUI node modules.

Pure math, importable without ComfyUI: eigen, layers, directions, direction_math, swap_math; the shapes
world's generator and analyser: shapes_world, shapes_analyser.
Patch layer (ComfyUI ModelPatcher): weights, direction_patch, swap_patch, inversion; the demo model's
builder and loader: demo_model.
Node schemas: node_*.py; the extension that lists them: extension.py.
"""
