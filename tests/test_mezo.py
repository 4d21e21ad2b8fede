"""MeZO (and its n-SPSA / AdaZeta options) through the checks every method passes."""

import math

import pytest
import torch

from method_checks import (check_converges, check_forward_count, check_noop_and_exceptions, check_resume,
                           check_same_seed, check_state_bytes, counting, least_squares)
from zotune.optim import MeZO


def make(params, seed=0, **kw):
    return MeZO(params, lr=kw.pop("lr", 5e-3), eps=1e-3, seed=seed, **kw)


@pytest.mark.parametrize("problem,steps,factor", [("least_squares", 500, 0.05), ("mlp", 500, 0.5)])
def test_converges(problem, steps, factor):
    check_converges(make, problem, steps, factor)


@pytest.mark.parametrize("extra", [{}, {"num_directions": 3}, {"query_schedule": (1.0, 0.5, 4)}])
def test_shared_checks(extra):
    mk = lambda params, seed=0: make(params, seed, **extra)  # noqa: E731
    check_same_seed(mk)
    check_resume(mk)
    check_forward_count(mk)
    check_noop_and_exceptions(lambda params: make(params, lr=0.0, **extra), mk)
    check_state_bytes(mk, 0)


def test_n_spsa_lowers_variance():
    """Averaging over n directions brings one step's update closer to the true gradient step."""
    def alignment(n):
        cos = []
        for seed in range(20):
            model, loss = least_squares()
            true = torch.autograd.grad(loss(), model.weight)[0].flatten()
            MeZO(model.named_parameters(), lr=1.0, num_directions=n, seed=seed).step(loss)
            cos.append(torch.nn.functional.cosine_similarity(-model.weight.detach().flatten(), true, dim=0))
        return torch.stack(cos).mean().item()
    assert alignment(8) > alignment(1) + 0.2


def test_adazeta_schedule_grows_queries():
    model, loss = least_squares()
    opt = MeZO(model.named_parameters(), lr=1e-3, query_schedule=(1.0, 0.5, 3))
    wrapped, calls = counting(loss)
    per_step = []
    for _ in range(10):
        before = calls[0]
        opt.step(wrapped)
        per_step.append(calls[0] - before)
    assert per_step == [2 * min(3, math.ceil((t + 1) ** 0.5)) for t in range(10)]
    assert per_step[0] == 2 and per_step[-1] == 6
    with pytest.raises(ValueError, match="query_schedule"):
        MeZO(model.parameters(), query_schedule=(0, 1, 2))


@pytest.mark.parametrize("name,per_draw,fixed", [
    ("mezo-gv", 4, 0), ("mezo-greedy", 2, 1), ("forward-grad", 1, 0), ("zo-sgd-cons", 2, 3), ("adanaged", 2, 0),
    ("hybrid-zo", 2, 1),
])
def test_every_method_honours_the_query_schedule(name, per_draw, fixed):
    """AdaZeta's n_t is read by every method with several draws: closure calls per step are
    per_draw·n_t + fixed (pools of 2 + their ± pair; Greedy: 2 scores and one L(θ); JVPs; Cons: 3
    extra; HybridZO: one first-order forward), equal to the stated forward_passes."""
    from method_checks import mlp

    from zotune.optim import build_optimizer

    model, loss = mlp()
    extra = {"fo_params": r"^2\."} if name == "hybrid-zo" else {}
    opt = build_optimizer(name, model.named_parameters(), lr=None if name == "adanaged" else 1e-3,
                          query_schedule=(1.0, 0.5, 3), **extra)
    wrapped, calls = counting(loss)
    for t in range(6):
        before, stated = calls[0], opt.forward_passes
        opt.step(wrapped)
        assert calls[0] - before == stated == per_draw * min(3, math.ceil((t + 1) ** 0.5)) + fixed
