"""Deep snapshots of the objects a node receives, to prove a node left its inputs exactly as they were.

A snapshot records structure and object identity for containers (dicts, lists, tuples) and copies of
tensor contents; comparing two snapshots finds any replaced patch object, added or removed patch,
mutated model_options entry, changed weight or changed conditioning tensor.
"""

from __future__ import annotations

import torch


def _walk(obj, seen: set[int]):
    if isinstance(obj, torch.Tensor):
        return ("tensor", obj.dtype, tuple(obj.shape), str(obj.device), obj.detach().cpu().clone())
    if id(obj) in seen:
        return ("seen", id(obj))
    if isinstance(obj, dict):
        seen.add(id(obj))
        return ("dict", id(obj), {repr(k): _walk(v, seen) for k, v in obj.items()})
    if isinstance(obj, (list, tuple)):
        seen.add(id(obj))
        return (type(obj).__name__, id(obj), [_walk(v, seen) for v in obj])
    if isinstance(obj, (int, float, str, bool, type(None))):
        return ("value", obj)
    # Patch objects, functions, wrappers: the same object must still be there, with the same tensors.
    tensors = {k: _walk(v, seen) for k, v in sorted(vars(obj).items())
               if isinstance(v, (torch.Tensor, dict))} if hasattr(obj, "__dict__") else {}
    return ("object", type(obj).__name__, id(obj), tensors)


def _equal(a, b) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype and \
            a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:
        return True  # NaN inputs stay NaN
    return a == b


def snapshot(obj):
    """A comparable record of `obj` (a ModelPatcher, a CONDITIONING list, ATTN_DIRECTIONS, ...)."""
    if hasattr(obj, "model_options") and hasattr(obj, "patches"):  # a ModelPatcher
        return ("model", {
            "model_options": _walk(obj.model_options, set()),
            "patches": _walk(obj.patches, set()),
            "patches_uuid": obj.patches_uuid,
            "object_patches": _walk(obj.object_patches, set()),
            "callbacks": _walk(getattr(obj, "callbacks", {}), set()),
            "wrappers": _walk(getattr(obj, "wrappers", {}), set()),
            "additional_models": _walk(getattr(obj, "additional_models", {}), set()),
            "attachments": _walk(getattr(obj, "attachments", {}), set()),
            "state_dict": {k: v.detach().clone() for k, v in obj.model.state_dict().items()},
        })
    if hasattr(obj, "layers") and hasattr(obj, "model_fingerprint"):  # ATTN_DIRECTIONS
        return ("directions", obj.model_family, obj.model_fingerprint,
                [(x.key, x.width, x.level, x.values.clone(), x.vectors.clone()) for x in obj.layers])
    return ("value", _walk(obj, set()))


def unchanged(before, obj) -> bool:
    return _equal(before, snapshot(obj))
