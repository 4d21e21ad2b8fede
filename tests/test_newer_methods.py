"""The 2025–26 methods (issue 11): FZOO, ZO-Muon, Sparse-MeZO, MeZO-SVRG. The checks every method
passes, plus each method's defining property."""

import pytest
import torch
from method_checks import (PROBLEMS, check_converges, check_forward_count, check_noop_and_exceptions, check_resume,
                           check_same_seed, check_state_bytes, counting, flat, least_squares, mlp)

from zotune.optim import build_optimizer
from zotune.optim.fzoo import FZOO
from zotune.optim.mezo import MeZO
from zotune.optim.mezo_svrg import MeZOSVRG
from zotune.optim.sparse_mezo import SparseMeZO
from zotune.optim.zo_muon import ZOMuon

# method -> (class, options, lr, state in 4-byte units per parameter element). The MLP's 16×8
# matrix takes ZO-Muon's projection at rank 4; its 1×16 head and the biases take dense draws.
METHODS = {
    "fzoo": (FZOO, dict(num_directions=4), 2e-2, 0),
    "zo-muon": (ZOMuon, dict(rank=4, refresh_every=10, dense_lr=5e-3), 5e-2, 0),
    "sparse-mezo": (SparseMeZO, dict(sparsity=0.5), 1e-2, 0),
    "mezo-svrg": (MeZOSVRG, dict(anchor_every=3), 5e-3, 1),
}
CONVERGE = {"least_squares": (300, 0.1), "mlp": (300, 0.5)}


def factory(name, lr=None, **extra):
    cls, opts, default_lr, _ = METHODS[name]
    return lambda params, **kw: cls(params, lr=default_lr if lr is None else lr, eps=1e-3, **{**opts, **extra}, **kw)


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("problem", ["least_squares", "mlp"])
def test_converges(name, problem):
    check_converges(factory(name), problem, *CONVERGE[problem])


@pytest.mark.parametrize("name", METHODS)
def test_shared_checks(name):
    make = factory(name)
    check_same_seed(make)
    check_resume(make, steps=7)
    check_forward_count(make)
    zero = {"mezo-svrg": {"anchor_lr": 0.0}, "zo-muon": {"dense_lr": 0.0}}.get(name, {})
    check_noop_and_exceptions(factory(name, lr=0.0, **zero), make)
    check_state_bytes(make, METHODS[name][3])


# ----------------------------------------------------------------------------- FZOO
def test_fzoo_step_is_invariant_to_the_loss_scale():
    """×c scales every L_i − L₀ and σ alike: a power of two changes no bit; ×100 only rounding (fp32
    rounds 100·L, and L_i − L₀ ≈ ε·g is 1e-3 of L, so the coefficients differ by ~1e-4 relative)."""
    def run(scale):
        model, closure = mlp()
        opt = FZOO(model.named_parameters(), lr=1e-2, num_directions=4)
        for _ in range(5):
            opt.step(lambda: closure() * scale)
        return flat(model)

    base = run(1.0)
    assert torch.equal(run(128.0), base) and torch.equal(run(1 / 64), base)
    start = flat(mlp()[0])
    moved = (base - start).abs().max()
    assert moved > 1e-2
    assert (run(100.0) - base).abs().max() < 1e-2 * moved


def test_fzoo_one_unperturbed_forward_and_its_loss():
    """N + 1 closure calls; the returned loss is L(θ) itself; equal losses (σ = 0) move nothing."""
    model, closure = mlp()
    opt = FZOO(model.named_parameters(), lr=1e-2, num_directions=3)
    wrapped, calls = counting(closure)
    expected = closure().item()
    assert float(opt.step(wrapped)) == expected and calls[0] == 4
    before = flat(model)
    opt.step(lambda: torch.tensor(1.0))
    assert torch.equal(flat(model), before) and opt.zo_step == 2
    with pytest.raises(ValueError, match="num_directions >= 2"):
        FZOO(model.named_parameters(), num_directions=1)


