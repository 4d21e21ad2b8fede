"""Low-rank perturbations applied inside a Linear's forward (x·B·Aᵀ added to the output) instead of
building W + c·A·Bᵀ: the same losses and steps as the built copy, chosen only where it costs fewer
flops (fewer tokens than m·n/(m+n)), exact no-ops and exception safety kept."""

import pytest
import torch

import zotune.engine as engine_mod
from zotune.optim import optimizer_class


def _problem(batch: int):
    g = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 48), torch.nn.Tanh(), torch.nn.Linear(48, 32))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    x, y = torch.randn(batch, 64, generator=g), torch.randn(batch, 32, generator=g)
    return model, lambda: ((model(x) - y) ** 2).mean()


def _opt(method, model, how="auto", **kw):
    """The optimizer, its layout already learned (as a training run's probe does): the in-forward path
    is used only once tied weights are known."""
    rank = {"subzero": dict(rank=4), "lozo": dict(rank=2)}[method]
    opt = optimizer_class(method)(model.named_parameters(), lr=1e-2, eps=1e-3, seed=3, low_rank_in_forward=how,
                                  **rank, **kw)
    opt.engine.probe_layout(lambda: model(torch.zeros(1, 64)))
    return opt


@pytest.mark.parametrize("method", ["subzero", "lozo"])
def test_in_forward_losses_equal_the_built_copy(method):
    losses = {}
    for how in ("always", "never"):
        model, closure = _problem(8)
        opt = _opt(method, model, how)
        seed = opt.step_seed()
        losses[how] = [opt.engine.loss_at(closure, seed, c).item() for c in (1e-3, -1e-3, 0.5)]
    assert losses["always"] != [None] and losses["always"] == pytest.approx(losses["never"], rel=1e-6, abs=1e-7)


@pytest.mark.parametrize("method", ["subzero", "lozo"])
def test_in_forward_steps_follow_the_built_copy(method):
    """The two paths round differently (an fp32 matmul either way), and (L+ − L−)/2ε magnifies loss
    differences of ~1e-7 a thousandfold, so after 5 steps they agree to 1% of how far the weights moved."""
    weights = {}
    start, _ = _problem(8)
    for how in ("always", "never"):
        model, closure = _problem(8)
        opt = _opt(method, model, how)
        for _ in range(5):
            opt.step(closure)
        weights[how] = [p.detach().clone() for p in model.parameters()]
    for a, b, w0 in zip(weights["always"], weights["never"], start.parameters()):
        moved = (b - w0.detach()).abs().max().item()
        assert moved > 0 and (a - b).abs().max().item() <= 0.01 * moved


def test_auto_applies_in_the_forward_only_where_cheaper(monkeypatch):
    built = []
    real = engine_mod.perturbed_copy

    def counting(p, *a, **k):
        built.append(tuple(p.shape))
        return real(p, *a, **k)

    monkeypatch.setattr(engine_mod, "perturbed_copy", counting)
    for batch, expect_built in ((8, False), (4096, True)):  # m·n/(m+n): 27.4 tokens (64×48), 19.2 (48×32)
        built.clear()
        model, closure = _problem(batch)
        opt = _opt("subzero", model, "auto")
        built.clear()
        opt.engine.loss_at(closure, opt.step_seed(), 1e-3)
        weight_copies = [s for s in built if len(s) == 2]
        assert bool(weight_copies) is expect_built, (batch, built)
        assert len([s for s in built if len(s) == 1]) == 2  # biases take dense draws: always built


def test_lr_zero_and_a_raising_forward_leave_the_weights_exact():
    model, closure = _problem(8)
    before = [p.detach().clone() for p in model.parameters()]
    opt = optimizer_class("subzero")(model.named_parameters(), lr=0.0, eps=1e-3, rank=4, low_rank_in_forward="always")
    opt.engine.probe_layout(lambda: model(torch.zeros(1, 64)))
    for _ in range(3):
        opt.step(closure)
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))

    def raising():
        model[0](torch.randn(8, 64))
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        opt.engine.loss_at(raising, opt.step_seed(), 1e-3)
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
    plain = closure().item()
    assert opt.engine.loss_at(closure, opt.step_seed(), 0.0).item() == plain  # no correction left behind


def test_the_in_forward_path_is_off_by_default_and_checked():
    model, closure = _problem(8)
    assert optimizer_class("subzero")(model.named_parameters(), rank=4).engine.low_rank_in_forward == "never"
    with pytest.raises(ValueError, match="low_rank_in_forward must be"):
        optimizer_class("subzero")(model.named_parameters(), rank=4, low_rank_in_forward="yes")
