"""ATTN_DIRECTIONS: per-layer eigen-directions of C, and their .safetensors file format.

Pure torch + safetensors, no ComfyUI import.

File format (safetensors): tensors "<layer>.vectors" (k, d) float32 and "<layer>.values" (k,) float32
for every layer key such as "middle.0.0"; string metadata:
  format = "self-attention-edit.directions", format_version = "1",
  layers = JSON list of {"key", "width", "level"}, model_family, model_fingerprint,
  sign_convention = "largest-magnitude coordinate positive".
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import torch

FORMAT = "self-attention-edit.directions"
FORMAT_VERSION = "1"
SIGN_CONVENTION = "largest-magnitude coordinate positive"


@dataclass(frozen=True)
class LayerDirections:
    """Top-k eigenpairs of one layer: values (k,) descending, vectors (k, d) orthonormal rows."""

    key: str
    width: int
    level: int
    values: torch.Tensor
    vectors: torch.Tensor

    @property
    def k(self) -> int:
        return int(self.values.shape[0])


@dataclass(frozen=True)
class AttnDirections:
    """What "Compute Attention Eigendirections" outputs. Immutable: graphs may share one object."""

    layers: tuple[LayerDirections, ...]
    model_family: str
    model_fingerprint: str
    meta: dict = field(default_factory=dict, compare=False)

    def __deepcopy__(self, memo):  # immutable: no copy needed when ComfyUI deep-copies model_options
        return self

    @property
    def k(self) -> int:
        return min(layer.k for layer in self.layers)

    @property
    def keys(self) -> list[str]:
        return [layer.key for layer in self.layers]

    def layer(self, key: str) -> LayerDirections:
        for layer in self.layers:
            if layer.key == key:
                return layer
        raise KeyError(key)

    def summary(self) -> dict:
        """Small JSON-able description (for the UI and logs): layer keys, widths, eigenvalues."""
        return {
            "model_family": self.model_family,
            "model_fingerprint": self.model_fingerprint,
            "k": self.k,
            "layers": [
                {"key": x.key, "width": x.width, "level": x.level, "eigenvalues": [round(float(v), 6) for v in x.values]}
                for x in self.layers
            ],
        }

    # -- files -------------------------------------------------------------------------------------

    def to_safetensors_dict(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        tensors = {}
        for x in self.layers:
            tensors[f"{x.key}.vectors"] = x.vectors.detach().to("cpu", torch.float32).contiguous()
            tensors[f"{x.key}.values"] = x.values.detach().to("cpu", torch.float32).contiguous()
        metadata = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "layers": json.dumps([{"key": x.key, "width": x.width, "level": x.level} for x in self.layers]),
            "model_family": self.model_family,
            "model_fingerprint": self.model_fingerprint,
            "sign_convention": SIGN_CONVENTION,
            **{f"user.{k}": str(v) for k, v in self.meta.items()},
        }
        return tensors, metadata

    def save(self, path: str) -> None:
        from safetensors.torch import save_file

        tensors, metadata = self.to_safetensors_dict()
        save_file(tensors, path, metadata=metadata)

    @classmethod
    def load(cls, path: str) -> AttnDirections:
        """Read a directions file; ValueError with the reason if it is not one (or is damaged)."""
        from safetensors import safe_open

        try:
            with safe_open(path, framework="pt", device="cpu") as f:
                metadata = f.metadata() or {}
                names = set(f.keys())
                if metadata.get("format") != FORMAT:
                    raise ValueError(
                        f"{path!r} is a .safetensors file but not an attention-directions file "
                        f"(metadata format={metadata.get('format')!r}, expected {FORMAT!r}); "
                        "a LoRA or checkpoint cannot be loaded here")
                if metadata.get("format_version") != FORMAT_VERSION:
                    raise ValueError(f"{path!r} has directions format version {metadata.get('format_version')!r}; "
                                     f"this version of the pack reads {FORMAT_VERSION!r}")
                layer_specs = json.loads(metadata["layers"])
                layers = []
                for spec in layer_specs:
                    key = spec["key"]
                    if f"{key}.vectors" not in names or f"{key}.values" not in names:
                        raise ValueError(f"{path!r} lists layer {key!r} but lacks its tensors")
                    vectors = f.get_tensor(f"{key}.vectors").to(torch.float32)
                    values = f.get_tensor(f"{key}.values").to(torch.float32)
                    if vectors.ndim != 2 or vectors.shape[1] != int(spec["width"]) or values.shape != vectors.shape[:1]:
                        raise ValueError(f"{path!r}: layer {key!r} has tensors of shape {tuple(vectors.shape)} / "
                                         f"{tuple(values.shape)}, which do not match width {spec['width']}")
                    if not (torch.isfinite(vectors).all() and torch.isfinite(values).all()):
                        raise ValueError(f"{path!r}: layer {key!r} holds NaN or infinite values")
                    layers.append(LayerDirections(key, int(spec["width"]), int(spec["level"]), values, vectors))
        except ValueError:
            raise
        except Exception as e:  # safetensors raises its own types for truncated or foreign files
            raise ValueError(f"{path!r} could not be read as a .safetensors file: {e}") from e
        if not layers:
            raise ValueError(f"{path!r} holds no layers")
        meta = {k[len("user."):]: v for k, v in metadata.items() if k.startswith("user.")}
        return cls(tuple(layers), metadata.get("model_family", "unknown"), metadata.get("model_fingerprint", ""), meta)