def test_fzoo_rule_by_hand():
    """One step on least squares equals the formula θ − lr/(Nσ)·Σ (L_i − L₀)·u_i with the draws."""
    model, closure = least_squares()
    opt = FZOO(model.named_parameters(), lr=0.1, eps=1e-2, num_directions=3)
    e = opt.engine.params[0]
    t = opt.current_step()
    us = [opt.engine.tensor(e, t.draw_seed(j)) for j in range(3)]
    w0 = model.weight.detach().clone()
    l0 = closure().item()
    losses = []
    for u in us:
        with torch.no_grad():
            model.weight.copy_(w0 + 1e-2 * u)
        losses.append(closure().item())
    with torch.no_grad():
        model.weight.copy_(w0)
    sigma = torch.tensor(losses).std(unbiased=False).item()
    want = w0 - 0.1 / (3 * sigma) * sum((li - l0) * u for li, u in zip(losses, us))
    opt.step(closure)
    assert set(torch.unique(us[0]).tolist()) == {-1.0, 1.0}  # Rademacher by default
    torch.testing.assert_close(model.weight.detach(), want, rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------- ZO-Muon
def test_zo_muon_update_is_orthonormal_on_its_subspace():
    """A 48×32 matrix at rank 6: the step −lr·P·NS(Ĝ) has 6 singular values ≈ lr (within 3%),
    the others 0, and lies in the column space of P."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 32, generator=g), torch.randn(64, 48, generator=g)
    model = torch.nn.Linear(32, 48, bias=False)
    closure = lambda: ((model(x) - y) ** 2).mean()  # noqa: E731
    lr = 1e-2
    opt = ZOMuon(model.named_parameters(), lr=lr, rank=6, num_directions=4)
    for _ in range(3):
        before = model.weight.detach().clone()
        opt.step(closure)
        delta = model.weight.detach() - before
        s = torch.linalg.svdvals(delta.double()) / lr
        assert torch.all((s[:6] > 0.97) & (s[:6] < 1.03)), s[:8]
        assert s[6:].max() < 1e-4
        p = opt.sampler.basis(opt.engine.params[0], opt.current_step()).double()
        assert torch.linalg.norm(delta.double() - p @ (p.T @ delta.double())) < 1e-5 * torch.linalg.norm(delta)


def test_zo_muon_draws_lie_in_the_projection_and_vectors_take_dense_lr():
    model, closure = mlp()
    opt = ZOMuon(model.named_parameters(), lr=0.0, dense_lr=1e-2, rank=4, num_directions=2)
    e = opt.engine.params[0]  # 16×8
    t = opt.current_step()
    z = opt.sampler.draw(e, 123, t)
    p = opt.sampler.basis(e, t)
    torch.testing.assert_close(p @ (p.T @ z), z, rtol=0, atol=1e-5)
    before = {n: q.detach().clone() for n, q in model.named_parameters()}
    opt.step(closure)
    moved = {n: not torch.equal(before[n], q.detach()) for n, q in model.named_parameters()}
    assert moved == {"0.weight": False, "0.bias": True, "2.weight": True, "2.bias": True}


# ----------------------------------------------------------------------------- Sparse-MeZO
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sparse_mezo_never_touches_weights_outside_the_mask(dtype):
    """Weights with |θ| > h (h fixed from θ₀, 70% of each tensor's largest at sparsity 0.7) keep
    every bit through each step; about 30% of each tensor is in the mask at the start."""
    model, closure = mlp()
    model.to(dtype)
    opt = SparseMeZO(model.named_parameters(), lr=2e-2, sparsity=0.7)
    for e in opt.engine.params:
        if e.param.numel() >= 16:
            frac = opt.sampler.mask(e).float().mean().item()
            assert abs(frac - 0.3) < 0.1, (e.name, frac)
    moved_inside = 0
    for _ in range(10):
        masks = {e.name: opt.sampler.mask(e).clone() for e in opt.engine.params}
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        opt.step(closure)
        for n, p in model.named_parameters():
            outside = ~masks[n]
            assert torch.equal(p.detach()[outside], before[n][outside]), n
            moved_inside += int((p.detach()[masks[n]] != before[n][masks[n]]).sum())
    assert moved_inside > 0


def test_sparse_mezo_leaves_a_zero_initialised_tensor_dense():
    """Least squares from θ₀ = 0: h would be 0 and every weight would leave the mask after one step;
    with h = ∞ the tensor trains (as MeZO)."""
    model, closure = least_squares()
    opt = SparseMeZO(model.named_parameters(), lr=1e-2)
    start = closure().item()
    for _ in range(100):
        opt.step(closure)
    assert opt.sampler.thresholds[opt.engine.params[0].key] == float("inf")
    assert closure().item() < 0.5 * start
    thresholds = dict(opt.sampler.thresholds)
    assert opt.state_dict()["zo"]["sampler"]["thresholds"] == thresholds  # fixed, and saved for a resume


def test_sparse_mezo_refuses_bad_sparsity():
    model, _ = mlp()
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match="sparsity must be in"):
            SparseMeZO(model.named_parameters(), sparsity=bad)


# ----------------------------------------------------------------------------- MeZO-SVRG
@pytest.mark.parametrize("n", [1, 2])
def test_mezo_svrg_with_an_anchor_every_step_is_mezo(n):
    """q = 1: every step is an anchor step, θ − η₁·ĝ(θ): MeZO's weights, bit for bit."""
    runs = []
    for cls, kw in ((MeZOSVRG, dict(anchor_every=1)), (MeZO, {})):
        model, closure = mlp()
        opt = cls(model.named_parameters(), lr=1e-2, num_directions=n, seed=3, **kw)
        losses = [float(opt.step(closure)) for _ in range(8)]
        runs.append((flat(model), losses))
    assert torch.equal(runs[0][0], runs[1][0]) and runs[0][1] == runs[1][1]


def test_mezo_svrg_control_variate_vanishes_at_the_anchor():
    """With η₁ = 0 the step after an anchor step is taken at θ = θ̄: ĝ_B(θ; z) − ĝ_B(θ̄; z) = 0 exactly,
    so the step is −η₂·ḡ, the anchor's MeZO estimate (checked against MeZO's step along the same draw)."""
    model, closure = mlp()
    opt = MeZOSVRG(model.named_parameters(), lr=1e-2, anchor_lr=0.0, anchor_every=2, seed=5)
    start = flat(model)
    wrapped, calls = counting(closure)
    opt.step(wrapped)
    assert torch.equal(flat(model), start) and calls[0] == 2
    opt.step(wrapped)
    assert calls[0] == 6  # 2 at θ, 2 at θ̄
    mezo_model, mezo_closure = mlp()
    MeZO(mezo_model.named_parameters(), lr=1e-2, seed=5).step(mezo_closure)  # step 0's draw, at the same θ
    assert torch.equal(flat(model), flat(mezo_model))


def test_mezo_svrg_takes_the_anchor_on_the_anchor_closure():
    model, closure = mlp()
    other_model, other = mlp(seed=1)
    opt = MeZOSVRG(model.named_parameters(), lr=1e-2, anchor_every=2)
    small, small_calls = counting(closure)
    big, big_calls = counting(closure)
    for t in range(4):
        opt.step(small, anchor_closure=big)
    assert (big_calls[0], small_calls[0]) == (4, 8)
    assert opt.state_bytes() == 4 * sum(p.numel() for p in model.parameters())
    with pytest.raises(ValueError, match="dense"):
        MeZOSVRG(model.named_parameters(), sampler={"name": "sparse", "density": 0.5})
    del other_model, other


def test_new_methods_build_by_name_with_their_options():
    model, _ = mlp()
    for name, options in (("fzoo", dict(num_directions=3)), ("zo-muon", dict(rank=2, refresh_every=5)),
                          ("sparse-mezo", dict(sparsity=0.5)), ("mezo-svrg", dict(anchor_every=4))):
        opt = build_optimizer(name, model.named_parameters(), lr=1e-3, **options)
        assert opt.forward_passes >= 2
    with pytest.raises(ValueError, match="fixes its sampler"):
        build_optimizer("zo-muon", model.named_parameters(), sampler="dense")


def test_mezo_svrg_trains_through_the_cli_with_its_anchor_batch(tmp_path):
    """`zotune train` gives MeZO-SVRG an anchor closure over ``anchor_batch_size`` examples in
    microbatches of the batch size: 8 examples at batch 4 are 2 forwards per anchor evaluation."""
    import json

    from zotune.cli import main

    out = tmp_path / "svrg"
    assert main(["train", "--model", "tiny-llama", "--batch-size", "4", "--eval-examples", "8", "--test-examples", "8",
                 "--max-length", "48", "--no-progress", "--eval-every", "0", "--optimizer", "mezo-svrg",
                 "--lr", "1e-3", "--opt", "anchor_batch_size=8", "--steps", "3", "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["train_forward_passes"] == 2 * 2 + 4 + 2 * 2  # anchor, minibatch step, anchor
