"""The engine on its fused Triton path (kernels="triton", under Triton's CPU interpreter) against its
plain chunked passes (kernels="torch"), step by step: the same weights, and the engine's invariants.

Rademacher directions make both paths exact (θ + c·(±1) rounds once either way), so weights must
match bit for bit in fp32 and, with stochastic rounding, in bf16; Gaussian ones may differ by an
ulp in a perturbed copy (the plain pass fuses a multiply-add on a CPU), so they match closely.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

import zotune.engine as engine_mod  # noqa: E402
from test_triton_kernels import _interpreted  # noqa: E402
from zotune.optim import optimizer_class  # noqa: E402


@pytest.fixture(scope="module")
def kernels():
    return _interpreted()


@pytest.fixture(autouse=True)
def interpreted_kernels(monkeypatch, kernels):
    monkeypatch.setattr(engine_mod, "_triton_kernels", lambda required: kernels)


def _problem(dtype):
    g = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 17), torch.nn.Tanh(), torch.nn.Linear(17, 1))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    model.to(dtype)
    x, y = torch.randn(16, 6, generator=g), torch.randn(16, 1, generator=g)

    def closure():
        return ((model(x.to(dtype)).float() - y) ** 2).mean()

    return model, closure


def _run(method, kernels, dtype, noise, steps=2, **kw):
    model, closure = _problem(dtype)
    opt = optimizer_class(method)(model.named_parameters(), seed=7, noise=noise, kernels=kernels, **kw)
    losses = [float(opt.step(closure)) for _ in range(steps)]
    return [p.detach().clone() for p in model.parameters()], losses


@pytest.mark.parametrize("method, kw", [("mezo", dict(lr=1e-2)), ("mezo-gv", dict(lr=1e-2)),
                                        ("zo-sgd-momentum", dict(lr=1e-3))])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rademacher_steps_are_bit_identical_on_both_paths(method, kw, dtype):
    fused, fused_losses = _run(method, "triton", dtype, "rademacher", **kw)
    plain, plain_losses = _run(method, "torch", dtype, "rademacher", **kw)
    assert fused_losses == plain_losses
    assert all(torch.equal(a, b) for a, b in zip(fused, plain))
    start, _ = _problem(dtype)
    assert not all(torch.equal(a, b.detach()) for a, b in zip(fused, start.parameters())), "nothing moved"


def test_gaussian_steps_agree_closely():
    """Gaussian draws differ by about an ulp between the paths (log/sin/cos), and the projected
    gradient (L+ − L−)/2ε magnifies loss differences 500-fold at ε = 1e-3: after 2 steps at lr 1e-2
    the weights (|θ| ~ 0.5) agree to about 3e-5."""
    fused, _ = _run("mezo", "triton", torch.float32, "gaussian", lr=1e-2)
    plain, _ = _run("mezo", "torch", torch.float32, "gaussian", lr=1e-2)
    for a, b in zip(fused, plain):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_lr_zero_is_an_exact_no_op_on_the_fused_path(dtype):
    start, _ = _problem(dtype)
    after, _ = _run("mezo", "triton", dtype, "gaussian", steps=5, lr=0.0)
    assert all(torch.equal(a, b.detach()) for a, b in zip(after, start.parameters()))


def test_a_fused_half_precision_overflow_fails_the_step():
    from zotune.engine import NonFiniteUpdateError
    from zotune.optim import MeZO

    layer = torch.nn.Linear(4, 1, bias=False).half()
    with torch.no_grad():
        layer.weight.fill_(65000.0)
    calls = [0]

    def closure():
        calls[0] += 1
        return torch.tensor(1e6 * calls[0] * (-1) ** calls[0])

    opt = MeZO(layer.parameters(), lr=1.0, eps=1e-3, noise="rademacher", kernels="triton")
    with pytest.raises(NonFiniteUpdateError, match="overflowed or was not finite"):
        opt.step(closure)


def test_kernels_option_is_checked():
    model, _ = _problem(torch.float32)
    with pytest.raises(ValueError, match="kernels must be one of"):
        optimizer_class("mezo")(model.named_parameters(), kernels="cuda")


def test_a_raising_closure_leaves_the_weights_on_the_fused_path():
    model, closure = _problem(torch.bfloat16)
    before = [p.detach().clone() for p in model.parameters()]
    opt = optimizer_class("mezo")(model.named_parameters(), lr=1e-2, noise="rademacher", kernels="triton")
    calls = [0]

    def flaky():
        calls[0] += 1
        if calls[0] == 2:  # the −ε forward, after the +ε copy was built by the kernel
            raise RuntimeError("boom")
        return closure()

    with pytest.raises(RuntimeError, match="boom"):
        opt.step(flaky)
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
    opt.step(closure)  # and the next step trains
    assert not all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
