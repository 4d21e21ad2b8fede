"""MeZO twin (Malladi et al., arXiv 2305.17333): ZO-SGD on the two-point SPSA estimate.

    ĝ = (1/n) Σ_j g_j z_j,   g_j = (L(θ + εz_j) − L(θ − εz_j)) / 2ε
    θ ← θ − lr·(ĝ + λθ)

Tolerance rtol=1e-5, atol=1e-6: the losses, and so g, are bit-identical to the engine's (the
perturbed weights are the same fp32 sums); only the update rounds differently (lr·g·z here,
(z·g)·(−lr) fused per chunk there), about one ulp (6e-8 relative) per step, and 20 steps of the
tiny model's dynamics amplify that by well under 10×.
"""

from __future__ import annotations

import torch

from reference.twin import Twin

METHOD = "mezo"
TOLERANCE = dict(rtol=1e-5, atol=3e-7)


class Reference(Twin):
    def __init__(self, named_params, lr: float = 1e-6, eps: float = 1e-3, weight_decay: float = 0.0, **common):
        super().__init__(named_params, **common)
        self.lr, self.eps, self.weight_decay = lr, eps, weight_decay

    def direction(self, seed: int, name: str) -> torch.Tensor:
        """The direction of parameter ``name`` for ``seed``: dense z (samplers override this)."""
        return self.z(seed, name)

    def directions(self) -> list[dict[str, torch.Tensor]]:
        """One {name: direction} per direction of the step."""
        return [{n: self.direction(s, n) for n in self.params} for s in self.direction_seeds(self.directions_now())]

    @torch.no_grad()
    def step(self, closure) -> float:
        grad, gs, loss = self.spsa(closure, self.eps, self.directions())
        for n, g in grad.items():
            p = self.params[n]
            p.sub_(self.lr * (g + self.weight_decay * p))
        self.finish(sum(gs) / len(gs))
        return loss
