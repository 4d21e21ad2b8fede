"""Shared checks every ZO method must pass (issue: the method family).

Each method's test file calls these with a factory ``make(named_params) -> optimizer``. The
problems are small and seeded so the checks are fast and exact.
"""

from __future__ import annotations

import copy

import torch
from torch.nn.modules import module as nn_module


# ------------------------------------------------------------------------------- problems
def least_squares(d: int = 20, n: int = 128, seed: int = 0):
    """A linear model from zero on a noiseless least-squares problem: (model, closure)."""
    g = torch.Generator().manual_seed(seed)
    X, w = torch.randn(n, d, generator=g), torch.randn(d, 1, generator=g)
    model = torch.nn.Linear(d, 1, bias=False)
    with torch.no_grad():
        model.weight.zero_()
    return model, lambda: ((model(X.to(model.weight.dtype)).float() - X @ w) ** 2).mean()


def mlp(seed: int = 0, n: int = 128):
    """A 2-layer tanh MLP (8 → 16 → 1) fitting a smooth target: (model, closure)."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 8, generator=g)
    y = torch.sin(X[:, :1]) + 0.5 * X[:, 1:2] * X[:, 2:3]
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model, lambda: ((model(X.to(model[0].weight.dtype)).float() - y) ** 2).mean()


PROBLEMS = {"least_squares": least_squares, "mlp": mlp}


def deep_mlp():
    """Six 6×6 tanh layers (six layer blocks ``0`` … ``5``) for the layer samplers: (model, closure)."""
    g = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(6, 6) for _ in range(6)])
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.4)
    X = torch.randn(32, 6, generator=g)
    return model, lambda: (model(X).tanh() - 0.5).square().mean()


def params_by_block(model) -> dict[str, list[torch.Tensor]]:
    """Copies of the parameters grouped by layer block label."""
    from zotune.samplers import block_label

    out = {}
    for name, p in model.named_parameters():
        out.setdefault(block_label(name), []).append(p.detach().clone())
    return out


def flat(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten().float() for p in model.parameters()])


def counting(closure):
    """Wrap a closure to count its calls: returns (wrapped, counter list)."""
    calls = [0]

    def wrapped():
        calls[0] += 1
        return closure()

    return wrapped, calls


# ------------------------------------------------------------------------------- checks
def check_converges(make, problem: str, steps: int, factor: float):
    """The loss falls below ``factor`` × its start within ``steps`` steps. Returns (start, end)."""
    model, closure = PROBLEMS[problem]()
    start = closure().item()
    opt = make(model.named_parameters())
    for _ in range(steps):
        opt.step(closure)
    end = closure().item()
    assert end < factor * start, f"{problem}: loss {start:.4g} -> {end:.4g}, wanted < {factor} x start"
    return start, end


def check_same_seed(make, steps: int = 5, problem: str = "mlp"):
    """Two runs with the same seed give bit-identical weights; another seed does not."""
    runs = []
    for seed in (0, 0, 1):
        model, closure = PROBLEMS[problem]()
        opt = make(model.named_parameters(), seed=seed)
        for _ in range(steps):
            opt.step(closure)
        runs.append(flat(model))
    assert torch.equal(runs[0], runs[1]), "same seed gave different weights"
    assert not torch.equal(runs[0], runs[2]), "a different seed gave the same weights"


def check_resume(make, steps: int = 6, problem: str = "mlp"):
    """Resuming from state_dict() mid-run gives the weights of an uninterrupted run."""
    model, closure = PROBLEMS[problem]()
    opt = make(model.named_parameters())
    for _ in range(steps):
        opt.step(closure)
    straight = flat(model)

    model, closure = PROBLEMS[problem]()
    opt = make(model.named_parameters())
    for _ in range(steps // 2):
        opt.step(closure)
    saved = copy.deepcopy(opt.state_dict())
    fresh = make(model.named_parameters(), seed=12345)  # a new object, wrong seed: the load fixes it
    fresh.load_state_dict(saved)
    for _ in range(steps - steps // 2):
        fresh.step(closure)
    assert torch.equal(flat(model), straight), "resumed run differs from the uninterrupted one"


def check_forward_count(make, steps: int = 3, problem: str = "mlp"):
    """Closure calls per step equal the optimizer's stated ``forward_passes``."""
    model, closure = PROBLEMS[problem]()
    opt = make(model.named_parameters())
    wrapped, calls = counting(closure)
    opt.step(wrapped)  # the first step may calibrate; count from the second
    for _ in range(steps):
        before = calls[0]
        stated = opt.forward_passes
        opt.step(wrapped)
        assert calls[0] - before == stated, f"{calls[0] - before} closure calls, stated {stated}"


def check_noop_and_exceptions(make_noop, make, problem: str = "mlp"):
    """lr = 0 steps leave weights bit-identical (fp32 and bf16); a raising closure changes nothing.
    The problems' closures cast their inputs to the model's dtype, so ``model.to(bf16)`` works."""
    for dtype in (torch.float32, torch.bfloat16):
        model, closure = PROBLEMS[problem]()
        model.to(dtype)
        before = flat(model)
        opt = make_noop(model.named_parameters())
        for _ in range(20):
            opt.step(closure)
        assert torch.equal(flat(model), before), f"lr=0 changed weights in {dtype}"

    model, closure = PROBLEMS[problem]()
    opt = make(model.named_parameters())
    opt.step(closure)
    before = flat(model)
    hooks = (len(nn_module._global_forward_pre_hooks), len(nn_module._global_forward_hooks))
    calls = [0]

    def boom():
        calls[0] += 1
        if calls[0] == 2:
            raise RuntimeError("simulated failure")
        return closure()

    try:
        opt.step(boom)
    except RuntimeError:
        pass
    else:
        raise AssertionError("the closure's exception was swallowed")
    assert torch.equal(flat(model), before), "a failing step changed the weights"
    assert hooks == (len(nn_module._global_forward_pre_hooks), len(nn_module._global_forward_hooks))


def check_state_bytes(make, expected_per_param: float, problem: str = "mlp"):
    """``state_bytes()`` after a step equals ``expected_per_param`` × 4 bytes × trainable elements
    (0 for stateless methods; 1 for a momentum buffer; 2 for Adam)."""
    model, closure = PROBLEMS[problem]()
    opt = make(model.named_parameters())
    opt.step(closure)
    n = sum(p.numel() for p in model.parameters())
    assert opt.state_bytes() == int(expected_per_param * 4 * n), (opt.state_bytes(), n)
