"""The fast eigensolver of sae_math/eigen.py against a float64 reference on real-width random fp16 layers:
accuracy per direction and eigenvalue, the output contract, and every hand-over of the method chain
(shift-invert -> dense-f32 -> float64 reference). Correctness only: timings live in bench/."""

import pytest
import torch

import testbed
from sae_math import eigen

ANGLE = 1e-4  # radians, per direction
VALUE_RTOL = 1e-5


def random_layer(d, seed):
    """q/k/v weights as checkpoints store them: fp16, N(0, 1/d) (Marchenko-Pastur spectrum: the top
    eigenvalues lie within ~0.5% of each other, the hard case for iterative eigensolvers)."""
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(d, d, generator=g) / d**0.5).half() for _ in range(3)]


@pytest.fixture(scope="module")
def layers():
    """width -> (weights, float64 reference values (64,), vectors (64, d))."""
    out = {}
    for d in (320, 1280):
        ws = random_layer(d, seed=d + 1)
        out[d] = (ws, *eigen.reference_eigenpairs_f64(*ws, 64))
    return out


def check_contract(values, vectors, k, d):
    assert values.dtype == torch.float32 and vectors.dtype == torch.float32
    assert values.shape == (k,) and vectors.shape == (k, d)
    assert torch.all(values[:-1] >= values[1:]), "eigenvalues must be descending"
    gram = vectors.double() @ vectors.double().T
    torch.testing.assert_close(gram, torch.eye(k, dtype=torch.float64), atol=1e-6, rtol=0)
    top = vectors.abs().argmax(dim=1)
    assert torch.all(vectors.gather(1, top[:, None]) > 0), "largest-magnitude coordinate must be positive"
    assert torch.equal(eigen.canonical_sign(vectors), vectors)


def check_accuracy(values, vectors, ref_values, ref_vectors, k):
    angles = testbed.principal_angles(vectors, ref_vectors[:k])
    assert float(angles.max()) < ANGLE, f"max angle {float(angles.max()):.2e}"
    rel = ((values.double() - ref_values[:k]).abs() / ref_values[:k]).max()
    assert float(rel) < VALUE_RTOL, f"max eigenvalue rel. error {float(rel):.2e}"
    return float(angles.max())


@pytest.mark.parametrize("d", [320, 1280])
@pytest.mark.parametrize("k", [1, 8, 16, 64])
def test_fast_method_matches_float64_reference(layers, d, k):
    ws, ref_values, ref_vectors = layers[d]
    values, vectors, report = eigen.top_eigenpairs_report(*ws, k)
    check_contract(values, vectors, k, d)
    angle = check_accuracy(values, vectors, ref_values, ref_vectors, k)
    # The fast path did the work (no hand-over to the reference on these layers), and its a-posteriori
    # bound is a true upper bound of the measured error.
    assert report.method in ("shift-invert", "dense-f32") and report.fallback is None, report
    assert angle <= report.angle_bound <= eigen.ANGLE_TOL
    # The public function returns the same thing, deterministically.
    again_values, again_vectors = eigen.top_eigenpairs(*ws, k)
    assert torch.equal(again_values, values) and torch.equal(again_vectors, vectors)


@pytest.mark.parametrize("method", ["shift-invert", "dense-f32"])
def test_each_fast_method_alone_is_accurate(layers, method):
    ws, ref_values, ref_vectors = layers[1280]
    values, vectors, report = eigen.top_eigenpairs_report(*ws, 16, method=method)
    assert report.method == method and report.fallback is None, report
    check_contract(values, vectors, 16, 1280)
    check_accuracy(values, vectors, ref_values, ref_vectors, 16)


def test_auto_method_choice():
    assert eigen._choose_method(64, 8) == "exact-f64"
    assert eigen._choose_method(1280, 8) == "shift-invert"
    assert eigen._choose_method(1280, 16) == "shift-invert"
    assert eigen._choose_method(1280, 64) == "dense-f32"
    assert eigen._choose_method(320, 16) == "dense-f32"


def _subspace_gap(a, b):
    """Largest principal angle between span(rows of a) and span(rows of b) (orthonormal rows)."""
    s = torch.linalg.svdvals(a.double() @ b.double().T)
    return float(torch.arccos(s.min().clamp(max=1.0)))


