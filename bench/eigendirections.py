"""Benchmark of the eigen-directions: speed and accuracy of sae_math/eigen.py against the float64
reference on full-size SD1.5 (16 attn1 layers) and SDXL (70) weight sets with deterministic random fp16
weights, the machine's matmul throughput, and the cost of a cache-hit request (hashing vs lookup).

    $SAE_VENV/bin/python bench/eigendirections.py [--out results.json] [--repeats 3]
    $SAE_VENV/bin/python bench/eigendirections.py --dit --ks 16 --out bench/results/eigendirections_dit.json

--dit times the DiT widths (FLUX.1 3072 x 57 layers, FLUX.2 6144 x 56, Qwen-Image 3072 x 60, SD3.5 Large
2432 x 38, Z-Image 3840 x 30) on their first --sample-layers layers and extrapolates to the whole model.

Prints markdown tables; --out also writes everything as JSON. Needs COMFYUI_PATH for the cache-hit part
(scripts/bootstrap.sh sets it; --no-comfy skips that part).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from _common import DIT_SETS, FAMILY_WIDTHS, machine, md_table, random_layers, timed  # noqa: E402
from sae_math import eigen  # noqa: E402
from testbed import principal_angles  # noqa: E402  (bench/_common puts tests/ on sys.path)

# ---------------------------------------------------------------------------------------------------
# Flop model (for the achieved fraction of the measured matmul throughput). Counts multiply-adds as 2.

def _gram_flops(d, rows):
    nb = max(1, min(4, d // 256))
    edges = [round(i * d / nb) for i in range(nb + 1)]
    return sum(2 * rows * edges[j + 1] * (edges[j + 1] - edges[j]) for j in range(nb))


def _eigh_flops(n):
    return (4 / 3 + 2) * n**3  # tridiagonalisation + back-transformation of the eigenvectors


def method_flops(d, k, report) -> float:
    """Model flops of what eigen.top_eigenpairs did on one (d, d) layer (as reported)."""
    rows = 3 * d
    total = _gram_flops(d, rows)
    p = min(d, k + max(8, k // 4))
    methods = [report.method] if not report.fallback else [m.split(":")[0] for m in report.fallback.split("; ")] + [report.method]
    for method in methods:
        if method == "shift-invert":
            b, q, p = eigen._krylov_shape(k, d)
            m = b * (q + 1)
            total += eigen._LANCZOS_STEPS * 2 * d * d  # Lanczos
            total += d**3 / 3  # Cholesky
            total += (q + 1) * 2 * d * d * b  # two triangular solves per block step
            total += sum(8 * d * (j + 1) * b * b for j in range(q)) + 2 * d * m * b  # block CGS2
            total += _eigh_flops(m) + 2 * d * m * p
        elif method == "dense-f32":
            total += _eigh_flops(d)
        elif method == "exact-f64":
            total += 2 * rows * d * d + _eigh_flops(d)
            continue
        total += 3 * (4 * d * d * p + 2 * d * p * p) * (1 + report.corrections)  # float64 Rayleigh-Ritz
    return total


def reference_flops(d):
    return 2 * 3 * d * d * d + _eigh_flops(d)


def gemm_throughput(repeats):
    """GFLOP/s of the products that dominate: the Gram product S^T S ((3d, d) -> (d, d)) and a skinny
    (d, d) x (d, 32) product, float32 and float64, at d = 640 and 1280."""
    rows = []
    for d in (640, 1280):
        for dtype in (torch.float32, torch.float64):
            s = torch.randn(3 * d, d, dtype=dtype)
            med, _, _ = timed(lambda: s.T @ s, repeats + 2)
            rows.append({"op": f"S^T S, S ({3 * d}x{d})", "dtype": str(dtype).replace("torch.", ""),
                         "gflops": 2 * 3 * d * d * d / med / 1e9, "ms": med * 1e3})
            a = torch.randn(d, d, dtype=dtype)
            x = torch.randn(d, 32, dtype=dtype)
            med, _, _ = timed(lambda: a @ x, 5 * repeats + 5)
            rows.append({"op": f"({d}x{d}) x ({d}x32)", "dtype": str(dtype).replace("torch.", ""),
                         "gflops": 2 * d * d * 32 / med / 1e9, "ms": med * 1e3})
    return rows


# ---------------------------------------------------------------------------------------------------
# Eigen benchmark

def bench_family(family, ks, repeats, sample=None):
    """Every layer of the set, or its first `sample` layers (then the times are also extrapolated to the
    whole set: total_s = median time per layer x layers of the model; the layers of one set have one
    width, so they cost alike). The float64 reference runs once when sampling (it is the slow part)."""
    layers = random_layers(family, count=sample)
    model_layers = len(FAMILY_WIDTHS[family])
    kmax = max(ks)
    ref_med, ref_times, ref = timed(lambda: [eigen.reference_eigenpairs_f64(*ws, kmax) for ws in layers],
                                    1 if sample else repeats, warmup=0)
    out = {"family": family, "layers": len(layers), "model_layers": model_layers, "width": layers[0][0].shape[1],
           "reference_s": ref_med, "reference_runs_s": ref_times,
           "reference_model_s": ref_med / len(layers) * model_layers,
           "reference_model_gflop": sum(reference_flops(ws[0].shape[1]) for ws in layers) / 1e9, "k": {}}
    for k in ks:
        med, times, res = timed(lambda: [eigen.top_eigenpairs_report(*ws, k) for ws in layers], repeats)
        angle = rel = bound = 0.0
        methods, fallbacks, corrections, worst = Counter(), 0, 0, None
        flops = 0.0
        for ws, (values, vectors, report), (rv, rvec) in zip(layers, res, ref):
            a = float(principal_angles(vectors, rvec[:k]).max())
            e = float(((values.double() - rv[:k]).abs() / rv[:k].abs()).max())
            if a > angle:
                angle, worst = a, report
            rel = max(rel, e)
            bound = max(bound, report.angle_bound)
            methods[report.method] += 1
            fallbacks += report.method == "exact-f64" and report.fallback is not None
            corrections += report.corrections
            flops += method_flops(ws[0].shape[1], k, report)
            gram = vectors.double() @ vectors.double().T
            assert torch.all(values[:-1] >= values[1:]), "values must be descending"
            assert float((gram - torch.eye(k, dtype=torch.float64)).abs().max()) < 1e-5, "rows must be orthonormal"
        out["k"][k] = {"ours_s": med, "ours_runs_s": times, "speedup": ref_med / med,
                       "ours_model_s": med / len(layers) * model_layers,
                       "max_angle_rad": angle, "max_value_rel_err": rel, "max_angle_bound": bound,
                       "methods": dict(methods), "fallbacks_to_f64": fallbacks, "corrections": corrections,
                       "model_gflop": flops / 1e9, "worst_layer_report": repr(worst)}
    return out


# ---------------------------------------------------------------------------------------------------
# Hashing and a cache-hit request

def old_fingerprint(ws):
    """The previous scheme: blake2b-128 over dtype, shape and bytes, one thread."""
    h = hashlib.blake2b(digest_size=16)
    for t in ws:
        t = t.detach().to("cpu").contiguous()
        h.update(str((t.dtype, tuple(t.shape))).encode())
        h.update(memoryview(t.view(torch.uint8).reshape(-1).numpy()))
    return h.hexdigest()


def bench_hashing(weights_mod, repeats):
    rows = []
    for family in FAMILY_WIDTHS:
        layers = random_layers(family, seed=1)
        weights = {str(i): ws for i, ws in enumerate(layers)}
        nbytes = sum(t.numel() * t.element_size() for ws in layers for t in ws)
        old, _, _ = timed(lambda: [old_fingerprint(ws) for ws in layers], repeats)
        new1, _, _ = timed(lambda: [weights_mod.weights_fingerprint(ws) for ws in layers], repeats)
        newp, _, _ = timed(lambda: weights_mod.fingerprints(weights), repeats)
        rows.append({"family": family, "mb": nbytes / 1e6, "old_blake2b_1thread_ms": old * 1e3,
                     "sha256_1thread_ms": new1 * 1e3, "sha256_threads_ms": newp * 1e3,
                     "threads": weights_mod.HASH_THREADS, "gb_per_s": nbytes / newp / 1e9})
    return rows


def bench_cache_hit(family, k, repeats):
    """compute_directions on a full-size ModelPatcher (fp16 weights): the first call (miss) and cache
    hits, with the hit's cost split into reading the weights, hashing them, and the cache lookups."""
    import testbed
    from _common import full_model

    weights_mod = testbed.pack_module("sae_patches.weights")
    t0 = time.perf_counter()
    model = full_model(family, torch.float16)
    build_s = time.perf_counter() - t0
    weights_mod.EIGEN_CACHE.clear()
    t0 = time.perf_counter()
    weights_mod.compute_directions(model, "all", "", k)
    miss_s = time.perf_counter() - t0
    hit_s, _, _ = timed(lambda: weights_mod.compute_directions(model, "all", "", k), repeats)

    layers = weights_mod.select_layers(weights_mod.model_layers(model), "all", "")
    discover_s, _, _ = timed(lambda: weights_mod.select_layers(weights_mod.model_layers(model), "all", ""), repeats)
    read_s, _, weights = timed(lambda: weights_mod.layer_weights(model, layers), repeats)
    hash_s, _, prints = timed(lambda: weights_mod.fingerprints(weights), repeats)
    old_hash_s, _, _ = timed(lambda: [old_fingerprint(ws) for ws in weights.values()], repeats)
    lookup_s, _, _ = timed(lambda: [weights_mod.EIGEN_CACHE.get(prints[x.key], k) for x in layers], repeats)
    return {"family": family, "k": k, "layers": len(layers), "model_build_s": build_s, "miss_s": miss_s,
            "hit_ms": hit_s * 1e3, "discover_layers_ms": discover_s * 1e3, "read_weights_ms": read_s * 1e3,
            "hash_ms": hash_s * 1e3, "old_hash_ms": old_hash_s * 1e3, "lookup_ms": lookup_s * 1e3,
            "rest_ms": (hit_s - discover_s - read_s - hash_s - lookup_s) * 1e3}


