"""ZO-SGD-MMT: heavy-ball momentum on the two-point estimate.

Zhang et al., "Revisiting Zeroth-Order Optimization for Memory-Efficient LLM Fine-Tuning: A
Benchmark" (ZO-Bench), ICML 2024 (arXiv 2402.11592); the benchmark's code hands ĝ to
``torch.optim.SGD(momentum=0.9)``, whose rule (no dampening, coupled L2 decay) is kept here:

    ĝ = g·z,  g = (L(θ + εz) − L(θ − εz)) / (2ε)     # two forward passes
    m ← μ·m + ĝ + λ·θ
    θ ← θ − lr·m

Why: averaging the one-direction estimates over ~1/(1−μ) steps lowers their variance; the
price is the buffer, which cannot be regenerated from seeds. Note the effective step is about
lr/(1−μ), so lr must be ~10× smaller than MeZO's for μ = 0.9.
With ``num_directions=n``, ĝ = (1/n) Σ g_j z_j (2n forward passes).
Forward passes per step: 2 (2n). State: 1× params (the fp32 momentum buffer, 4 bytes/element,
also for half-precision weights so small ZO estimates are not rounded away).
Defaults: μ = 0.9 (ZO-Bench's code); lr = 1e-6 and ε = 1e-3 follow MeZO's full-parameter setting
(an assumption: we found no ZO-SGD-MMT sweep in the notes); weight decay 0.
"""

from __future__ import annotations

import torch

from zotune.optim.base import ZOOptimizer, check_closure, check_hparams
from zotune.optim.registry import register


def momentum_update(m: torch.Tensor, g_hat: torch.Tensor, theta: torch.Tensor, lr: float, momentum: float,
                    weight_decay: float) -> torch.Tensor:
    """The rule (torch SGD's, no dampening): m ← μ·m + ĝ + λ·θ (m updated in place); returns the
    delta −lr·m."""
    m.mul_(momentum).add_(g_hat)
    if weight_decay:
        m.add_(theta, alpha=weight_decay)
    return m * -lr


@register("zo-sgd-momentum")
class ZOSGDMomentum(ZOOptimizer):
    """ZO-SGD with heavy-ball momentum. ``loss = opt.step(closure)``.

    The returned loss is the mean of the perturbed losses, an O(ε²) estimate of L(θ).
    """

    def __init__(self, params, lr: float = 1e-6, eps: float = 1e-3, momentum: float = 0.9,
                 weight_decay: float = 0.0, **engine):
        check_hparams(lr, eps, weight_decay)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        super().__init__(params, dict(lr=lr, eps=eps, momentum=momentum, weight_decay=weight_decay), **engine)

    @torch.no_grad()
    def step(self, closure):
        check_closure(self, closure)
        est = self.estimate(closure, self.shared_eps())
        for group, e, part in self.estimated(est):
            m = self.buffer(e, "momentum_buffer")
            theta = self.state[e.param].get("master", e.param).float()  # the fp32 weights
            g_hat = self.engine.tensor(e, part.mean())
            self.engine.write(e, momentum_update(m, g_hat, theta, group["lr"], group["momentum"],
                                                 group["weight_decay"]))
        self.finish_step(est.projected)
        return torch.tensor(est.loss)
