"""AdaNAGED: parameter-free ZO with per-block LMO steps (shared checks + scale-freeness vs MeZO)."""

import pytest
import torch

from method_checks import (check_converges, check_forward_count, check_noop_and_exceptions, check_resume,
                           check_same_seed, check_state_bytes, least_squares, mlp)
from zotune.optim import AdaNAGED, MeZO, NonFiniteLossError
from zotune.samplers import Subspace

O1 = {"momentum_state": "seeds", "distance": "bound"}  # the O(1)-memory variant
# The three configurations of docs/methods.md, small enough for the test problems: subspace spectral
# (rank 2 on the MLP's 16×8 matrix, new subspaces every 3 steps), dense spectral (Newton–Schulz), sign.
SUBSPACE = {"sampler": {"name": "subspace", "rank": 2, "refresh_every": 3}}
DENSE_SPECTRAL = {"sampler": "dense"}
SIGN = {"sampler": "dense", "geometry": "sign"}
CONFIGURATIONS = {"subspace": SUBSPACE, "dense-spectral": DENSE_SPECTRAL, "sign": SIGN}


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


@pytest.mark.parametrize("variant,per_param", [({}, 2), (O1, 0), ({"geometry": "euclidean", "num_directions": 2}, 2),
                                               (DENSE_SPECTRAL, 2), (SIGN, 2), (SUBSPACE, None),
                                               ({**SUBSPACE, "num_directions": 2, "distance": "bound"}, None)],
                         ids=["default", "o1", "euclidean-n2", "dense-spectral", "sign", "subspace", "subspace-n2-bound"])
def test_shared_checks(variant, per_param):
    mk = lambda params, seed=0: make(params, seed, **variant)  # noqa: E731
    check_same_seed(mk)
    check_resume(mk)
    check_forward_count(mk)
    check_noop_and_exceptions(lambda params: make(params, step_scale=0.0, **variant), mk)
    if per_param is not None:
        check_state_bytes(mk, per_param)


def documented_state_bytes(opt) -> int:
    """docs/methods.md's formula: per subspace matrix r² fp32 for the momentum core (β > 0) and r²
    for the displacement core (distance "exact"); per dense tensor 4·numel for the momentum buffer
    ("buffer", β > 0) and θ₀ in the weights' dtype ("exact")."""
    total = 0
    for e in opt.engine.params:
        p = e.param
        if opt.geometry_of(p) == "spectral" and id(p) in opt.in_subspace:
            total += 4 * opt.sampler.rank ** 2 * ((opt.defaults["beta"] > 0) + (opt.distance == "exact"))
        else:
            total += 4 * p.numel() * (opt.defaults["beta"] > 0 and opt.momentum_state == "buffer")
            total += p.element_size() * p.numel() * (opt.distance == "exact")
    return total


@pytest.mark.parametrize("variant", [SUBSPACE, {**SUBSPACE, "distance": "bound"}, {**SUBSPACE, "beta": 0.0},
                                     DENSE_SPECTRAL, SIGN, {}, O1], ids=str)
def test_state_bytes_equal_the_documented_formula(variant):
    """On a model with both kinds of tensors (a 12-layer tiny Llama: its matrices of both sides > 4
    take subspace draws at rank 4, its norm gains dense draws)."""
    from zotune.models import load_model

    model, _ = load_model("tiny-llama")
    ids = torch.arange(24).reshape(2, 12) % model.config.vocab_size
    kw = dict(variant)
    if "sampler" in kw and kw["sampler"] != "dense":
        kw["sampler"] = {**kw["sampler"], "rank": 4}
    opt = make(model.named_parameters(), **kw)
    for _ in range(4):  # a refresh at step 3 included
        opt.step(lambda: model(input_ids=ids, labels=ids).loss)
    assert opt.state_bytes() == documented_state_bytes(opt)
    if "sampler" in kw and kw["sampler"] != "dense":
        n = sum(p.numel() for p in model.parameters())
        assert opt.state_bytes() < 0.1 * 4 * n, (opt.state_bytes(), n)  # the default's target: ≤ 0.1 × params


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


