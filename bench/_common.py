"""Shared helpers of the benchmarks: machine description, timing, the real SD1.5 / SDXL layer shapes,
full-size ComfyUI models with deterministic random weights."""

from __future__ import annotations

import json
import os
import platform
import random
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))  # sae_math (pure) imports as a plain package; appended: ComfyUI's `nodes` wins

# attn1 widths in UNet execution order (inner = d for self-attention: to_q/to_k/to_v are (d, d)).
# SD1.5: input 1,2 (320), 4,5 (640), 7,8 (1280), middle (1280), output 3,4,5 (1280), 6,7,8 (640),
# 9,10,11 (320): 16 layers.
# SDXL: input 4,5 (2 transformer depths at 640), input 7,8 (10 at 1280), middle (10 at 1280),
# output 0,1,2 (10 at 1280), output 3,4,5 (2 at 640): 70 layers.
FAMILY_WIDTHS = {
    "sd15": [320] * 2 + [640] * 2 + [1280] * 2 + [1280] + [1280] * 3 + [640] * 3 + [320] * 3,
    "sdxl": [640] * 4 + [1280] * 20 + [1280] * 10 + [1280] * 30 + [640] * 6,
    # DiT image-stream attention (q, k, v each (D, D) rows of the fused or separate Linears):
    # FLUX.1 dev/schnell/Kontext and Chroma: 19 double + 38 single blocks at 3072; FLUX.2 dev: 8 + 48 at 6144;
    # Qwen-Image: 60 blocks at 3072; SD3.5 Large: 38 joint blocks at 2432; Z-Image: 30 main layers at 3840.
    "flux1": [3072] * 57,
    "flux2": [6144] * 56,
    "qwen_image": [3072] * 60,
    "sd35_large": [2432] * 38,
    "z_image": [3840] * 30,
}
DIT_SETS = ("flux1", "flux2", "qwen_image", "sd35_large", "z_image")


