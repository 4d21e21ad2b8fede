"""FZOO twin (ICLR 2026; the authors' trainer DKmiyan/FZOO): N one-sided queries against L(θ), the
step divided by the population standard deviation of the N losses.

    L₀ = L(θ),  L_j = L(θ + ε u_j)   (u_j Rademacher by default)
    σ  = std(L_1..L_N, ddof 0)
    θ ← θ − lr·((1/(Nσ)) Σ_j (L_j − L₀) u_j + λθ)      (σ = 0: no step along the u_j)
Returns L₀; the projected gradient is the mean of (L_j − L₀)/ε.
Tolerance rtol=1e-5, atol=3e-7: the losses are bit-identical; the engine forms (L_j − L₀)/σ as
g_j/std(g) with g_j = (L_j − L₀)/ε (ε cancels), which rounds differently by an ulp or two.
"""

from __future__ import annotations

import torch

from reference.twin import Twin

METHOD = "fzoo"
TOLERANCE = dict(rtol=1e-5, atol=3e-7)


class Reference(Twin):
    def __init__(self, named_params, lr: float = 1e-5, eps: float = 1e-3, weight_decay: float = 0.0,
                 num_directions: int = 8, noise: str = "rademacher", **common):
        super().__init__(named_params, num_directions=num_directions, noise=noise, **common)
        self.lr, self.eps, self.weight_decay = lr, eps, weight_decay

    @torch.no_grad()
    def step(self, closure) -> float:
        l0 = float(closure())
        seeds = self.direction_seeds(max(2, self.directions_now()))
        us = [{n: self.z(s, n) for n in self.params} for s in seeds]
        losses = [self.loss_at(closure, u, self.eps) for u in us]
        sigma = torch.tensor(losses, dtype=torch.float64).std(unbiased=False).item()
        n = len(us)
        for name, p in self.params.items():
            move = sum((lj - l0) * u[name] for lj, u in zip(losses, us)) / (n * sigma) if sigma > 0 else 0.0
            p.sub_(self.lr * (move + self.weight_decay * p))
        self.finish(sum((lj - l0) / self.eps for lj in losses) / n)
        return l0
