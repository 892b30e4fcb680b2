"""Editing directions from attention weights alone (pure torch, no ComfyUI).

For one self-attention layer with projections Wq, Wk, Wv (torch Linear weights: (inner, d)), a unit
perturbation n of the input Z changes q, k and v by Wq n, Wk n, Wv n. The directions that change them
most are the top eigenvectors of the (d, d) matrix

    C = Wq^T Wq + Wk^T Wk + Wv^T Wv = S^T S,   S = [Wq; Wk; Wv]  (3*inner, d)

and the eigenvalue lambda_i = ||Wq n_i||^2 + ||Wk n_i||^2 + ||Wv n_i||^2.

How the top-k eigenpairs are computed (measurements and the reasoning: docs/benchmarks.md):

1. C is formed once in float32 from the stored weights (fp16/bf16 weights are exact in float32; only
   the summation rounds), multiplying only its upper block triangle.
2. A subspace of p = k + max(8, k/4) vectors that contains the top-k eigenvectors is found in float32:
   - "shift-invert" (k small relative to d): block Krylov iteration with (sigma I - C)^-1, sigma a little
     above lambda_max (20 Lanczos steps estimate lambda_max; the Cholesky factorisation of sigma I - C
     proves sigma > lambda_max). Random-like weights have a Marchenko-Pastur spectrum whose top
     eigenvalues lie within ~0.5% of each other; the inverse spreads them apart, so 8 block steps
     converge where a plain Krylov iteration needs a basis of about d/2 vectors;
   - "dense-f32": a float32 eigh of C (k large relative to d, or shift-invert failed its check).
3. Rayleigh-Ritz in float64 on that subspace with the exact weights (S V and S^T S V in float64; C is
   never formed in float64) resolves the individual vectors, clustered ones included, and the float64
   residuals R = C V - V Theta bound each direction's angle to the exact eigenvector and each
   eigenvalue's error (_residual_bounds). If the bounds miss ANGLE_TOL / VALUE_RTOL, one preconditioned
   correction step (Davidson, preconditioner (sigma I - C32)^-1) is taken; if they still miss, the next
   method takes over: shift-invert -> dense-f32 -> the float64 reference (a full eigh of C formed in
   float64), which is also what degenerate eigenvalues (exact ties, rank-deficient weights) end with.

Widths up to EXACT_MAX_WIDTH use the float64 reference directly (a few ms there).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch

log = logging.getLogger("self_attention_edit")

# Two coordinates whose magnitudes agree to this relative tolerance count as tied when choosing the
# sign-defining coordinate (see canonical_sign); the lower index then wins, which is stable across
# machines whose eigensolvers differ in the last bits.
_SIGN_TIE_RTOL = 1e-4

# Accuracy contract of the fast path, checked per layer from float64 residuals: the bound of each
# returned direction's angle to the exact eigenvector of C must be <= ANGLE_TOL radians, the bound of each
# eigenvalue's relative error <= VALUE_RTOL. The bounds are 5-20x above the actual errors (measured). Layers
# whose bounds miss go to the next method, finally to the float64 reference.
ANGLE_TOL = 1e-4
VALUE_RTOL = 1e-6

# Widths up to this use the float64 reference directly (a few ms).
EXACT_MAX_WIDTH = 256

# Fixed seed of the random start block: results are deterministic for given weights and k.
_SEED = 0x5AE

# Lanczos steps of the lambda_max estimate that places the shift.
_LANCZOS_STEPS = 20
# delta = sigma - lambda_max relative to lambda_max.
_SHIFT_REL = 0.015


@dataclass(frozen=True)
class EigenReport:
    """How one layer was solved.

    method: the method that produced the result: "shift-invert", "dense-f32", "exact-f64" (reference) or
        "scipy-f64" (only when asked for).
    fallback: why earlier methods were abandoned (shift-invert -> dense-f32 -> exact-f64); None if the
        first one passed.
    angle_bound / value_bound: the a-posteriori bounds that the result passed (max over the returned
        pairs; 0 for the reference, whose accuracy is float64 eigh's).
    corrections: float64 correction steps taken (0 or 1)."""

    method: str
    fallback: str | None = None
    angle_bound: float = 0.0
    value_bound: float = 0.0
    corrections: int = 0


def _check_widths(wq: torch.Tensor, wk: torch.Tensor, wv: torch.Tensor) -> None:
    if not (wq.ndim == wk.ndim == wv.ndim == 2 and wq.shape[1] == wk.shape[1] == wv.shape[1]):
        raise ValueError(f"q/k/v weights disagree on the input width: {wq.shape}, {wk.shape}, {wv.shape}")


def stacked_projection(wq: torch.Tensor, wk: torch.Tensor, wv: torch.Tensor) -> torch.Tensor:
    """S = [Wq; Wk; Wv], shape (3*inner, d), in float64 (weights often arrive as fp16/bf16)."""
    _check_widths(wq, wk, wv)
    return torch.cat([w.detach().to(torch.float64) for w in (wq, wk, wv)], dim=0)


def attention_gram(wq: torch.Tensor, wk: torch.Tensor, wv: torch.Tensor) -> torch.Tensor:
    """C = Wq^T Wq + Wk^T Wk + Wv^T Wv, shape (d, d), float64."""
    s = stacked_projection(wq, wk, wv)
    return s.T @ s


def canonical_sign(vectors: torch.Tensor) -> torch.Tensor:
    """Fix each eigenvector's arbitrary sign: its largest-magnitude coordinate is made positive
    (lowest index among near-ties). vectors: (k, d), one direction per row. Returns a new tensor."""
    mags = vectors.abs()
    top = mags.max(dim=1, keepdim=True).values
    near_top = mags >= top * (1 - _SIGN_TIE_RTOL)
    first = near_top.to(torch.int8).argmax(dim=1)  # first True per row
    signs = torch.sign(vectors.gather(1, first[:, None]))
    signs[signs == 0] = 1
    return vectors * signs


def _finish(values: torch.Tensor, vectors: torch.Tensor):
    """(k,) descending values and (k, d) rows in float64 -> the output contract (float32, signs fixed)."""
    return values.to(torch.float32), canonical_sign(vectors).to(torch.float32)


def reference_eigenpairs_f64(wq: torch.Tensor, wk: torch.Tensor, wv: torch.Tensor, k: int):
    """The float64 reference before the output contract: C formed in float64 and a full eigh; (k,)
    descending values and (k, d) rows, float64, with eigh's signs. Accuracy checks compare against this."""
    c = attention_gram(wq, wk, wv)
    k = min(int(k), c.shape[0])
    values, vectors = torch.linalg.eigh(c)  # ascending
    return values.flip(0)[:k], vectors.flip(1)[:, :k].T.contiguous()


def scipy_eigenpairs_f64(wq: torch.Tensor, wk: torch.Tensor, wv: torch.Tensor, k: int):
    """The float64 top-k by SciPy: C formed in float64 on the CPU, then scipy.linalg.eigh with
    subset_by_index and LAPACK's MRRR driver (dsyevr), which computes only the k wanted eigenpairs after
    the tridiagonal reduction (torch.linalg.eigh computes all d). Same contract as
    reference_eigenpairs_f64: (k,) descending values, (k, d) rows, float64, on the CPU.

    SciPy ships with ComfyUI (its requirements.txt lists it; comfy.samplers imports scipy.stats), so it
    is imported here only when asked for: this module stays importable with torch alone."""
    import scipy.linalg

    c = attention_gram(wq, wk, wv).cpu().numpy()
    d = c.shape[0]
    k = min(int(k), d)
    values, vectors = scipy.linalg.eigh(c, subset_by_index=[d - k, d - 1], driver="evr")  # ascending
    return torch.from_numpy(values[::-1].copy()), torch.from_numpy(vectors[:, ::-1].T.copy())


def reference_eigenpairs(wq: torch.Tensor, wk: torch.Tensor, wv: torch.Tensor, k: int):
    """The float64 reference with the same contract as top_eigenpairs (float32, signs fixed)."""
    return _finish(*reference_eigenpairs_f64(wq, wk, wv, k))


def top_eigenpairs(wq: torch.Tensor, wk: torch.Tensor, wv: torch.Tensor, k: int):
    """Top-k eigenpairs of C for one layer.

    Returns (values (k,), vectors (k, d)), both float32, values descending, vectors orthonormal rows
    with canonical signs. k is clamped to d. Deterministic for given weights and k."""
    values, vectors, _ = top_eigenpairs_report(wq, wk, wv, k)
    return values, vectors


def top_eigenpairs_report(wq: torch.Tensor, wk: torch.Tensor, wv: torch.Tensor, k: int, method: str = "auto"):
    """top_eigenpairs plus an EigenReport. method: "auto", "shift-invert", "dense-f32", "exact-f64" or
    "scipy-f64". A fast method whose residual check fails hands over to the next one: shift-invert ->
    dense-f32 -> the float64 reference.

    "scipy-f64" (scipy_eigenpairs_f64: top-k only, CPU) is available on request and never chosen by
    "auto". Measured on the accuracy tests' matrices (tests/test_eigen_scipy.py): it agrees with the
    torch float64 reference to <= 5e-13 rad per direction (1e-8 rad on a pair split by 1e-7, the
    conditioning limit of individual vectors there) and <= 1e-15 relative per eigenvalue, with residuals
    ||C v - lambda v|| / lambda_max of 0.7-1.3e-15 against torch's 1.0-2.7e-15: both are at float64
    precision, four orders of magnitude inside what the fast path certifies (ANGLE_TOL), so accuracy
    gives no reason to switch. "auto" keeps the torch paths: they also run on the GPU
    (weights.solve_device), where SciPy cannot, and whether SciPy's top-k subset beats the fast path or
    torch's full eigh on the CPU is for bench/eigendirections.py to measure on an idle machine."""
    _check_widths(wq, wk, wv)
    d = wq.shape[1]
    k = min(int(k), d)
    if method == "auto":
        method = _choose_method(d, k)
    if method == "scipy-f64" and k >= 1:
        values, vectors = scipy_eigenpairs_f64(wq, wk, wv, k)
        device = wq.device
        return (*_finish(values.to(device), vectors.to(device)), EigenReport("scipy-f64"))
    if method == "exact-f64" or k < 1:
        return (*reference_eigenpairs(wq, wk, wv, k), EigenReport("exact-f64"))
    if method not in ("shift-invert", "dense-f32"):
        raise ValueError(f"unknown method {method!r}")

    ws = [w.detach() for w in (wq, wk, wv)]
    try:
        values, vectors, report = _fast(ws, k, method)
    except _NeedsReference as e:
        reason = str(e)
    except (RuntimeError, torch.linalg.LinAlgError) as e:  # a LAPACK failure on odd input
        reason = f"{type(e).__name__}: {e}"
    else:
        return (*_finish(values, vectors), report)
    log.debug("eigenpairs (d=%d, k=%d): %s; using the float64 reference", d, k, reason)
    return (*reference_eigenpairs(wq, wk, wv, k), EigenReport("exact-f64", reason))


# ----------------------------------------------------------------------------------------------------
# The fast path.

class _NeedsReference(Exception):
    """The fast path cannot handle this layer (reason in the message)."""


def _krylov_shape(k: int, d: int) -> tuple[int, int, int]:
    """(block size b, block steps q, refined subspace size p) of the shift-invert iteration for k.
    Tuned on Marchenko-Pastur layers of width 1280 (8 layers per shape, idle 2-core machine): the residual
    bounds stay 3-6x below ANGLE_TOL with no correction step (k = 8: 24 x 9 vectors, 99 ms per layer
    against 116 ms for 16 x 11; k = 16: 32 x 9, 92 ms). Fewer vectors need the correction step or fall
    back to dense-f32, which costs more than the vectors saved. Narrower layers (d = 640) take the smaller
    16 x 11 basis for k <= 8, which still fits below d / 3 (see _choose_method)."""
    p = k + max(8, k // 4)
    b, q = max(24, 2 * k), 8
    if b * (q + 1) > d // 3:
        b, q = max(16, 2 * k), 10
    return b, q, p


def _choose_method(d: int, k: int) -> str:
    if d <= EXACT_MAX_WIDTH or k < 1:
        return "exact-f64"
    b, q, p = _krylov_shape(k, d)
    # The Krylov basis (b * (q + 1) vectors) must stay well below d to beat a dense float32 eigh.
    return "shift-invert" if b * (q + 1) <= d // 3 and p < d else "dense-f32"


def gram_f32(ws: list[torch.Tensor]) -> torch.Tensor:
    """C = S^T S in float32 (the stored fp16/bf16/fp32 weights are exact in float32), full symmetric.
    Only the upper block triangle is multiplied (~60% of a full product's flops)."""
    rows = sum(w.shape[0] for w in ws)
    d = ws[0].shape[1]
    s = torch.empty((rows, d), dtype=torch.float32, device=ws[0].device)
    r = 0
    for w in ws:
        s[r:r + w.shape[0]].copy_(w)
        r += w.shape[0]
    c = torch.empty((d, d), dtype=torch.float32, device=s.device)
    nb = max(1, min(4, d // 256))
    edges = [round(i * d / nb) for i in range(nb + 1)]
    for j in range(nb):
        a, b = edges[j], edges[j + 1]
        torch.mm(s[:, :b].T, s[:, a:b], out=c[:b, a:b])
    for j in range(1, nb):
        a, b = edges[j], edges[j + 1]
        c[a:b, :a] = c[:a, a:b].T
    return c


def _fast(ws: list[torch.Tensor], k: int, method: str):
    """(values (k,) f64 descending, vectors (k, d) f64, EigenReport) or raises _NeedsReference.
    A shift-invert attempt whose residual check fails is retried as dense-f32 on the same C."""
    c = gram_f32(ws)
    diag = c.diagonal()
    # A NaN/inf weight, or a float32 overflow, shows on the diagonal (|C_ij| <= sqrt(C_ii C_jj)).
    if not bool(torch.isfinite(diag).all()):
        raise _NeedsReference("non-finite weights or float32 overflow")
    scale = float(diag.max())
    if scale <= 0.0:
        raise _NeedsReference("all weights are zero")
    failed = []
    for attempt in (("shift-invert", "dense-f32") if method == "shift-invert" else ("dense-f32",)):
        try:
            if attempt == "shift-invert":
                b, q, p = _krylov_shape(k, c.shape[0])
                basis, theta_out, precond = _shift_invert_subspace(c, k, b, q, p, scale)
            else:
                basis, theta_out, precond = _dense_subspace(c, k)
        except _NeedsReference as e:
            failed.append(f"{attempt}: {e}")
            continue
        values, vectors, angle, value, corrections = _refine_f64(ws, basis, k, theta_out, precond)
        if angle <= ANGLE_TOL and value <= VALUE_RTOL:
            return values, vectors, EigenReport(attempt, "; ".join(failed) or None, angle, value, corrections)
        failed.append(f"{attempt}: residual check failed (angle bound {angle:.2e}, eigenvalue bound {value:.2e})")
    raise _NeedsReference("; ".join(failed))


def _dense_subspace(c: torch.Tensor, k: int):
    """float32 eigh of C: the top-p eigenvectors (float64), the (p+1)-th eigenvalue, and the
    preconditioner x -> (sigma I - C)^-1 x from the same decomposition (sigma just above lambda_max)."""
    d = c.shape[0]
    p = min(d, k + max(8, k // 4))
    values, vectors = torch.linalg.eigh(c)  # ascending
    basis = vectors[:, d - p:].flip(1).double()
    theta_out = float(values[d - p - 1]) if p < d else -math.inf
    top = float(values[-1])
    sigma = top + max(_SHIFT_REL * abs(top), 1e-30)
    inv = 1.0 / (sigma - values)

    def precond(x):
        return vectors @ (inv[:, None] * (vectors.T @ x))

    return basis, theta_out, precond


def _lanczos_top(c: torch.Tensor, steps: int, gen: torch.Generator) -> tuple[torch.Tensor, float]:
    """(Ritz values descending, residual norm of the largest) after `steps` Lanczos steps (float32, one
    reorthogonalisation pass). The largest Ritz value is a lower bound of lambda_max; its residual is the
    distance to some eigenvalue, typically lambda_max."""
    d = c.shape[0]
    steps = min(steps, d)
    q = torch.empty((steps + 1, d), dtype=c.dtype, device=c.device)
    v = torch.randn(d, generator=gen, dtype=torch.float32).to(c.device)
    q[0] = v / v.norm()
    alpha = torch.zeros(steps, dtype=c.dtype, device=c.device)
    beta = torch.zeros(steps, dtype=c.dtype, device=c.device)
    for j in range(steps):
        w = torch.mv(c, q[j])
        basis = q[:j + 1]
        h = torch.mv(basis, w)  # one classical Gram-Schmidt pass: enough for a lambda_max estimate
        w.addmv_(basis.T, h, alpha=-1.0)
        alpha[j] = h[j]
        torch.linalg.vector_norm(w, out=beta[j])
        torch.div(w, beta[j], out=q[j + 1])
    alpha, beta = alpha.double().cpu(), beta.double().cpu()
    if not bool(torch.isfinite(beta).all()) or bool((beta == 0).any()):
        # An invariant subspace (or breakdown) was hit early: keep the steps before it.
        bad = int((~torch.isfinite(beta) | (beta == 0)).nonzero()[0])
        steps = max(bad + 1, 1)
        alpha, beta = alpha[:steps], torch.nan_to_num(beta[:steps])
    t = torch.diag(alpha[:steps]) + torch.diag(beta[:steps - 1], 1) + torch.diag(beta[:steps - 1], -1)
    theta, y = torch.linalg.eigh(t)
    return theta.flip(0), float(beta[steps - 1] * y[-1, -1].abs())


def _shift_invert_subspace(c: torch.Tensor, k: int, b: int, q: int, p: int, scale: float):
    """float32 block Krylov with (sigma I - C)^-1. Returns ((d, p) basis of the top-p Ritz vectors in
    float64, the (p+1)-th Ritz value as an estimate of the largest eigenvalue outside it, the function
    x -> (sigma I - C)^-1 x for float32 x)."""
    d = c.shape[0]
    gen = torch.Generator().manual_seed(_SEED)
    ritz, resid = _lanczos_top(c, _LANCZOS_STEPS, gen)
    theta1 = float(ritz[0])
    # The shift: sigma = lambda_max + delta. Too close and (sigma I - C)^-1 is dominated by its top
    # eigenvalue (float32 then loses the others); too far and the top of the spectrum is not spread out.
    # delta ~ 1.5% of lambda_max measured best on Marchenko-Pastur spectra (0.7% to 3% within 2x of the
    # best); at least the Lanczos residual, so that sigma lands above lambda_max (Cholesky checks it).
    floor = 1e-3 * max(theta1, 1e-3 * scale)
    shift = max(resid, _SHIFT_REL * theta1, floor)
    a = torch.neg(c)
    diag = a.diagonal()
    for _ in range(8):
        sigma = theta1 + shift
        diag.add_(sigma)
        chol, info = torch.linalg.cholesky_ex(a)
        if int(info) == 0:
            break
        diag.sub_(sigma)
        shift *= 2.0
    else:
        raise _NeedsReference("no shift above lambda_max was found")
    del a, diag
    chol_t = chol.T

    def apply(x):
        return torch.linalg.solve_triangular(chol_t, torch.linalg.solve_triangular(chol, x, upper=False), upper=True)

    m = b * (q + 1)
    basis = torch.empty((d, m), dtype=c.dtype, device=c.device)
    h = torch.zeros((m, m), dtype=torch.float64)
    start = torch.randn((d, b), generator=gen, dtype=torch.float32).to(c.device)
    basis[:, :b] = torch.linalg.qr(start).Q
    for j in range(q + 1):
        lo, hi = j * b, (j + 1) * b
        w = apply(basis[:, lo:hi])
        prev = basis[:, :hi]
        coef = prev.T @ w
        if j == q:
            h[:hi, lo:hi] = coef.double()
            break
        w -= prev @ coef
        coef2 = prev.T @ w
        w -= prev @ coef2
        qj, rj = _tall_qr(w)
        basis[:, hi:hi + b] = qj
        h[:hi, lo:hi] = (coef + coef2).double()
        h[hi:hi + b, lo:hi] = rj.double()
    # Block Arnoldi on a symmetric operator: h is block tridiagonal up to rounding; symmetrise.
    h = torch.triu(h) + torch.triu(h, 1).T
    mu, y = torch.linalg.eigh(h.float())  # ascending; mu = 1 / (sigma - lambda) > 0 in exact arithmetic
    mu, y = mu.double(), y.double()
    mu = mu.flip(0)
    y = y.flip(1)
    if not bool(mu[p] > 0):
        raise _NeedsReference("shift-invert iteration did not separate the top of the spectrum")
    vectors = basis.double() @ y[:, :p].to(basis.device)
    theta_out = sigma - 1.0 / float(mu[p])
    return vectors, theta_out, apply


def _tall_qr(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """QR of a tall block already orthogonalised against the basis: Cholesky QR (one small Gram matrix
    and a triangular solve, faster than Householder at these sizes), Householder if the block is
    numerically rank deficient."""
    r, info = torch.linalg.cholesky_ex(w.T @ w, upper=True)
    if int(info) == 0:
        diag = r.diagonal().abs()
        if bool(diag.min() > 1e-3 * diag.max()):
            return torch.linalg.solve_triangular(r, w, upper=True, left=False), r
    return torch.linalg.qr(w)


class _ExactProducts:
    """C x in float64 from the exact weights (S^T (S x)), C itself never formed in float64."""

    def __init__(self, ws: list[torch.Tensor], device):
        self.ws = ws
        # One float64 buffer reused for the three projections (one allocation instead of three).
        self.buf = torch.empty((max(w.shape[0] for w in ws), ws[0].shape[1]), dtype=torch.float64, device=device)

    def __call__(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(V^T C V (p, p), C V (d, p)) for float64 V (d, p)."""
        gram = torch.zeros((v.shape[1], v.shape[1]), dtype=torch.float64, device=v.device)
        cv = torch.zeros_like(v)
        for w in self.ws:
            x = self.buf[:w.shape[0]]
            x.copy_(w)
            y = x @ v
            gram += y.T @ y
            cv += (y.T @ x).T
        return (gram + gram.T) / 2, cv


def _orthonormal_complement(t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Orthonormal basis of the part of span(t) orthogonal to span(v) (v orthonormal), float64."""
    for _ in range(2):
        t = t - v @ (v.T @ t)
    return torch.linalg.qr(t).Q


def _refine_f64(ws: list[torch.Tensor], basis: torch.Tensor, k: int, theta_out: float, precond=None):
    """Rayleigh-Ritz in float64 with the exact weights on span(basis), and the residual bounds.

    If the bounds miss the tolerances and a preconditioner x -> (sigma I - C32)^-1 x is given, one
    correction step (a preconditioned Davidson step: Rayleigh-Ritz on span(V, (sigma I - C32)^-1 R)) is
    taken before giving up. It removes most of the residual that the float32 stages leave (C32's rounding,
    incomplete Krylov convergence) at the cost of one more pass over the weights."""
    products = _ExactProducts(ws, basis.device)
    v = torch.linalg.qr(basis.double()).Q
    p = v.shape[1]
    gram, cv = products(v)
    theta, rot = torch.linalg.eigh(gram)
    theta, rot = theta.flip(0), rot.flip(1)
    v, cv = v @ rot, cv @ rot
    resid = cv - v * theta
    angle, value = _residual_bounds(theta.cpu(), resid, k, theta_out)
    if (angle <= ANGLE_TOL and value <= VALUE_RTOL) or precond is None:
        return theta[:k], v[:, :k].T, angle, value, 0

    t = _orthonormal_complement(precond(resid.to(torch.float32)).to(torch.float64), v)
    gram_t, ct = products(t)
    cross = resid.T @ t  # V^T C T = (V Theta + R)^T T = R^T T, as V^T T = 0
    big = torch.cat([torch.cat([torch.diag(theta), cross], 1), torch.cat([cross.T, gram_t], 1)], 0)
    theta2, rot2 = torch.linalg.eigh((big + big.T) / 2)
    theta2, rot2 = theta2.flip(0)[:p], rot2.flip(1)[:, :p]
    u = torch.cat([v, t], 1)
    v2 = u @ rot2
    resid2 = torch.cat([cv, ct], 1) @ rot2 - v2 * theta2
    angle, value = _residual_bounds(theta2.cpu(), resid2, k, theta_out)
    return theta2[:k], v2[:, :k].T, angle, value, 1


def _residual_bounds(theta: torch.Tensor, resid: torch.Tensor, k: int, theta_out: float) -> tuple[float, float]:
    """A-posteriori bounds for the top-k Ritz pairs of a Rayleigh-Ritz step on a p-dim subspace.

    theta: (p,) Ritz values descending; resid: (d, p) float64 residuals R = C V - V diag(theta);
    theta_out: the largest eigenvalue of C outside the subspace (estimated).
    For the exact pair (lambda_i, u_i) and eps = ||(I - P) u_i||, with g = lambda_i - theta_out,
    delta = distance from lambda_i to the other Ritz values, gamma = ||R||_2:
        eps <= ||r_i|| / (g - gamma^2 / delta),   sin(angle) <= eps * sqrt(1 + gamma^2 / delta^2),
        |lambda_i - theta_i| <= ||r_i|| * eps / cos(angle).
    lambda_i is replaced by theta_i in g and delta. Returns (max angle bound, max relative eigenvalue
    bound); inf when a gap is not positive (degenerate or unresolved eigenvalues)."""
    rnorm = resid.norm(dim=0).cpu()
    gamma = float(torch.linalg.matrix_norm(resid, 2))
    angle = value = 0.0
    for i in range(k):
        th = float(theta[i])
        others = torch.cat([theta[:i], theta[i + 1:]])
        delta = min(float((others - th).abs().min()) if others.numel() else math.inf, th - theta_out)
        g = th - theta_out
        if delta <= 0.0 or g <= 0.0:
            return math.inf, math.inf
        denom = g - gamma ** 2 / delta
        if denom <= 0.0:
            return math.inf, math.inf
        eps = float(rnorm[i]) / denom
        sin = eps * math.sqrt(1.0 + (gamma / delta) ** 2)
        if sin >= 1.0:
            return math.inf, math.inf
        angle = max(angle, math.asin(sin))
        value = max(value, float(rnorm[i]) * eps / math.sqrt(1.0 - sin ** 2) / max(abs(th), 1e-300))
    return angle, value
