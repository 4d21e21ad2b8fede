"""LMO geometries: unit-ball outputs and ⟨d, lmo(d)⟩ = −‖d‖_* (zotune.geometry)."""

import pytest
import torch

from zotune.geometry import (GEOMETRIES, dual_norm, lmo, lmo_colnorm, lmo_for, lmo_sign, lmo_spectral,
                             lmo_spectral_core, lmo_step, norm, ns_dtype_for, operator_norm_core, orthogonalise,
                             orthogonalise_many)

SHAPES = [(16, 64), (64, 16), (32, 32), (8, 3, 3, 3)]


def rand(shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_sign_is_unit_linf_and_dual_is_l1():
    d = rand((7, 5))
    d[0, 0] = 0.0  # a zero still gets a unit entry
    u = lmo_sign(d)
    assert set(u.unique().tolist()) == {-1.0, 1.0}
    assert norm("sign", u) == 1.0
    assert torch.isclose(-(d * u).sum(), d.abs().sum())


@pytest.mark.parametrize("shape", SHAPES)
def test_spectral_singular_values_near_one(shape):
    """5 quintic + 2 cubic Newton–Schulz steps: every singular value within 3% of 1 (Gaussian
    inputs, square included), and ⟨d, lmo(d)⟩ within 2% of −‖d‖_nuclear."""
    d = rand(shape)
    u = lmo_spectral(d)
    s = torch.linalg.svdvals(u.reshape(shape[0], -1))
    assert (s - 1).abs().max() < 0.03, s
    assert abs(-(d * u).sum().item() / dual_norm("spectral", d) - 1) < 0.02


def test_colnorm_unit_columns_and_dual():
    d = rand((12, 9))
    d[:, 3] = 0.0
    u = lmo_colnorm(d)
    assert torch.allclose(torch.linalg.vector_norm(u, dim=0), torch.ones(9), atol=1e-6)
    assert torch.isclose(-(d * u).sum(), torch.tensor(dual_norm("colnorm", d)), rtol=1e-5)


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_lmo_step_reports_dual_norm_and_unit_step(geometry):
    d = rand((16, 24), seed=3)
    u, dual = lmo_step(d, geometry)
    tol = 0.02 if geometry == "spectral" else 1e-5
    assert abs(dual / dual_norm(geometry, d) - 1) < tol
    assert abs(norm(geometry, u) - 1) < tol
    # Hölder: the LMO attains the bound |⟨d, x⟩| ≤ ‖x‖·‖d‖_*, random points do not beat it
    for seed in range(3):
        x = rand((16, 24), seed=10 + seed)
        assert abs((d * x).sum().item()) <= norm(geometry, x) * dual_norm(geometry, d) * (1 + tol)


def test_power_iteration_matches_svd():
    for shape in SHAPES:
        d = rand(shape, seed=1)
        exact = torch.linalg.matrix_norm(d.reshape(shape[0], -1), ord=2).item()
        assert abs(norm("spectral", d) / exact - 1) < 0.02


def test_lmo_for_rules_and_overrides():
    assert lmo_for("layers.0.mlp.weight", (64, 32)) == "spectral"
    assert lmo_for("layers.0.mlp.bias", (64,)) == "sign"
    assert lmo_for("model.embed_tokens.weight", (1000, 64)) == "sign"
    assert lmo_for("head.weight", (1, 16)) == "sign"  # a row vector is a vector
    assert lmo_for("x.weight", (64, 32), override="colnorm") == "colnorm"
    rules = {"*embed*": "colnorm", "*.bias": "euclidean"}
    assert lmo_for("model.embed_tokens.weight", (1000, 64), rules) == "colnorm"
    assert lmo_for("fc.bias", (8,), rules) == "euclidean"
    assert lmo_for("fc.weight", (8, 8), rules) == "spectral"
    with pytest.raises(ValueError, match="geometry"):
        lmo_for("w", (2, 2), override="l7")
    with pytest.raises(ValueError, match="geometry"):
        lmo("nope", torch.ones(2))


def random_subspace_matrix(m: int, n: int, r: int, seed: int):
    """(U, C, V, U·C·Vᵀ) with Haar-random orthonormal U (m×r), V (n×r) and a Gaussian r×r core."""
    g = torch.Generator().manual_seed(seed)
    u = torch.linalg.qr(torch.randn(m, r, generator=g)).Q
    v = torch.linalg.qr(torch.randn(n, r, generator=g)).Q
    c = torch.randn(r, r, generator=g)
    return u, c, v, u @ c @ v.T


@pytest.mark.parametrize("m,n,r", [(64, 96, 4), (96, 64, 8), (200, 120, 16)])
def test_subspace_spectral_lmo_equals_dense_newton_schulz(m, n, r):
    """U·lmo_core(C)·Vᵀ is the dense spectral LMO of U·C·Vᵀ: the exact polar factor (SVD) to 1e-5, and
    Newton–Schulz's result to 0.05 in the operator norm (NS leaves singular values within 3% of 1, and
    the smallest of a Gaussian core less resolved); the dual norm is the exact nuclear norm."""
    for seed in range(3):
        u, c, v, dense = random_subspace_matrix(m, n, r, seed)
        core_step, dual = lmo_spectral_core(c)
        step = u @ core_step @ v.T
        p, s, qh = torch.linalg.svd(dense.double(), full_matrices=False)
        exact = -(p[:, :r] @ qh[:r]).float()
        assert torch.allclose(step, exact, atol=1e-5)
        assert torch.linalg.matrix_norm(step - lmo_spectral(dense), ord=2) < 0.05
        assert dual == pytest.approx(float(s.sum()), rel=1e-6)
        assert dual == pytest.approx(-float(torch.sum(dense * step)), rel=1e-5)
        sv = torch.linalg.svdvals(step.double())
        assert torch.allclose(sv[:r], torch.ones(r, dtype=torch.float64), atol=1e-6)  # 1 on the subspace
        assert sv[r:].abs().max() < 1e-6  # 0 outside it
        assert operator_norm_core(c) == pytest.approx(float(s[0]), rel=1e-6)


def test_newton_schulz_batched_and_bf16():
    """Same-shaped matrices stacked give each matrix's own result; bf16 quintic iterations (fp32
    polish) keep the singular values within 3% of 1, as fp32 does, on Gaussian 160×320 matrices."""
    g = torch.Generator().manual_seed(0)
    ds = [torch.randn(160, 320, generator=g), torch.randn(30, 20, generator=g), torch.randn(160, 320, generator=g),
          torch.zeros(160, 320)]
    fp32 = orthogonalise_many(ds, dtype=torch.float32)
    for d, x in zip(ds, fp32):
        assert torch.allclose(x, orthogonalise(d), atol=1e-5)
    assert torch.equal(fp32[3], torch.zeros(160, 320))
    for d, x in zip(ds[:3], orthogonalise_many(ds[:3], dtype=torch.bfloat16)):
        sv = torch.linalg.svdvals(x)
        assert sv.min() > 0.95 and sv.max() < 1.03, (sv.min(), sv.max())
        assert torch.linalg.matrix_norm(x - orthogonalise(d), ord=2) < 0.1
    assert ns_dtype_for((30, 20), "cpu") == torch.float32  # too small to gain from bf16
    assert ns_dtype_for((160, 320), "cuda") == torch.bfloat16
