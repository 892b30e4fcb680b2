"""SciPy's float64 top-k eigensolver (sae_math/eigen.py scipy_eigenpairs_f64, method "scipy-f64") against
the torch float64 reference and the fast path, on the matrices of the accuracy tests. Correctness only:
whether it is faster is measured by bench/eigendirections.py."""

import pytest
import torch

import testbed
from sae_math import eigen


def random_layer(d, seed):
    """fp16 N(0, 1/d) weights (Marchenko-Pastur spectrum), as in test_eigen_speed_accuracy.py."""
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(d, d, generator=g) / d**0.5).half() for _ in range(3)]


def structured_layer():
    """A few strong shared input directions over a random bulk (test_eigen_speed_accuracy.py)."""
    d = 640
    g = torch.Generator().manual_seed(11)
    basis = torch.linalg.qr(torch.randn(d, 12, generator=g)).Q.T
    return [(torch.randn(d, d, generator=g) / d**0.5 + torch.randn(d, 12, generator=g) * 3 / d**0.5 @ basis).half()
            for _ in range(3)]


def relative_residual(ws, values, vectors):
    """max_i ||C v_i - lambda_i v_i|| / lambda_max, C in float64."""
    s = torch.cat([w.double() for w in ws])
    c = s.T @ s
    r = c @ vectors.double().T - vectors.double().T * values.double()
    return float(r.norm(dim=0).max() / values.double().abs().max())


@pytest.mark.parametrize("name,k", [("mp320", 8), ("mp320", 64), ("structured", 16)])
def test_scipy_top_k_equals_the_torch_float64_reference(name, k):
    """Same eigenpairs as torch's full float64 eigh to float64 precision (measured: <= 5e-13 rad,
    <= 1e-15 relative, residuals ~1e-15 for both), hence far inside the fast path's ANGLE_TOL; the
    fast path's answer is within its contract of SciPy's too."""
    ws = {"mp320": lambda: random_layer(320, 321), "structured": structured_layer}[name]()
    ref_values, ref_vectors = eigen.reference_eigenpairs_f64(*ws, k)
    values, vectors = eigen.scipy_eigenpairs_f64(*ws, k)
    assert values.dtype == vectors.dtype == torch.float64 and vectors.shape == (k, ws[0].shape[1])
    assert torch.all(values[:-1] >= values[1:])
    torch.testing.assert_close(values, ref_values, rtol=1e-13, atol=0)
    assert float(testbed.principal_angles(vectors, ref_vectors).max()) < 1e-11
    assert relative_residual(ws, values, vectors) < 1e-14
    fast_values, fast_vectors = eigen.top_eigenpairs(*ws, k)
    assert float(testbed.principal_angles(fast_vectors, vectors).max()) < eigen.ANGLE_TOL
    torch.testing.assert_close(fast_values.double(), values, rtol=eigen.VALUE_RTOL, atol=0)


def test_scipy_method_has_the_output_contract_and_is_never_chosen_by_auto():
    """method="scipy-f64" returns float32, descending, signs canonical, deterministic; "auto" never
    picks it (the default stays the torch paths, which also run on a GPU)."""
    ws = random_layer(320, 7)
    values, vectors, report = eigen.top_eigenpairs_report(*ws, 8, method="scipy-f64")
    assert report.method == "scipy-f64"
    assert values.dtype == vectors.dtype == torch.float32 and vectors.shape == (8, 320)
    assert torch.equal(eigen.canonical_sign(vectors), vectors)
    again = eigen.top_eigenpairs_report(*ws, 8, method="scipy-f64")
    assert torch.equal(again[0], values) and torch.equal(again[1], vectors)
    ref_values, ref_vectors = eigen.reference_eigenpairs(*ws, 8)
    assert float(testbed.principal_angles(vectors, ref_vectors).max()) < 1e-6
    for d, k in ((64, 8), (320, 16), (640, 16), (1280, 8), (1280, 64)):
        assert eigen._choose_method(d, k) != "scipy-f64"


def test_scipy_on_a_repeated_eigenvalue_gives_the_same_plane():
    """An exactly repeated top eigenvalue (test_eigen_speed_accuracy.py's construction): SciPy returns
    some basis of the same plane as the reference, and the exact eigenvalues."""
    d = 320
    g = torch.Generator().manual_seed(3)
    a = torch.linspace(1.0, 0.2, d).half()
    a[1] = a[0]
    perm = torch.randperm(d, generator=g)
    wq = torch.zeros(d, d, dtype=torch.float16)
    wq[torch.arange(d), perm] = a
    zeros = torch.zeros_like(wq)
    values, vectors = eigen.scipy_eigenpairs_f64(wq, zeros, zeros, 4)
    ref_values, ref_vectors = eigen.reference_eigenpairs_f64(wq, zeros, zeros, 4)
    torch.testing.assert_close(values, ref_values, rtol=1e-15, atol=0)
    s = torch.linalg.svdvals(vectors[:2] @ ref_vectors[:2].T)
    assert float(s.min()) > 1 - 1e-12, "the repeated pair spans the reference's plane"
