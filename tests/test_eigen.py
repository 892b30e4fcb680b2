"""Pure math of the eigen-directions (no ComfyUI): exactness, ordering, sign convention, optimality."""

import pytest
import torch

import testbed
from sae_math import eigen


def random_layer(d, inner=None, seed=0, dtype=torch.float16):
    g = torch.Generator().manual_seed(seed)
    inner = inner or d
    return [(torch.randn(inner, d, generator=g) / d**0.5).to(dtype) for _ in range(3)]


def reference(ws):
    s = torch.cat([w.double() for w in ws])
    vals, vecs = torch.linalg.eigh(s.T @ s)
    return vals.flip(0), vecs.flip(1).T


@pytest.mark.parametrize("d,k", [(64, 8), (320, 16), (128, 128)])
def test_matches_float64_reference_up_to_sign(d, k):
    """Values and vectors equal a float64 eigh of C (vectors up to sign), sorted, orthonormal."""
    ws = random_layer(d, seed=d)
    values, vectors = eigen.top_eigenpairs(*ws, k)
    ref_vals, ref_vecs = reference(ws)
    assert values.shape == (k,) and vectors.shape == (k, d)
    assert torch.all(values[:-1] >= values[1:]), "eigenvalues must be descending"
    torch.testing.assert_close(values.double(), ref_vals[:k], rtol=1e-5, atol=0)
    assert testbed.principal_angles(vectors, ref_vecs[:k]).max() < 1e-5
    gram = vectors.double() @ vectors.double().T
    torch.testing.assert_close(gram, torch.eye(k, dtype=torch.float64), atol=1e-6, rtol=0)


def test_eigenvalue_is_total_projection_energy():
    """lambda_i = ||Wq n_i||^2 + ||Wk n_i||^2 + ||Wv n_i||^2."""
    ws = random_layer(96, seed=3)
    values, vectors = eigen.top_eigenpairs(*ws, 4)
    energy = sum((w.double() @ vectors.double().T).pow(2).sum(0) for w in ws)
    torch.testing.assert_close(energy, values.double(), rtol=1e-5, atol=0)


def test_top_direction_maximises_projection_energy():
    """No random unit direction beats the top eigenvector."""
    ws = random_layer(128, seed=5)
    _, vectors = eigen.top_eigenpairs(*ws, 1)

    def energy(n):
        return sum((w.double() @ n.double().T).pow(2).sum(0) for w in ws)

    rand = torch.randn(2000, 128, generator=torch.Generator().manual_seed(1))
    rand = rand / rand.norm(dim=1, keepdim=True)
    assert energy(vectors[:1]).item() > energy(rand).max().item()


def test_canonical_sign_is_deterministic_and_flip_invariant():
    """The sign convention (largest-magnitude coordinate positive) gives the same vector for v and -v."""
    ws = random_layer(80, seed=9)
    _, vectors = eigen.top_eigenpairs(*ws, 6)
    idx = vectors.abs().argmax(dim=1)
    assert torch.all(vectors.gather(1, idx[:, None]) > 0)
    torch.testing.assert_close(eigen.canonical_sign(-vectors), vectors)
    again = eigen.top_eigenpairs(*ws, 6)[1]
    assert torch.equal(again, vectors)


def test_k_is_clamped_to_width():
    ws = random_layer(16, seed=2)
    values, vectors = eigen.top_eigenpairs(*ws, 100)
    assert values.shape == (16,) and vectors.shape == (16, 16)


def test_mismatched_projection_widths_are_rejected():
    wq, wk, _ = random_layer(16)
    with pytest.raises(ValueError, match="input width"):
        eigen.top_eigenpairs(wq, wk, torch.zeros(16, 8), 2)
