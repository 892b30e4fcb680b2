"""Reading self-attention weights from a ComfyUI MODEL, and computing its directions with a cache.

The weights are the ones the model will sample with: the original tensors plus this clone's weight
patches (LoRA, ...), recomputed from ModelPatcher.get_key_patches(), never read from the shared nn.Module
(which holds whichever clone was loaded last). Needs ComfyUI at call time only.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

import torch

from . import eigen
from .directions import AttnDirections, LayerDirections
from .layers import LayerInfo, discover_layers, select_layers

log = logging.getLogger("self_attention_edit")

_PREFIX = "diffusion_model."


def unet_of(model):
    """The UNet of a ModelPatcher, or None."""
    try:
        return model.get_model_object("diffusion_model")
    except Exception:
        return None


def model_layers(model) -> list[LayerInfo]:
    unet = unet_of(model)
    return discover_layers(unet) if unet is not None else []


def _dense(weight) -> torch.Tensor:
    """A plain tensor from a stored weight (0.8.0+ may hold quantized tensor subclasses)."""
    if type(weight) not in (torch.Tensor, torch.nn.Parameter) and hasattr(weight, "dequantize"):
        weight = weight.dequantize()
    return weight.detach()


def effective_weight(key_patches: list, key: str) -> tuple[torch.Tensor, bool]:
    """(weight in float32 on CPU with this clone's patches applied, whether any patch applied).

    key_patches: one entry of ModelPatcher.get_key_patches(): [(original, convert_func), *patches]."""
    original, convert = key_patches[0]
    patches = key_patches[1:]
    weight = _dense(original)
    if not patches:
        return weight, False
    import comfy.lora

    w32 = convert(weight.to("cpu", torch.float32, copy=True), inplace=True)
    return comfy.lora.calculate_weight(patches, w32, key), True


def _hash_tensor(h, t: torch.Tensor) -> None:
    """Feed dtype, shape and the exact stored bytes of t (no upcast: fp16 weights hash as fp16)."""
    t = t.detach().to("cpu").contiguous()
    h.update(str((t.dtype, tuple(t.shape))).encode())
    # hashlib releases the GIL while hashing a large buffer: fingerprints() hashes layers in parallel.
    h.update(memoryview(t.view(torch.uint8).reshape(-1).numpy()))


def layer_weights(model, layers: list[LayerInfo]) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """layer key -> (Wq, Wk, Wv), each (inner, d), patches applied."""
    all_patches = model.get_key_patches(_PREFIX)
    out = {}
    for layer in layers:
        ws = []
        for proj in ("to_q", "to_k", "to_v"):
            key = f"{_PREFIX}{layer.module_path}.attn1.{proj}.weight"
            ws.append(effective_weight(all_patches[key], key)[0])
        out[layer.key] = tuple(ws)
    return out


def weights_fingerprint(ws: tuple[torch.Tensor, ...]) -> str:
    """Content hash of one layer's q/k/v weights (exact bytes: any change gives a new fingerprint).
    SHA-256 truncated to 128 bits: 25% faster than blake2b on the benchmark machine (docs/benchmarks.md)."""
    h = hashlib.sha256()
    for w in ws:
        _hash_tensor(h, w)
    return h.hexdigest()[:32]


# Threads hashing layers concurrently (hashlib releases the GIL on large buffers).
HASH_THREADS = max(1, min(4, os.cpu_count() or 1))


def fingerprints(weights: dict[str, tuple[torch.Tensor, ...]]) -> dict[str, str]:
    """weights_fingerprint of every layer, hashed on HASH_THREADS threads."""
    keys = list(weights)
    if HASH_THREADS <= 1 or len(keys) <= 1:
        return {key: weights_fingerprint(weights[key]) for key in keys}
    with ThreadPoolExecutor(max_workers=min(HASH_THREADS, len(keys)), thread_name_prefix="sae-hash") as pool:
        return dict(zip(keys, pool.map(lambda key: weights_fingerprint(weights[key]), keys)))


class _EigenCache:
    """Process-wide LRU of eigenpairs keyed by (weight content, k), bounded in bytes.

    Keyed by the fingerprint of the exact weights, so it can never serve directions for weights that
    changed. Keyed by k too, although the top 8 of a k=16 answer would do for k=8: the fast eigensolver's
    last bits depend on k (its subspace size does), and a workflow must give the same directions, bit for
    bit, whatever ran before it in the same server."""

    def __init__(self, max_bytes: int = 256 << 20):
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, fingerprint: str, k: int):
        with self._lock:
            item = self._items.get((fingerprint, k))
            if item is None:
                self.misses += 1
                return None
            self._items.move_to_end((fingerprint, k))
            self.hits += 1
            return item

    def put(self, fingerprint: str, values: torch.Tensor, vectors: torch.Tensor) -> None:
        key = (fingerprint, values.shape[0])
        with self._lock:
            if key in self._items:
                self._bytes -= self._size(self._items.pop(key))
            self._items[key] = (values, vectors)
            self._bytes += self._size((values, vectors))
            while self._bytes > self.max_bytes and len(self._items) > 1:
                self._bytes -= self._size(self._items.popitem(last=False)[1])

    @staticmethod
    def _size(item) -> int:
        return sum(t.numel() * t.element_size() for t in item)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0
            self.hits = self.misses = 0


EIGEN_CACHE = _EigenCache()


def compute_directions(model, preset: str, custom: str, k: int, on_layer=None) -> AttnDirections:
    """Top-k directions for the selected layers of a MODEL (ModelPatcher). on_layer(i, n) is called
    after each layer (progress, interruption).

    Layers are solved one at a time: solving two at once on two threads was measured slower on 2 cores
    (SDXL, k=16: 7-8 s against 5.5 s), as each solve's products already use every core."""
    layers = select_layers(model_layers(model), preset, custom)
    weights = layer_weights(model, layers)
    prints = fingerprints(weights)
    result = []
    whole = hashlib.blake2b(digest_size=16)
    for i, layer in enumerate(layers):
        ws = weights[layer.key]
        fingerprint = prints[layer.key]
        whole.update(f"{layer.key}:{fingerprint};".encode())
        cached = EIGEN_CACHE.get(fingerprint, min(k, ws[0].shape[1]))  # k is clamped to the width
        if cached is None:
            values, vectors = eigen.top_eigenpairs(*ws, k)
            EIGEN_CACHE.put(fingerprint, values, vectors)
        else:
            values, vectors = cached
        result.append(LayerDirections(layer.key, layer.width, layer.level, values, vectors))
        if on_layer is not None:
            on_layer(i + 1, len(layers))
    return AttnDirections(tuple(result), model_family(model), whole.hexdigest())


def model_family(model) -> str:
    """ComfyUI's model config class name ('SD15', 'SD20', 'SDXL', ...), fine-tunes included; 'unknown'."""
    config = getattr(getattr(model, "model", None), "model_config", None)
    return type(config).__name__ if config is not None else "unknown"
