"""Reading self-attention weights from a ComfyUI MODEL, and computing its directions with a cache.

The weights are the ones the model will sample with: the original tensors (dequantized, their scales
applied) plus this clone's weight patches (LoRA, ...), recomputed from the pieces that
ModelPatcher.get_key_patches() is made of (key_patches), never read from the shared nn.Module (which
holds whichever clone was loaded last), on one device chosen from the MODEL's configuration
(solve_device). Needs ComfyUI at call time only.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

import torch

from ..sae_math import eigen
from ..sae_math.directions import AttnDirections, LayerDirections
from ..sae_math.layers import LayerInfo, select_layers  # noqa: F401  (select_layers: the UNet presets, for callers)
from .families import find_adapter

log = logging.getLogger("self_attention_edit")

_PREFIX = "diffusion_model."


def unet_of(model):
    """The diffusion model (UNet or DiT) of a ModelPatcher, or None."""
    try:
        return model.get_model_object("diffusion_model")
    except Exception:
        return None


def model_layers(model) -> list[LayerInfo]:
    """The self-attention layers of a MODEL through its family adapter; [] for a family the pack does not know."""
    adapter = find_adapter(model)
    return adapter.layers() if adapter is not None else []


def solve_device(model) -> torch.device:
    """Where a MODEL's eigenproblems are solved: its load device when that is a CUDA (or ROCm) GPU, the
    device its weights live on while sampling, else the CPU (MPS and other backends lack float64).

    A function of the patcher's configuration only, never of where a weight happens to be right now
    (loaded, offloaded, lazily mapped, patched on the CPU): the same MODEL is solved on the same device
    whether or not it was loaded before, so its directions are the same to the last bit."""
    try:
        device = torch.device(getattr(model, "load_device", None) or "cpu")
    except (TypeError, RuntimeError):
        return torch.device("cpu")
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.device("cuda", device.index if device.index is not None else torch.cuda.current_device())
    return torch.device("cpu")


def device_key(device: torch.device) -> str:
    """The cache's name for a solve device: 'cpu', or 'cuda:<index>:<GPU name>'. Different devices round
    differently in the last bits; the cache keeps their answers apart (see _EigenCache)."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda:{device.index}:{torch.cuda.get_device_name(device)}"
    return device.type


def _is_quantized(weight) -> bool:
    """A quantized tensor: ComfyUI's QuantizedTensor (comfy.quant_ops: fp8 scaled, nvfp4, mxfp8, int8;
    0.3.75 and 0.33 alike), another pack's tensor subclass with .dequantize(), or a torch quantized tensor.
    Plain tensors also have .dequantize() (an identity for float), hence the type test."""
    if getattr(weight, "is_quantized", False):
        return True
    return type(weight) not in (torch.Tensor, torch.nn.Parameter) and callable(getattr(weight, "dequantize", None))


def _stored_weight(weight, device: torch.device, model_dtype) -> torch.Tensor:
    """A stored weight as a plain dense tensor on device, before its module's convert function and before
    any patch.

    - quantized: the packed data is moved (the smaller transfer), then .dequantize() applies its scales
      and returns the dtype the model computes with (what the model's own ops use);
    - a meta tensor (a weight that was never materialised): zeros, as ComfyUI's ops materialise it;
    - a lazily loaded weight (0.33 dynamic VRAM loads with assign=True: the tensor keeps the file's dtype)
      is cast to the module's model dtype (weight_comfy_model_dtype), the dtype the model samples it in and
      the one a non-dynamic load would have stored: both loads give the same directions;
    - 1-byte float types (plain fp8 weights without scale) are upcast to float32 (exact): torch does not
      promote fp8 with other dtypes."""
    if getattr(weight, "is_meta", False):
        weight = torch.zeros(weight.shape, dtype=model_dtype or weight.dtype, device=device)
    elif _is_quantized(weight):
        weight = weight.detach().to(device).dequantize()
    else:
        weight = weight.detach().to(device)
        if (isinstance(model_dtype, torch.dtype) and model_dtype != weight.dtype and model_dtype.is_floating_point
                and weight.dtype.is_floating_point):
            weight = weight.to(model_dtype)
    if weight.dtype.is_floating_point and weight.dtype.itemsize < 2:
        weight = weight.to(torch.float32)
    return weight


