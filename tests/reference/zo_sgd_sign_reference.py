"""ZO-SGD-Sign twin (ZO-Bench, arXiv 2402.11592): MeZO's step with the estimate's sign.

    scalar rule (default):  θ ← (1 − lr·λ)·θ − lr·(1/n) Σ_j sign(g_j)·z_j
    coordinatewise:         θ ← (1 − lr·λ)·θ − lr·sign((1/n) Σ_j g_j z_j)

Tolerance rtol=1e-5, atol=1e-6: losses and g are bit-identical to the engine's, the signs are
exact, and the update rounds at most one ulp differently per step (as in MeZO's twin).
"""

from __future__ import annotations

import torch

from reference.mezo_reference import Reference as MeZOReference

METHOD = "zo-sgd-sign"
TOLERANCE = dict(rtol=1e-5, atol=3e-7)


class Reference(MeZOReference):
    def __init__(self, named_params, lr: float = 1e-4, eps: float = 1e-3, weight_decay: float = 0.0,
                 coordinatewise: bool = False, **common):
        super().__init__(named_params, lr=lr, eps=eps, weight_decay=weight_decay, **common)
        self.coordinatewise = coordinatewise

    @torch.no_grad()
    def step(self, closure) -> float:
        directions = self.directions()
        grad, gs, loss = self.spsa(closure, self.eps, directions)
        n = len(gs)
        for name, p in self.params.items():
            if self.coordinatewise:
                step = torch.sign(grad[name])
            else:
                step = sum(((g > 0) - (g < 0)) / n * z[name] for g, z in zip(gs, directions))
            p.mul_(1 - self.lr * self.weight_decay).sub_(self.lr * step)
        self.finish(sum(gs) / n)
        return loss
