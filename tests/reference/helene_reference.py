"""HELENE twin (Zhao et al., arXiv 2411.10696), in the form zotune's docstring fixes (the paper's
algorithm box was not available): annealed momentum over a clipped diagonal curvature EMA.

Per step t (0-based) and parameter tensor l:
    α_t = β₁ + (1 − β₁)·exp(−t/T);      m ← β₁·m + α_t·ĝ
    h ← β₂·h + (1 − β₂)·ĝ²   when t ≡ 0 (mod k);   H = γ·h / (1 − β₂^r),  r = refreshes so far
    c_l = max(λ_floor, mean(H_l));       θ_l ← θ_l − lr·(clip(m_l / max(H_l, c_l), ±ρ) + wd·θ_l)

Tolerance rtol=1e-4, atol=1e-6: losses and g are bit-identical; the division by the curvature
amplifies one-ulp differences in m and h as Adam's does. State compared: ``m``, ``h``.
"""

from __future__ import annotations

import math

import torch

from reference.mezo_reference import Reference as MeZOReference

METHOD = "helene"
TOLERANCE = dict(rtol=1e-4, atol=3e-7)


class Reference(MeZOReference):
    def __init__(self, named_params, lr: float = 1e-6, eps: float = 1e-3, betas=(0.9, 0.99),
                 anneal_steps: float = 1000.0, hessian_interval: int = 1, gamma: float = 1.0,
                 floor: float = 1e-8, clip: float | None = 1.0, weight_decay: float = 0.0, **common):
        super().__init__(named_params, lr=lr, eps=eps, weight_decay=weight_decay, **common)
        self.betas, self.anneal_steps, self.k = betas, anneal_steps, hessian_interval
        self.gamma, self.floor, self.clip = gamma, floor, clip
        self.refreshes = 0

    @torch.no_grad()
    def step(self, closure) -> float:
        grad, gs, loss = self.spsa(closure, self.eps, self.directions())
        b1, b2 = self.betas
        alpha = b1 + (1 - b1) * math.exp(-self.t / self.anneal_steps)
        refresh = self.t % self.k == 0
        self.refreshes += refresh
        for name, p in self.params.items():
            st = self.state[name]
            m = st.setdefault("m", torch.zeros_like(p))
            h = st.setdefault("h", torch.zeros_like(p))
            g = grad[name]
            m.copy_(b1 * m + alpha * g)
            if refresh:
                h.copy_(b2 * h + (1 - b2) * g * g)
            curv = self.gamma * h / (1 - b2 ** self.refreshes)
            lowest = max(self.floor, float(curv.mean()))
            step = m / curv.clamp(min=lowest)
            if self.clip is not None:
                step = step.clamp(-self.clip, self.clip)
            p.sub_(self.lr * (step + self.weight_decay * p))
        self.finish(sum(gs) / len(gs))
        return loss
