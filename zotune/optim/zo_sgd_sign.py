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

from zotune.optim.base import ZOOptimizer, check_hparams


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
        if closure is None:
            raise ValueError("ZOSGDSign.step needs a closure that runs a forward pass and returns the loss")
        estimates, loss = self.spsa(closure, self.shared_eps())
        n = len(estimates)
        for group in self.param_groups:
            lr, decay = group["lr"], 1.0 - group["lr"] * group["weight_decay"]
            if not self.coordinatewise:
                signs = [(seed, float((g > 0) - (g < 0))) for seed, g in estimates]
                self.apply(group, signs, coef=-lr / n, decay=decay)
                continue
            grad = [(seed, g / n) for seed, g in estimates]
            for e in self.trainable(group):
                if self.active(e):
                    self.add_(e, self.direction_tensor(e, grad).sign_().mul_(-lr), decay=decay)
        self.finish_step(sum(g for _, g in estimates) / n)
        return torch.tensor(loss)