@pytest.mark.parametrize("config", CONFIGURATIONS)
def test_iterates_do_not_depend_on_the_loss_scale(config):
    """The loss ×10⁻⁴ and ×10⁴ (not exact in floating point): after 20 MLP steps (a subspace refresh
    every 3 steps included) the weights equal the unscaled run's to 1e-3 of the distance moved;
    the rounding of the scaled losses is all that differs."""
    runs = []
    for c in (1.0, 1e-4, 1e4):
        model, closure = mlp()
        opt = AdaNAGED(model.named_parameters(), **CONFIGURATIONS[config])
        for _ in range(20):
            opt.step(lambda: closure() * c)
        runs.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    model, _ = mlp()
    moved = (runs[0] - torch.cat([p.detach().flatten() for p in model.parameters()])).abs().max()
    assert moved > 1e-3
    for scaled in runs[1:]:
        assert (scaled - runs[0]).abs().max() <= 1e-3 * moved


def test_subspace_configuration_converges_and_refuses_other_geometries():
    check_converges(lambda p: make(p, **SUBSPACE), "mlp", 200, 0.6)
    model, _ = mlp()
    opt = AdaNAGED(model.named_parameters(), **SUBSPACE)
    assert opt.in_subspace == {id(model[0].weight)}  # the 16×8 matrix; the 1×16 head and biases are dense
    with pytest.raises(ValueError, match="subspace draws"):
        AdaNAGED(model.named_parameters(), geometry="sign", **SUBSPACE)
    with pytest.raises(ValueError, match="subspace draws"):
        AdaNAGED(model.named_parameters(), geometry={"0.*": "colnorm"}, **SUBSPACE)
    AdaNAGED(model.named_parameters(), geometry={"2.*": "colnorm"}, **SUBSPACE)  # a dense tensor: allowed
    with pytest.raises(ValueError, match="ns_dtype"):
        AdaNAGED(model.named_parameters(), ns_dtype="fp8")


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
    assert isinstance(opt.sampler, Subspace) and not opt.in_subspace  # the default; rank 32 > the MLP's sides
    assert [opt.geometry_of(p) for p in model.parameters()] == ["spectral", "sign", "sign", "sign"]
    opt = AdaNAGED(model.named_parameters(), geometry={"0.*": "colnorm"})
    assert opt.geometry_of(model[0].weight) == "colnorm" and opt.geometry_of(model[2].weight) == "sign"
    for bad in ({"beta": 1.0}, {"distance": "far"}, {"momentum_state": "x"}, {"geometry": "l3"},
                {"step_scale": -1.0}, {"history": 0}, {"r_eps": 0.0}):
        with pytest.raises(ValueError):
            AdaNAGED(model.named_parameters(), **bad)
    with pytest.raises(ValueError, match="closure"):
        opt.step(None)


def test_smoothing_radius_stays_visible_in_the_forward_precision():
    """τ never falls below 2 ulps of an RMS-sized weight in ``forward_dtype`` (bf16 by default: a
    bf16-autocast forward rounds smaller perturbations away); an fp32 forward lets it follow the
    steps further down; an unknown dtype is refused."""
    floors = {}
    for dtype in ("bfloat16", "float32"):
        model, closure = mlp()
        rms = torch.cat([p.detach().flatten() for p in model.parameters()]).square().mean().sqrt().item()
        opt = AdaNAGED(model.named_parameters(), forward_dtype=dtype)
        for _ in range(30):
            opt.step(closure)
        floors[dtype] = opt.tau_min
        assert opt.tau_min == pytest.approx(2 * torch.finfo(getattr(torch, dtype)).eps * rms)
        assert opt.tau >= opt.tau_min
    assert floors["float32"] < floors["bfloat16"] / 1000
    with pytest.raises(ValueError, match="forward_dtype"):
        AdaNAGED(mlp()[0].named_parameters(), forward_dtype="int8")