def effective_weight(entry: list, key: str, device=None, module=None) -> tuple[torch.Tensor, bool]:
    """(the weight this clone samples with, on device, whether any patch applied).

    entry: [(original, convert_func), *patches], as key_patches() or one entry of
    ModelPatcher.get_key_patches() give it; the original comes from the patcher's backup when a loaded
    clone wrote its patches into the shared module, so the answer never depends on which clone was loaded
    last. module: the weight's module (its convert function and model dtype), None if unknown.

    The steps are those of ModelPatcher.patch_weight_to_device (0.3.75 and 0.33): a float32 copy, the
    module's convert function (it applies the per-Linear scale_weight of 0.3.75's scaled-fp8 ops; quantized
    tensors were dequantized before it), then comfy.lora.calculate_weight, once, on that copy. Unlike a
    load, the patched result is not rounded back to the stored dtype (or re-quantized): the model samples
    with that rounding under a normal load but without it in low-VRAM and dynamic-VRAM modes, which patch
    on the fly; the unrounded weight is the one answer common to all. The stored tensor is never modified.

    Returns the stored dtype (fp16/bf16/float32, dequantized) when nothing converts or patches it, else
    float32."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    original, convert = entry[0]
    patches = entry[1:]
    weight = _stored_weight(original, device, getattr(module, "weight_comfy_model_dtype", None))
    has_convert = module is not None and callable(getattr(module, "convert_weight", None))
    if not patches and not has_convert:
        return weight, False
    w32 = convert(weight.to(torch.float32, copy=True), inplace=True)
    if not patches:
        return w32, False
    import comfy.lora

    return comfy.lora.calculate_weight(patches, w32, key), True


def key_patches(model, key: str) -> list:
    """[(original weight, convert_func), *patches] of one state-dict key: what one entry of
    ModelPatcher.get_key_patches() holds, for this key alone.

    get_key_patches() itself walks the whole model's state_dict() and looks every key up as an attribute:
    on 0.33 a quantized Linear's state dict holds `weight_scale` (written by its QuantizedTensor), which is
    no attribute, and get_key_patches raises AttributeError on any quantized checkpoint. This reads the
    same public pieces for the keys we need: the module's weight and convert function
    (comfy.model_patcher.get_key_weight), the original from the patcher's backup (a loaded clone wrote its
    patched weight into the shared module) or hook backup, and this clone's patches."""
    import comfy.model_patcher

    weight, _, convert = comfy.model_patcher.get_key_weight(model.model, key)
    backup = model.backup.get(key)
    if backup is not None:
        weight = backup.weight
    hook_backup = getattr(model, "hook_backup", {}).get(key)
    if hook_backup is not None:
        weight = hook_backup[0]
    if convert is None:
        def convert(a, **kwargs):
            return a
    return [(weight, convert)] + list(model.patches.get(key, ()))


def _weight_module(model, key: str):
    """The module holding a state-dict key of the ModelPatcher, or None."""
    path = key.rsplit(".", 1)[0]
    try:
        return model.model.get_submodule(path)
    except (AttributeError, TypeError):
        return None


def _hash_tensor(h, t: torch.Tensor) -> None:
    """Feed dtype, shape and the exact stored bytes of t (no upcast: fp16 weights hash as fp16)."""
    t = t.detach().to("cpu").contiguous()
    h.update(str((t.dtype, tuple(t.shape))).encode())
    # hashlib releases the GIL while hashing a large buffer: fingerprints() hashes layers in parallel.
    h.update(memoryview(t.view(torch.uint8).reshape(-1).numpy()))


