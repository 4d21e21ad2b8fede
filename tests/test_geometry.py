"""LMO geometries: unit-ball outputs and ⟨d, lmo(d)⟩ = −‖d‖_* (zotune.geometry)."""

import pytest
import torch

from zotune.geometry import (GEOMETRIES, dual_norm, lmo, lmo_colnorm, lmo_for, lmo_sign, lmo_spectral, lmo_step,
                             norm)

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
