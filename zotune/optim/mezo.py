"""MeZO: zeroth-order SGD with the two-point SPSA estimate.

Malladi et al., "Fine-Tuning Language Models with Just Forward Passes", NeurIPS 2023
(arXiv 2305.17333). Per step, with z drawn from the step seed by the sampler (dense N(0, I) by
default):

    g = (L(θ + εz) − L(θ − εz)) / (2ε)          # two forward passes, a scalar
    θ ← θ − lr · (g·z + λ·θ)                     # one fused pass, z regenerated from the seed

With ``num_directions=n`` (n-SPSA) g·z is averaged over n seeded draws (2n forward passes); with a
sampler that gives several parameter subsets per step (BlockZO's blocks), each subset has its own
g. Forward passes per step: 2 (2n). State: none beyond the step counter (O(1) memory), plus an
fp32 master copy only if ``master_weights=True`` for half-precision parameters.
Defaults follow the paper's full-parameter setting (ε = 1e-3; lr 1e-6..1e-7 for OPT-13B, larger
for small models).
"""

from __future__ import annotations

import torch

from zotune.engine import Part
from zotune.optim.base import ZOOptimizer, check_closure, check_hparams
from zotune.optim.registry import register


def sgd_update(part: Part, lr: float, weight_decay: float) -> tuple[tuple, float, float]:
    """The rule: θ ← (1 − lr·λ)·θ − (lr/n)·Σ_j g_j z_j, as (direction, coef, decay) for the
    engine's streamed write θ ← decay·θ + coef·d (d is never materialised)."""
    return part.terms, -lr / part.n, 1.0 - lr * weight_decay


@register("mezo")
class MeZO(ZOOptimizer):
    """ZO-SGD with the central two-point estimate. ``loss = opt.step(closure)``.

    The returned loss is the mean of the perturbed losses, an O(ε²) estimate of L(θ).
    """

    def __init__(self, params, lr: float = 1e-6, eps: float = 1e-3, weight_decay: float = 0.0, **engine):
        check_hparams(lr, eps, weight_decay)
        super().__init__(params, dict(lr=lr, eps=eps, weight_decay=weight_decay), **engine)

    @torch.no_grad()
    def step(self, closure):
        check_closure(self, closure)
        est = self.estimate(closure, self.shared_eps())
        for group, e, part in self.estimated(est):
            self.engine.write_along(e, *sgd_update(part, group["lr"], group["weight_decay"]))
        self.finish_step(est.projected)
        return torch.tensor(est.loss)
