"""How the rows of one self-attention call map to the UNet's batch rows (pure, no ComfyUI)."""

from __future__ import annotations


def tiles_per_unet_row(rows: int, original_shape, node: str) -> int:
    """Self-attention rows per UNet row: 1, unless a patch that ran before ours (HyperTile) split every UNet
    row into `tiles` contiguous rows of tokens ("(b nh nw) (h w) c"); a UNet row's tiles are then rows
    r * tiles .. r * tiles + tiles - 1.

    original_shape: extra_options["original_shape"], the UNet input's shape (None: no split assumed).
    node: the node's display name, for the error a re-batching we cannot follow gets."""
    unet_rows = int(original_shape[0]) if original_shape is not None else rows
    if unet_rows <= 0 or rows % unet_rows:
        raise ValueError(f"{node}: self-attention has {rows} rows for {unet_rows} UNet rows; another node "
                         f"re-batches the tokens in a way {node} cannot follow: remove that node or {node}")
    return rows // unet_rows