def random_layers(family: str, seed: int = 0, count: int | None = None):
    """[(wq, wk, wv)] per attn1 layer: fp16 (as checkpoints store them), N(0, 1/d), deterministic; the
    first `count` layers only when given (a FLUX.2 set in full is 12 GB)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    return [tuple((torch.randn(d, d, generator=gen) / d**0.5).to(torch.float16) for _ in range(3))
            for d in FAMILY_WIDTHS[family][:count]]


def timed(fn, repeats: int, warmup: int = 1):
    """(median seconds, all seconds, last result) of fn() over `repeats` runs after `warmup` runs."""
    result = None
    for _ in range(warmup):
        result = fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times, result


def interleaved_rounds(run, names: list[str], rounds: int, seed: int = 0) -> dict[str, list[float]]:
    """name -> seconds of run(name), one entry per round; every round runs each variant once, in a freshly
    shuffled order, so no variant always runs first or after the same neighbour. Round-aligned lists:
    times[a][i] and times[b][i] were measured seconds apart, under the same machine conditions."""
    rng = random.Random(seed)
    times = {name: [] for name in names}
    for _ in range(rounds):
        order = list(names)
        rng.shuffle(order)
        for name in order:
            t0 = time.perf_counter()
            run(name)
            times[name].append(time.perf_counter() - t0)
    return times


def paired_ratio(times: dict[str, list[float]], name: str, base: str) -> dict:
    """Median over rounds of time(name) / time(base) in the same round, with its quartiles: on a shared VM
    whose speed drifts by tens of percent over minutes, per-round ratios cancel the drift that a ratio of
    two medians keeps. The quartiles show the resolution of the measurement."""
    ratios = sorted(t / b for t, b in zip(times[name], times[base]))
    if len(ratios) < 4:
        low, high = ratios[0], ratios[-1]
    else:
        low, _, high = statistics.quantiles(ratios, n=4)
    return {"ratio": statistics.median(ratios), "ratio_q1": low, "ratio_q3": high, "ratios": ratios}


class Clock:
    """Wraps a callable (an attention patch, an attention function) and adds the seconds spent in it to a
    shared one-element total: the benchmarks' way of timing the pack's share of a run from inside it."""

    def __init__(self, fn, total: list[float]):
        self.fn, self.total = fn, total

    def __call__(self, *args):
        t0 = time.perf_counter()
        try:
            return self.fn(*args)
        finally:
            self.total[0] += time.perf_counter() - t0


def run_worker(script: str, argv: list[str]) -> dict:
    """Run `script --worker *argv` in a fresh Python process (a clean heap for peak-memory measurement) and
    return the JSON object its last stdout line holds."""
    proc = subprocess.run([sys.executable, script, "--worker", *argv], capture_output=True, text=True, cwd=REPO,
                          env=os.environ.copy())
    if proc.returncode != 0:
        raise RuntimeError(f"memory worker failed for {' '.join(argv)}:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def machine() -> dict:
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "platform": platform.platform()}
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in lscpu.splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("Model name", "CPU(s)", "Thread(s) per core", "Core(s) per socket", "L2 cache",
                               "L3 cache", "Hypervisor vendor"):
                info[key.strip()] = value.strip()
        info["avx512"] = "avx512f" in lscpu
    except (OSError, subprocess.CalledProcessError):
        info["Model name"] = platform.processor()
    try:
        blas = [line.strip() for line in torch.__config__.show().splitlines() if "Math Kernel" in line or "BLAS_INFO" in line]
        info["blas"] = blas[0][:120] if blas else "unknown"
    except Exception:  # noqa: BLE001 - informational only
        pass
    return info


def md_table(headers: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------------
# Full-size models through ComfyUI's own classes (random weights: no checkpoint can be downloaded here).

def full_unet_config(family: str, dtype) -> dict:
    """The real UNet configs (comfy/model_detection.py, unet_config_from_diffusers_unet)."""
    common = {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
              "legacy": False, "dtype": dtype, "in_channels": 4, "model_channels": 320,
              "use_temporal_attention": False, "use_temporal_resblock": False}
    if family == "sd15":
        return {**common, "adm_in_channels": None, "num_res_blocks": [2, 2, 2, 2],
                "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "channel_mult": [1, 2, 4, 4],
                "transformer_depth_middle": 1, "use_linear_in_transformer": False, "context_dim": 768,
                "num_heads": 8, "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0]}
    if family == "sdxl":
        return {**common, "num_classes": "sequential", "adm_in_channels": 2816, "num_res_blocks": [2, 2, 2],
                "transformer_depth": [0, 0, 2, 2, 10, 10], "channel_mult": [1, 2, 4],
                "transformer_depth_middle": 10, "use_linear_in_transformer": True, "context_dim": 2048,
                "num_head_channels": 64, "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10]}
    raise ValueError(family)


def full_model(family: str, dtype, init: str = "attn1", seed: int = 0):
    """A ModelPatcher around a full-size UNet built by ComfyUI's classes.

    init="attn1": only the self-attention q/k/v weights get values (N(0, 1/d), what the eigen bench
    uses); every other parameter stays uninitialised (never read). init="all": every parameter gets
    tests/testbed.py's deterministic initialisation and the output is calibrated (for sampling)."""
    import torch

    import testbed

    testbed.import_comfyui()
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models as sm

    config_cls = {"sd15": sm.SD15, "sdxl": sm.SDXL}[family]
    unet_config = full_unet_config(family, dtype)
    model_config = config_cls(unet_config)
    model_config.set_inference_dtype(dtype, None)
    base = model_config.get_model({})
    unet = base.diffusion_model
    if init == "all":
        testbed.init_weights_(unet, seed)
    else:
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in sorted(unet.named_parameters()):
                if ".attn1.to_q." in name or ".attn1.to_k." in name or ".attn1.to_v." in name:
                    p.copy_(torch.randn(p.shape, generator=gen) / p.shape[1] ** 0.5)
    base.eval()
    device = comfy.model_management.get_torch_device()
    return comfy.model_patcher.ModelPatcher(base, load_device=device, offload_device=device)


# ---------------------------------------------------------------------------------------------------
# Peak memory on CPU, measured: torch's CPU tensors come from malloc, so glibc's count of the bytes malloc
# has handed out (mallinfo2) is the live tensor memory plus Python's; a thread polls it every millisecond.

def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def live_heap_probe():
    """A function returning the bytes malloc currently has handed out (glibc >= 2.33), or None."""
    try:
        import ctypes

        class MallInfo2(ctypes.Structure):
            _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                       "fsmblks", "uordblks", "fordblks", "keepcost")]

        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = MallInfo2
    except (OSError, AttributeError):
        return None

    def live() -> int:
        info = libc.mallinfo2()
        return info.uordblks + info.hblkhd

    return live


class PeakMemory:
    """with PeakMemory() as peak: ...; peak.report() -> the peak above the level at entry (MB), polled
    every millisecond (live malloc bytes; the resident set where mallinfo2 is missing)."""

    def __init__(self):
        probe = live_heap_probe()
        self.measure = probe or rss_bytes
        self.kind = "malloc live bytes (mallinfo2)" if probe else "resident set"

    def __enter__(self):
        self.before = self.measure()
        self.peak = self.before
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.measure())
            time.sleep(0.001)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.measure())

    def report(self) -> dict:
        return {"measure": self.kind, "before_mb": self.before / 2**20,
                "peak_above_mb": (self.peak - self.before) / 2**20, "rss_mb": rss_bytes() / 2**20}