# ---------------------------------------------------------------------------------------------------

def _finite(obj):
    """JSON has no inf/nan: write them as strings."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (medians)")
    parser.add_argument("--ks", default="8,16,64")
    parser.add_argument("--families", default="sd15,sdxl")
    parser.add_argument("--no-comfy", action="store_true", help="skip the ComfyUI parts (hashing, cache hit)")
    parser.add_argument("--dit", action="store_true",
                        help=f"the DiT sets ({', '.join(DIT_SETS)}) instead of --families, their first "
                             "--sample-layers layers each, extrapolated to the whole model; implies --no-comfy")
    parser.add_argument("--sample-layers", type=int, default=2, help="layers timed per DiT set (--dit)")
    args = parser.parse_args(argv)
    ks = [int(x) for x in args.ks.split(",")]
    families = [f for f in args.families.split(",") if f]
    sample = None
    if args.dit:
        families, sample, args.no_comfy = list(DIT_SETS), args.sample_layers, True

    results = {"machine": machine(), "repeats": args.repeats,
               "tolerances": {"angle_rad": eigen.ANGLE_TOL, "value_rtol": eigen.VALUE_RTOL}}
    m = results["machine"]
    print(f"# Eigen-directions benchmark\n\n{m.get('Model name')}, {m.get('CPU(s)')} CPUs, torch {m['torch']} "
          f"({m['torch_threads']} threads), {m.get('blas', '')}\n")

    results["throughput"] = gemm_throughput(args.repeats)
    print(md_table(["product", "dtype", "GFLOP/s", "ms"],
                   [[r["op"], r["dtype"], f"{r['gflops']:.0f}", f"{r['ms']:.2f}"] for r in results["throughput"]]))
    peak32 = max(r["gflops"] for r in results["throughput"] if r["dtype"] == "float32" and "S^T" in r["op"])
    peak64 = max(r["gflops"] for r in results["throughput"] if r["dtype"] == "float64" and "S^T" in r["op"])

    results["eigen"] = []
    rows = []
    for family in families:
        r = bench_family(family, ks, args.repeats, sample)
        results["eigen"].append(r)
        ref_rate = r["reference_model_gflop"] / r["reference_s"]
        for k, x in r["k"].items():
            rate = x["model_gflop"] / x["ours_s"]
            rows.append([family, r["layers"], k, f"{r['reference_s']:.2f}", f"{x['ours_s']:.3f}", f"{x['speedup']:.1f}x",
                         f"{x['max_angle_rad']:.1e}", f"{x['max_value_rel_err']:.1e}", f"{x['max_angle_bound']:.1e}",
                         ", ".join(f"{n} {c}" for n, c in sorted(x["methods"].items())), x["fallbacks_to_f64"],
                         f"{rate:.0f} ({rate / peak32:.0%})", f"{ref_rate:.0f} ({ref_rate / peak64:.0%})"])
    print()
    print(md_table(["set", "layers", "k", "float64 eigh (s)", "ours (s)", "speedup", "max angle (rad)",
                    "max eigenvalue rel. err", "max angle bound", "methods", "float64 fallbacks",
                    "ours GFLOP/s (of f32 GEMM)", "reference GFLOP/s (of f64 GEMM)"], rows))
    if sample:
        print(f"\nWhole models, extrapolated from the first {sample} layers of each set (time per layer x layers):\n")
        print(md_table(["set", "width", "layers", "k", "ours per layer (s)", "ours, whole model (s)",
                        "float64 eigh, whole model (s)"],
                       [[r["family"], r["width"], r["model_layers"], k, f"{x['ours_s'] / r['layers']:.2f}",
                         f"{x['ours_model_s']:.0f}", f"{r['reference_model_s']:.0f}"]
                        for r in results["eigen"] for k, x in r["k"].items()]))

    if not args.no_comfy:
        import testbed

        testbed.load_pack()
        weights_mod = testbed.pack_module("sae_patches.weights")
        results["hashing"] = bench_hashing(weights_mod, args.repeats)
        print()
        print(md_table(["set", "MB (fp16 q/k/v)", "blake2b, 1 thread (old) ms", "sha256, 1 thread ms",
                        "sha256, threads ms", "threads", "GB/s"],
                       [[h["family"], f"{h['mb']:.0f}", f"{h['old_blake2b_1thread_ms']:.0f}", f"{h['sha256_1thread_ms']:.0f}",
                         f"{h['sha256_threads_ms']:.0f}", h["threads"], f"{h['gb_per_s']:.2f}"] for h in results["hashing"]]))
        results["cache_hit"] = [bench_cache_hit(f, 16, args.repeats) for f in families]
        print()
        print(md_table(["model", "layers", "first call (miss) s", "cache hit ms", "find layers ms", "read weights ms",
                        "hash ms", "(old hash ms)", "lookups ms", "rest ms"],
                       [[c["family"], c["layers"], f"{c['miss_s']:.2f}", f"{c['hit_ms']:.0f}", f"{c['discover_layers_ms']:.1f}",
                         f"{c['read_weights_ms']:.1f}", f"{c['hash_ms']:.0f}", f"{c['old_hash_ms']:.0f}",
                         f"{c['lookup_ms']:.3f}", f"{c['rest_ms']:.1f}"] for c in results["cache_hit"]]))

    if args.out:
        Path(args.out).write_text(json.dumps(_finite(results), indent=2))
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
