"""HELENE: SPSA with annealed momentum and a clipped diagonal curvature preconditioner.

Zhao, Li, Pan, Liang, Yang, Dou, Liu, Lu, "HELENE: Hessian Layer-wise Clipping and Gradient
Annealing for Accelerating Fine-tuning LLM with Zeroth-order Optimization" (arXiv 2411.10696,
EMNLP 2025). There is no public code; the paper's abstract names the parts (annealed A-GNB
gradients, diagonal Hessian estimate, layer-wise clipping) and a third-party write-up (the "zij"
optimizer collection) gives the momentum and EMA forms used below. The rule implemented here, per
step t and parameter tensor (layer) l:

    ĝ   = (1/n) Σ_j g_j z_j,  g_j = (L(θ+εz_j) − L(θ−εz_j)) / 2ε     # n-SPSA, 2n forward passes
    α_t = β₁ + (1 − β₁)·exp(−t/T)                                     # annealing, 1 → β₁
    m  ← β₁·m + α_t·ĝ                                                 # annealed momentum
    h  ← β₂·h + (1 − β₂)·ĝ⊙ĝ             only when t ≡ 0 (mod k)      # diagonal curvature EMA
    H   = γ·h / (1 − β₂^r)                 r = refreshes so far          # bias-corrected
    c_l = max(λ, mean(H_l))                                           # the layer's clip
    θ_l ← θ_l − lr·( m_l / max(H_l, c_l) + wd·θ_l )

Choices that are ours (assumptions where the paper could not be read):
- Curvature estimate: ĝ⊙ĝ from the step's own SPSA estimate, a Gauss-Newton-Bartlett-style
  (empirical-Fisher) diagonal that costs no extra forward pass. Because it is free, the default
  refresh interval is k = 1 (Sophia, whose GNB estimator HELENE adapts, uses k = 10 because its
  estimate costs a backward pass).
- Layer-wise clipping: each layer's diagonal is clipped from below at its mean, mean(H_l), so no
  coordinate of a layer gets a larger step than the layer's average curvature allows (ZO
  estimates of tiny curvatures are mostly noise), and at the absolute floor λ, so steps stay
  bounded (≤ lr·|m|/λ) as the gradient, and with it h, vanishes near a minimum. The paper's λ_l
  formula is unknown.
- h is bias-corrected like Adam's second moment: without it the first steps divide by
  (1 − β₂)·ĝ², a 100× too small curvature, and jump.
- m is not bias-corrected and not normalised by (1 − β₁), as in the write-up; the annealing
  weighs the first steps' gradients fully (α₀ = 1).

Forward passes per step: 2 (2n with ``num_directions=n``). State: m and h in fp32, 2 × params
(8 bytes per element), plus fp32 masters with ``master_weights=True``.
Defaults: β₁ = 0.9, β₂ = 0.99 (Sophia's), T = 1000 steps, k = 1, γ = 1, λ = 1e-8; ε = 1e-3 and
lr = 1e-6 as MeZO. All of these are assumptions; tune lr first.
"""

from __future__ import annotations

import math

import torch

from zotune.optim.base import ZOOptimizer, check_hparams

_BUFFERS = ("m", "h")


class HELENE(ZOOptimizer):
    """SPSA with annealed momentum, preconditioned by a clipped diagonal curvature EMA.
    ``loss = opt.step(closure)`` returns the mean of the 2n perturbed losses."""

    def __init__(self, params, lr: float = 1e-6, eps: float = 1e-3, betas: tuple[float, float] = (0.9, 0.99),
                 anneal_steps: float = 1000.0, hessian_interval: int = 1, gamma: float = 1.0,
                 floor: float = 1e-8, weight_decay: float = 0.0, **engine):
        check_hparams(lr, eps, weight_decay)
        if not all(0.0 <= b < 1.0 for b in betas) or len(betas) != 2:
            raise ValueError(f"betas must be two numbers in [0, 1), got {betas}")
        if anneal_steps <= 0:
            raise ValueError(f"anneal_steps must be > 0, got {anneal_steps}")
        if int(hessian_interval) != hessian_interval or hessian_interval < 1:
            raise ValueError(f"hessian_interval must be an integer >= 1, got {hessian_interval}")
        if gamma <= 0:
            raise ValueError(f"gamma must be > 0, got {gamma}")
        if floor <= 0:
            raise ValueError(f"floor must be > 0 (it bounds the step), got {floor}")
        defaults = dict(lr=lr, eps=eps, betas=tuple(betas), anneal_steps=anneal_steps,
                        hessian_interval=int(hessian_interval), gamma=gamma, floor=floor,
                        weight_decay=weight_decay)
        super().__init__(params, defaults, **engine)

    @torch.no_grad()
    def step(self, closure):
        if closure is None:
            raise ValueError("HELENE.step needs a closure that runs a forward pass and returns the loss")
        eps = self.shared_eps()
        estimates, loss = self.spsa(closure, eps)  # raises before any state or weight changes
        n = len(estimates)
        grad_dir = [(s, g / n) for s, g in estimates]
        t = self.zo_step
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            alpha = beta1 + (1.0 - beta1) * math.exp(-t / group["anneal_steps"])
            refresh = t % group["hessian_interval"] == 0
            for e in self.trainable(group):
                st = self.state[e.param]
                if not st:
                    st["m"] = torch.zeros(e.param.shape, dtype=torch.float32, device=e.param.device)
                    st["h"] = torch.zeros_like(st["m"])
                g = self.direction_tensor(e, grad_dir)
                st["m"].mul_(beta1).add_(g, alpha=alpha)
                if refresh:
                    st["h"].mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
                curv = st["h"] * (group["gamma"] / (1.0 - beta2 ** (t // group["hessian_interval"] + 1)))
                curv = torch.maximum(curv, curv.mean().clamp(min=group["floor"]))  # layer-wise clip
                delta = st["m"].div(curv).mul_(-group["lr"])
                self.add_(e, delta, decay=1.0 - group["lr"] * group["weight_decay"])
        self.finish_step(sum(g for _, g in estimates) / n)
        return torch.tensor(loss)

    def load_state_dict(self, state_dict):
        # torch casts floating state to the parameter's dtype on load; m and h must stay fp32
        saved = {i: {k: st[k] for k in _BUFFERS if k in st} for i, st in state_dict["state"].items()}
        super().load_state_dict(state_dict)
        params = [p for g in self.param_groups for p in g["params"]]
        for i, bufs in saved.items():
            p = params[int(i)]
            for k, v in bufs.items():
                self.state[p][k] = v.to(p.device, torch.float32).clone()
