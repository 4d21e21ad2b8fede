"""ZO-SGD-Sign: MeZO's step with the projected gradient replaced by its sign.

Zhang et al., "Revisiting Zeroth-Order Optimization for Memory-Efficient LLM Fine-Tuning: A
Benchmark" (ZO-Bench), ICML 2024 (arXiv 2402.11592); rule as in the benchmark's code
(github.com/ZO-Bench/ZO-LLM, zo-bench/trainer.py). Per step, with z drawn from the step seed:

    g = (L(θ + εz) − L(θ − εz)) / (2ε)             # two forward passes, a scalar
    θ ← (1 − lr·λ)·θ − lr · sign(g)·z              # default: sign of the scalar (the code's rule)
    θ ← (1 − lr·λ)·θ − lr · sign(g·z)              # coordinatewise=True (commented out in the code)

Why the sign: the step length no longer depends on |g|, whose size swings with the batch and ε, so
one bad batch cannot throw the weights far. With ``num_directions=n`` the scalar rule averages
sign(g_j)·z_j over the n directions and the coordinate-wise rule takes sign((1/n) Σ g_j z_j).
Forward passes per step: 2 (2n). State: none (O(1)); the scalar rule is one streamed update pass,
the coordinate-wise rule materialises one parameter's sign at a time.
Defaults: lr = 1e-4 and ε = 1e-3, ZO-Bench's sweep for full fine-tuning of OPT-1.3B on SST-2
(taken from the benchmark's sweep files as recorded in our research notes); weight decay 0.
"""

from __future__ import annotations

import torch

from zotune.engine import Part
from zotune.optim.base import ZOOptimizer, check_closure, check_hparams
from zotune.optim.registry import register


def sign_update(part: Part, lr: float) -> tuple[list[tuple[int, float]], float]:
    """The scalar rule: θ ← decay·θ − (lr/n)·Σ_j sign(g_j)·z_j, as (direction, coef) for the
    engine's streamed write."""
    return [(seed, float((g > 0) - (g < 0))) for seed, g in part.terms], -lr / part.n


def coordinatewise_sign_update(g_hat: torch.Tensor, lr: float) -> torch.Tensor:
    """The coordinate-wise rule's delta −lr·sign(ĝ), from the materialised ĝ (overwritten)."""
    return g_hat.sign_().mul_(-lr)


@register("zo-sgd-sign")
class ZOSGDSign(ZOOptimizer):
    """ZO-SGD with the sign of the two-point estimate. ``loss = opt.step(closure)``.

    The returned loss is the mean of the perturbed losses, an O(ε²) estimate of L(θ).
    """

    def __init__(self, params, lr: float = 1e-4, eps: float = 1e-3, weight_decay: float = 0.0,
                 coordinatewise: bool = False, **engine):
        check_hparams(lr, eps, weight_decay)
        super().__init__(params, dict(lr=lr, eps=eps, weight_decay=weight_decay), **engine)
        self.coordinatewise = bool(coordinatewise)

    @torch.no_grad()
    def step(self, closure):
        check_closure(self, closure)
        est = self.estimate(closure, self.shared_eps())
        for group, e, part in self.estimated(est):
            lr, decay = group["lr"], 1.0 - group["lr"] * group["weight_decay"]
            if self.coordinatewise:
                self.engine.write(e, coordinatewise_sign_update(self.engine.tensor(e, part.mean()), lr), decay)
            else:
                self.engine.write_along(e, *sign_update(part, lr), decay)
        self.finish_step(est.projected)
        return torch.tensor(est.loss)
