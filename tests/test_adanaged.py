"""AdaNAGED: parameter-free ZO with per-block LMO steps (shared checks + scale-freeness vs MeZO)."""

import pytest
import torch

from method_checks import (check_converges, check_forward_count, check_noop_and_exceptions, check_resume,
                           check_same_seed, check_state_bytes, least_squares, mlp)
from zotune.optim import AdaNAGED, MeZO, NonFiniteLossError

O1 = {"momentum_state": "seeds", "distance": "bound"}  # the O(1)-memory variant


def make(params, seed=0, **kw):
    return AdaNAGED(params, seed=seed, **kw)  # no lr, no eps: defaults only


# Factors that hold for seeds 0-5 (measured with the Philox generator: default least squares ends at
# 0.009-0.021 × its start, the MLP at 0.42-0.53 ×; the O(1) variant at < 0.001 × and 0.41-0.53 ×).
@pytest.mark.parametrize("variant,problem,steps,factor", [
    ({}, "least_squares", 400, 0.03), ({}, "mlp", 200, 0.6),
    (O1, "least_squares", 600, 0.01), (O1, "mlp", 200, 0.6),  # truncated momentum: slower start
], ids=["default-ls", "default-mlp", "o1-ls", "o1-mlp"])
def test_converges_with_defaults(variant, problem, steps, factor):
    check_converges(lambda p: make(p, **variant), problem, steps, factor)


@pytest.mark.parametrize("variant,per_param", [({}, 2), (O1, 0), ({"geometry": "euclidean", "num_directions": 2}, 2)],
                         ids=["default", "o1", "euclidean-n2"])
def test_shared_checks(variant, per_param):
    mk = lambda params, seed=0: make(params, seed, **variant)  # noqa: E731
    check_same_seed(mk)
    check_resume(mk)
    check_forward_count(mk)
    check_noop_and_exceptions(lambda params: make(params, step_scale=0.0, **variant), mk)
    check_state_bytes(mk, per_param)


@pytest.mark.parametrize("variant,per_param", [({"distance": "bound"}, 1), ({"momentum_state": "seeds"}, 1),
                                               ({"beta": 0.0, "distance": "bound"}, 0)])
def test_state_bytes_of_each_variant(variant, per_param):
    """Momentum buffer 1× (fp32), θ₀ 1×; seeds momentum and the Σγ bound cost no tensor."""
    check_state_bytes(lambda params, seed=0: make(params, seed, **variant), per_param)
    check_resume(lambda params, seed=0: make(params, seed, **variant), steps=4)


def scaled_least_squares(scale: float):
    """least_squares() with inputs ×scale and the same true weights: loss, gradient and Hessian ×scale²."""
    model, _ = least_squares()
    g = torch.Generator().manual_seed(0)
    X, w = torch.randn(128, 20, generator=g) * scale, torch.randn(20, 1, generator=g)
    return model, lambda: ((model(X) - X @ w) ** 2).mean()


def run(opt_factory, scale, steps):
    model, closure = scaled_least_squares(scale)
    start = closure().item()
    opt = opt_factory(model.named_parameters())
    try:
        for _ in range(steps):
            opt.step(closure)
    except NonFiniteLossError:
        return start, float("inf")
    return start, closure().item()


def test_scale_free_where_mezo_is_not():
    """Gradient scales 1 and 10⁴: AdaNAGED's defaults reach < 3% of the start loss on both; MeZO with
    lr = 5e-3 (converging on scale 1) diverges on the ×10⁴ problem, and lr = 5e-7 (which suits ×10⁴)
    barely moves on scale 1."""
    for scale in (1.0, 100.0):
        start, end = run(lambda p: AdaNAGED(p), scale, 400)
        assert end < 0.03 * start, (scale, start, end)
    start, end = run(lambda p: MeZO(p, lr=5e-3), 1.0, 400)
    assert end < 0.05 * start
    start, end = run(lambda p: MeZO(p, lr=5e-3), 100.0, 400)
    assert not end < start  # inf (NonFiniteLossError) or larger than at the start
    start, end = run(lambda p: MeZO(p, lr=5e-7), 1.0, 400)  # the lr that suits ×10⁴ barely moves ×1
    assert end > 0.99 * start


def test_loss_scale_does_not_change_the_trajectory():
    """γ = r̄·‖d‖_*/√G and τ do not depend on the loss's scale: a loss ×2¹⁴ (exact in floating
    point, > 10⁴) gives bit-identical weights."""
    weights = []
    for c in (1.0, 2.0 ** 14):
        model, closure = mlp()
        opt = AdaNAGED(model.named_parameters())
        for _ in range(20):
            opt.step(lambda: closure() * c)
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(weights[0], weights[1])


def test_geometry_is_per_block_and_validated():
    model, _ = mlp()
    opt = AdaNAGED(model.named_parameters())
    assert [opt.geometry_of(p) for p in model.parameters()] == ["spectral", "sign", "sign", "sign"]
    opt = AdaNAGED(model.named_parameters(), geometry={"0.*": "colnorm"})
    assert opt.geometry_of(model[0].weight) == "colnorm" and opt.geometry_of(model[2].weight) == "sign"
    for bad in ({"beta": 1.0}, {"distance": "far"}, {"momentum_state": "x"}, {"geometry": "l3"},
                {"step_scale": -1.0}, {"history": 0}, {"r_eps": 0.0}):
        with pytest.raises(ValueError):
            AdaNAGED(model.named_parameters(), **bad)
    with pytest.raises(ValueError, match="closure"):
        opt.step(None)
