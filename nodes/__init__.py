"""Node schemas of Self-Attention Edit (ComfyUI V3): node_*.py, one module per capability, and extension.py
that lists them. They validate inputs and call the patch layer (../sae_patches), which builds on the pure
math (../sae_math)."""
