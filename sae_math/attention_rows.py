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


POSITIVE, NEGATIVE = "positive", "negative"
# cond_or_uncond value -> role under ComfyUI's ordinary CFG guider (sampling_function: [cond, uncond]);
# the rule used when the guider's own names cannot be read.
CFG_ROLES = {0: POSITIVE, 1: NEGATIVE}


def chunk_roles(conds: list, guider_conds: dict | None) -> tuple[str | None, ...] | None:
    """The role of each entry of the conds list given to calc_cond_batch, by identity with the guider's
    named conds: CFGGuider passes [positive, negative], DualCFGGuider [negative, middle, positive], SAG's
    extra pass [negative] alone; each entry is the very list the guider holds under that name.

    None entries (a skipped uncond at cfg 1) get None. Returns None when some entry matches none of the
    guider's conds (a guider that copies its conds, or no guider at all): the caller falls back to
    CFG_ROLES."""
    if not guider_conds:
        return None
    by_id = {id(v): name for name, v in guider_conds.items() if v is not None}
    roles = []
    for cond in conds:
        if cond is None:
            roles.append(None)
        elif id(cond) in by_id:
            roles.append(by_id[id(cond)])
        else:
            return None
    return tuple(roles)


def chunk_kinds(cond_or_uncond, roles: tuple | None) -> tuple[str | None, ...]:
    """The role of each chunk of one UNet call: cond_or_uncond[c] is the index, into calc_cond_batch's
    conds list, of chunk c; roles (from chunk_roles) name those entries. Without roles: CFG_ROLES."""
    if roles is None:
        return tuple(CFG_ROLES.get(i) for i in cond_or_uncond)
    return tuple(roles[i] if 0 <= i < len(roles) else None for i in cond_or_uncond)
