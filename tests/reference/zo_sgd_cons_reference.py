"""ZO-SGD-Cons twin (ZO-Bench, arXiv 2402.11592): take the ZO-SGD step only if it lowers the
batch loss, else try its mirror image, else stay.

    ℓ₀ = L(θ);  ĝ as MeZO;  ℓ₋ = L(θ − lr·ĝ),  ℓ₊ = L(θ + lr·ĝ)
    θ ← the candidate of smallest finite loss among θ, θ − lr·ĝ, θ + lr·ĝ (ties: that order)

Returns the kept candidate's loss; ``last_choice`` is 0, −1 or +1.
Tolerance rtol=1e-5, atol=1e-6: every loss is computed at bit-identical weights while the
trajectories agree; the written step rounds like MeZO's. A near tie between candidates could flip
the choice and fail the test: that would be reported, not tolerated.
"""

from __future__ import annotations

import math

import torch

from reference.mezo_reference import Reference as MeZOReference

METHOD = "zo-sgd-cons"
TOLERANCE = dict(rtol=1e-5, atol=3e-7)


class Reference(MeZOReference):
    def __init__(self, named_params, lr: float = 1e-6, eps: float = 1e-3, weight_decay: float = 0.0, **common):
        super().__init__(named_params, lr=lr, eps=eps, weight_decay=weight_decay, **common)
        self.last_choice = 0

    @torch.no_grad()
    def step(self, closure) -> float:
        l0 = float(closure())
        grad, gs, _ = self.spsa(closure, self.eps, self.directions())
        candidates = [(l0, 0), (self.loss_at(closure, grad, -self.lr), -1), (self.loss_at(closure, grad, self.lr), 1)]
        kept, self.last_choice = min(((l, c) for l, c in candidates if math.isfinite(l)), key=lambda lc: lc[0])
        for name, p in self.params.items():
            p.add_(grad[name], alpha=self.last_choice * self.lr)
        self.finish(sum(gs) / len(gs))
        return kept