def test_repeated_top_eigenvalue_falls_back_to_the_reference():
    """An exactly repeated top eigenvalue: the two directions are defined only up to a rotation inside
    their plane, no residual bound can certify either, and the float64 reference takes over (the answer
    is then exactly the reference's; the plane itself is well defined and checked).
    Exact ties need exact arithmetic: Wq is a permuted diagonal of fp16 values (C = diag(a^2) permuted,
    exact in float32 and float64), Wk = Wv = 0."""
    d, k = 320, 4
    g = torch.Generator().manual_seed(3)
    a = torch.linspace(1.0, 0.2, d).half()
    a[1] = a[0]  # lambda_1 == lambda_2 exactly
    perm = torch.randperm(d, generator=g)
    wq = torch.zeros(d, d, dtype=torch.float16)
    wq[torch.arange(d), perm] = a  # C = sum_i a_i^2 e_perm(i) e_perm(i)^T
    zeros = torch.zeros_like(wq)
    plane = torch.zeros(2, d, dtype=torch.float64)
    plane[0, perm[0]] = plane[1, perm[1]] = 1.0
    for method in ("shift-invert", "dense-f32", "auto"):
        values, vectors, report = eigen.top_eigenpairs_report(wq, zeros, zeros, k, method=method)
        assert report.method == "exact-f64", report
        assert "residual check failed" in report.fallback
        ref_values, ref_vectors = eigen.reference_eigenpairs(wq, zeros, zeros, k)
        assert torch.equal(values, ref_values) and torch.equal(vectors, ref_vectors)
        check_contract(values, vectors, k, d)
        assert values[0] == values[1] == float(a[0]) ** 2
        assert _subspace_gap(vectors[:2], plane) < 1e-6, "the top plane is the repeated eigenvalue's"


def test_near_tie_below_float32_resolution_is_resolved_in_float64():
    """A top pair split by ~1e-7 relative (below what a float32 C can resolve) is still separated
    correctly: the float64 Rayleigh-Ritz step resolves the pair inside the float32 subspace, and its
    bound certifies it. (Weights stored in float32 here, as a LoRA-patched weight would be.)"""
    d, k = 320, 4
    g = torch.Generator().manual_seed(3)
    q = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64)).Q
    diag = torch.linspace(1.0, 0.2, d, dtype=torch.float64)
    diag[1] = diag[0]
    wq = (diag[:, None] * q.T).float()  # float32 rounding splits the pair by ~1e-7
    zeros = torch.zeros_like(wq)
    ref_values, ref_vectors = eigen.reference_eigenpairs_f64(wq, zeros, zeros, k)
    split = float((ref_values[0] - ref_values[1]) / ref_values[0])
    assert 0 < split < 1e-6
    for method in ("shift-invert", "dense-f32"):
        values, vectors, report = eigen.top_eigenpairs_report(wq, zeros, zeros, k, method=method)
        assert report.method == method and report.fallback is None, report
        check_contract(values, vectors, k, d)
        check_accuracy(values, vectors, ref_values, ref_vectors, k)


def test_rank_deficient_weights_fall_back_for_the_zero_eigenvalues():
    """Rank-4 weights (q, k and v share their 4 input directions) asked for 8 directions: eigenvalues 5..8
    are all zero (a degenerate block); the fast path cannot certify them and hands over; the top 4 match
    the reference."""
    d, k, rank = 320, 8, 4
    g = torch.Generator().manual_seed(5)
    inputs = torch.randn(rank, d, generator=g)
    ws = [(torch.randn(d, rank, generator=g) @ inputs / d).half() for _ in range(3)]
    values, vectors, report = eigen.top_eigenpairs_report(*ws, k, method="shift-invert")
    assert report.method == "exact-f64" and report.fallback, report
    check_contract(values, vectors, k, d)
    ref_values, ref_vectors = eigen.reference_eigenpairs_f64(*ws, k)
    assert testbed.principal_angles(vectors[:rank], ref_vectors[:rank]).max() < 1e-6
    assert float(values[rank:].abs().max()) < 1e-6 * float(values[0])


def test_zero_weights_take_the_reference_path():
    d = 320
    ws = [torch.zeros(d, d, dtype=torch.float16) for _ in range(3)]
    values, vectors, report = eigen.top_eigenpairs_report(*ws, 4, method="dense-f32")
    assert report.method == "exact-f64" and "zero" in report.fallback
    assert torch.equal(values, torch.zeros(4))
    check_contract(values, vectors, 4, d)


def test_structured_spectrum_hands_shift_invert_over_to_dense():
    """A few strong input directions shared by q, k and v (trained-like outliers) above a random bulk:
    the top-16 span very different scales, shift-invert's check fails, dense-f32 takes over on the same C
    and is accurate."""
    d, k = 640, 16
    g = torch.Generator().manual_seed(11)
    basis = torch.linalg.qr(torch.randn(d, 12, generator=g)).Q.T  # (12, d)
    ws = [(torch.randn(d, d, generator=g) / d**0.5 + torch.randn(d, 12, generator=g) * 3 / d**0.5 @ basis).half()
          for _ in range(3)]
    values, vectors, report = eigen.top_eigenpairs_report(*ws, k, method="shift-invert")
    assert report.method == "dense-f32" and report.fallback.startswith("shift-invert"), report
    ref_values, ref_vectors = eigen.reference_eigenpairs_f64(*ws, k)
    check_contract(values, vectors, k, d)
    check_accuracy(values, vectors, ref_values, ref_vectors, k)


def test_small_widths_use_the_reference_unchanged():
    ws = random_layer(128, seed=1)
    values, vectors, report = eigen.top_eigenpairs_report(*ws, 8)
    assert report.method == "exact-f64" and report.fallback is None
    ref_values, ref_vectors = eigen.reference_eigenpairs(*ws, 8)
    assert torch.equal(values, ref_values) and torch.equal(vectors, ref_vectors)