@torch.no_grad()
def layer_weights(model, layers: list[LayerInfo], device=None,
                  adapter=None) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """layer key -> (Wq, Wk, Wv), each (inner, d), patches applied, dequantized, scales applied.

    Where they are comes from the family adapter (qkv_source): three separate weights (UNet attn1
    to_q/to_k/to_v) or row ranges of one fused weight (Flux img_attn.qkv, single-block linear1's first 3D
    rows), whose effective weight is computed once and sliced (views; the MLP rows of linear1 are dropped).
    The three of a layer are on one device (default: solve_device(model)) in one dtype: q, k and v may
    arrive in different dtypes (a patched one in float32 beside fp16 originals; a quantized one in its
    compute dtype) and are promoted to their common dtype (exact: every one is representable in it)."""
    device = solve_device(model) if device is None else torch.device(device)
    adapter = adapter if adapter is not None else find_adapter(model)
    out = {}
    for layer in layers:
        source = adapter.qkv_source(layer)
        full = [effective_weight(key_patches(model, key), key, device, _weight_module(model, key))[0]
                for key in source.keys]
        if source.rows is None:
            ws = full
        else:
            # One copy of the attention rows (q, k, v are views into it): the fused weight itself (Flux
            # linear1 also holds the MLP rows, 4/7 of it) is not kept while the batch is hashed and solved.
            low, high = min(r[0] for r in source.rows), max(r[1] for r in source.rows)
            rows = full[0][low:high].clone() if (low, high) != (0, full[0].shape[0]) else full[0]
            ws = [rows[start - low:stop - low] for start, stop in source.rows]
        del full
        dtype = functools.reduce(torch.promote_types, (w.dtype for w in ws))
        out[layer.key] = tuple(w.to(dtype) for w in ws)
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
    """Process-wide LRU of eigenpairs keyed by (weight content, k, solve device), bounded in bytes.

    Keyed by the fingerprint of the exact weights, so it can never serve directions for weights that
    changed. Keyed by k too, although the top 8 of a k=16 answer would do for k=8: the fast eigensolver's
    last bits depend on k (its subspace size does), and a workflow must give the same directions, bit for
    bit, whatever ran before it in the same server. Keyed by the solve device (device_key) for the same
    reason: a GPU and a CPU answer agree to the solver's accuracy contract (each direction within
    eigen.ANGLE_TOL of the exact eigenvector, so within 2 * ANGLE_TOL of each other), not bit for bit, and
    two MODELs with the same weights but different load devices (a CPU-only text workflow beside a GPU
    one, two GPUs) must not get whichever answer was computed first. Entries are CPU tensors."""

    def __init__(self, max_bytes: int = 256 << 20):
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple[str, int, str], tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, fingerprint: str, k: int, device: str = "cpu"):
        key = (fingerprint, k, device)
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return item

    def put(self, fingerprint: str, values: torch.Tensor, vectors: torch.Tensor, device: str = "cpu") -> None:
        key = (fingerprint, values.shape[0], device)
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

# Effective weights held at once (on the solve device) while computing directions: layers are read,
# hashed and solved in batches of about this many bytes, so a GPU solve of SDXL (~1 GB of float32 q/k/v
# when patched) never holds every layer's copy beside the loaded model. SD1.5 fits in one batch.
READ_BATCH_BYTES = 512 << 20


def _batches(layers: list[LayerInfo]) -> list[list[LayerInfo]]:
    """Consecutive groups of layers whose float32 q/k/v (3 x d x d: inner = d on SD-family UNets and on
    Flux, whose fused weights are cut to their q/k/v rows) fit in READ_BATCH_BYTES; at least one layer per
    group."""
    out, current, size = [], [], 0
    for layer in layers:
        need = 3 * layer.width * layer.width * 4
        if current and size + need > READ_BATCH_BYTES:
            out.append(current)
            current, size = [], 0
        current.append(layer)
        size += need
    if current:
        out.append(current)
    return out


def compute_directions(model, preset: str, custom: str, k: int, on_layer=None, device=None,
                       adapter=None) -> AttnDirections:
    """Top-k directions for the selected layers of a MODEL (ModelPatcher). on_layer(i, n) is called
    after each layer (progress, interruption). device: where to solve; default solve_device(model).
    adapter: the MODEL's family adapter (default: found from the model; ValueError if there is none).
    The returned tensors are on the CPU whatever the solve device.

    Layers are solved one at a time: solving two at once on two threads was measured slower on 2 cores
    (SDXL, k=16: 7-8 s against 5.5 s), as each solve's products already use every core."""
    adapter = adapter if adapter is not None else find_adapter(model)
    if adapter is None:
        raise ValueError("the pack does not know this model family's self-attention layers")
    layers = adapter.select(adapter.layers(), preset, custom)
    device = solve_device(model) if device is None else torch.device(device)
    where = device_key(device)
    result = []
    whole = hashlib.blake2b(digest_size=16)
    done = 0
    for batch in _batches(layers):
        weights = layer_weights(model, batch, device, adapter)
        prints = fingerprints(weights)
        for layer in batch:
            ws = weights.pop(layer.key)
            fingerprint = prints[layer.key]
            whole.update(f"{layer.key}:{fingerprint};".encode())
            cached = EIGEN_CACHE.get(fingerprint, min(k, ws[0].shape[1]), where)  # k is clamped to the width
            if cached is None:
                values, vectors = (t.cpu() for t in eigen.top_eigenpairs(*ws, k))
                EIGEN_CACHE.put(fingerprint, values, vectors, where)
            else:
                values, vectors = cached
            del ws
            result.append(LayerDirections(layer.key, layer.width, layer.level, values, vectors))
            done += 1
            if on_layer is not None:
                on_layer(done, len(layers))
    return AttnDirections(tuple(result), model_family(model), whole.hexdigest())


def model_family(model) -> str:
    """ComfyUI's model config class name ('SD15', 'SD20', 'SDXL', ...), fine-tunes included; 'unknown'."""
    config = getattr(getattr(model, "model", None), "model_config", None)
    return type(config).__name__ if config is not None else "unknown"
