"""ZO-Adam twin (ZO-Bench, arXiv 2402.11592): Adam's moments on the two-point estimate, with
decoupled (AdamW) weight decay, as torch.optim.AdamW writes it.

    m ← β₁m + (1 − β₁)ĝ,   v ← β₂v + (1 − β₂)ĝ²,   t ← t + 1
    θ ← (1 − lr·λ)·θ − lr · m̂ / (√v̂ + δ),   m̂ = m/(1 − β₁ᵗ),  v̂ = v/(1 − β₂ᵗ)

Tolerance rtol=1e-4, atol=1e-6: losses and g are bit-identical to the engine's, but Adam divides
by √v̂, which for coordinates where ĝ is tiny turns a one-ulp difference in m or v into a larger
relative one in the step; 1e-4 relative still catches any error in the rule (a wrong bias
correction or β changes the first step by > 1e-2). State compared: ``exp_avg``, ``exp_avg_sq``.
"""

from __future__ import annotations

import torch

from reference.mezo_reference import Reference as MeZOReference

METHOD = "zo-adam"
TOLERANCE = dict(rtol=1e-4, atol=3e-7)


class Reference(MeZOReference):
    def __init__(self, named_params, lr: float = 1e-5, eps: float = 1e-3, betas=(0.9, 0.999),
                 adam_eps: float = 1e-8, weight_decay: float = 0.0, **common):
        super().__init__(named_params, lr=lr, eps=eps, weight_decay=weight_decay, **common)
        self.betas, self.adam_eps = betas, adam_eps

    @torch.no_grad()
    def step(self, closure) -> float:
        grad, gs, loss = self.spsa(closure, self.eps, self.directions())
        b1, b2 = self.betas
        k = self.t + 1  # every parameter is updated every step, so its own count is the step's
        for name, p in self.params.items():
            st = self.state[name]
            m = st.setdefault("exp_avg", torch.zeros_like(p))
            v = st.setdefault("exp_avg_sq", torch.zeros_like(p))
            g = grad[name]
            m.copy_(b1 * m + (1 - b1) * g)
            v.copy_(b2 * v + (1 - b2) * g * g)
            m_hat, v_hat = m / (1 - b1 ** k), v / (1 - b2 ** k)
            p.mul_(1 - self.lr * self.weight_decay).sub_(self.lr * m_hat / (v_hat.sqrt() + self.adam_eps))
        self.finish(sum(gs) / len(gs))
        return loss
