"""MeZO: zeroth-order SGD with the two-point SPSA estimate.

Malladi et al., "Fine-Tuning Language Models with Just Forward Passes", NeurIPS 2023
(arXiv 2305.17333). Per step, with z ~ N(0, I) drawn from the step seed:

    g = (L(θ + εz) − L(θ − εz)) / (2ε)          # two forward passes, a scalar
    θ ← θ − lr · (g·z + λ·θ)                     # one fused pass, z regenerated from the seed

With ``num_directions=n`` (n-SPSA) g·z is averaged over n seeded directions (2n forward passes).
Forward passes per step: 2 (2n). State: none beyond the step counter (O(1) memory), plus an fp32
master copy only if ``master_weights=True`` for half-precision parameters.
Defaults follow the paper's full-parameter setting (ε = 1e-3; lr 1e-6..1e-7 for OPT-13B, larger
for small models).
"""

from __future__ import annotations

import torch

from zotune.optim.base import ZOOptimizer, check_hparams


class MeZO(ZOOptimizer):
    """ZO-SGD with the central two-point estimate. ``loss = opt.step(closure)``.

    The returned loss is the mean of the two perturbed losses, an O(ε²) estimate of L(θ).
    """

    def __init__(self, params, lr: float = 1e-6, eps: float = 1e-3, weight_decay: float = 0.0, **engine):
        check_hparams(lr, eps, weight_decay)
        super().__init__(params, dict(lr=lr, eps=eps, weight_decay=weight_decay), **engine)

    @torch.no_grad()
    def step(self, closure):
        if closure is None:
            raise ValueError(f"{type(self).__name__}.step needs a closure that runs a forward pass and returns the loss")
        eps = self.shared_eps()
        estimates, loss = self.spsa(closure, eps)  # [(seed_j, g_j)], n = num_directions
        n = len(estimates)
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            self.apply(group, estimates, coef=-lr / n, decay=1.0 - lr * wd)
        self.finish_step(sum(g for _, g in estimates) / n)
        return torch.tensor(loss)
