"""Pure math of Self-Attention Edit: no ComfyUI import, importable on its own (`import sae_math.eigen`).

eigen (top-k eigenpairs of C = sum W^T W), directions (the ATTN_DIRECTIONS value and its file format),
direction_math (the Apply edit), direction_window (the timestep window in sigma), swap_math (row pairing,
the explicit swapped-attention reference), attention_rows (which rows of a model call are which), layers
(UNet layer names and the user-facing layer selection), errors (NodeInputError); the shapes world's
generator and analyser: shapes_world, shapes_analyser.
"""
