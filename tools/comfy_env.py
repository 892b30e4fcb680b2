"""Where ComfyUI and the tool cache live, and importing ComfyUI in CPU mode (for in-process use)."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def cache_dir() -> Path:
    """The cache outside git, shared with scripts/bootstrap.sh: $SAE_CACHE or ~/.cache/self-attention-edit."""
    env = os.environ.get("SAE_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "self-attention-edit"


def comfyui_path(path: str | os.PathLike | None = None) -> Path:
    """The ComfyUI tree: the given path, else $COMFYUI_PATH (set by `eval "$(scripts/bootstrap.sh)"`)."""
    path = path or os.environ.get("COMFYUI_PATH")
    if not path:
        raise RuntimeError('COMFYUI_PATH is not set: run `eval "$(scripts/bootstrap.sh)"` first')
    root = Path(path).resolve()
    if not (root / "main.py").is_file() or not (root / "comfy" / "model_patcher.py").is_file():
        raise RuntimeError(f"{root} is not a ComfyUI tree")
    return root


def import_comfyui(path: str | os.PathLike | None = None) -> Path:
    """Put ComfyUI on sys.path (first) and force CPU mode before comfy.model_management is imported."""
    root = comfyui_path(path)
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    return root


def load_pack_module(name: str):
    """A self-contained module of the pack (pure math in sae_math, the demo model in sae_patches) imported as
    a plain package module, e.g. load_pack_module("sae_math.shapes_world").

    The repository root is appended to sys.path (ComfyUI's own top-level `nodes` module keeps precedence
    over the pack's nodes/ folder). Modules that import ComfyUI need import_comfyui() first; modules with
    relative imports into another of the pack's packages load only as ComfyUI loads the pack."""
    import importlib

    repo = str(Path(__file__).resolve().parent.parent)
    if repo not in sys.path:
        sys.path.append(repo)
    return importlib.import_module(name)
