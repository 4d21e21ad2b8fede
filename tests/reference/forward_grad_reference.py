"""Forward-Grad twin (Baydin et al., arXiv 2202.08587): SGD along v with the exact directional
derivative j = ∇L(θ)·v.

    (L, j_k) = (L(θ), ⟨∇L(θ), v_k⟩)  for n seeded directions v_k
    θ ← (1 − lr·λ)·θ − lr·(1/n) Σ_k j_k v_k

The engine gets j from one forward pass in forward-mode AD; the twin takes the textbook long way,
a backward pass for ∇L and a dot product, so the two share nothing but the rule and the noise.
Returns L(θ). ``eps`` is not taken (the rule has no smoothing radius).
Tolerance rtol=1e-4, atol=1e-6: forward- and reverse-mode AD sum the same products in different
orders, so j agrees to ~1e-6 relative, not bit for bit; that enters θ through lr·j·v.
"""

from __future__ import annotations

import torch

from reference.twin import Twin

METHOD = "forward-grad"
TOLERANCE = dict(rtol=1e-4, atol=3e-7)


class Reference(Twin):
    def __init__(self, named_params, lr: float = 1e-6, weight_decay: float = 0.0, **common):
        super().__init__(named_params, **common)
        self.lr, self.weight_decay = lr, weight_decay

    def step(self, closure) -> float:
        names = list(self.params)
        with torch.enable_grad():
            loss = closure()
            grads = dict(zip(names, torch.autograd.grad(loss, [self.params[n] for n in names])))
        seeds = self.direction_seeds(self.directions_now())
        vs = [{n: self.z(s, n) for n in names} for s in seeds]
        js = [sum(float((grads[n] * v[n]).sum()) for n in names) for v in vs]
        with torch.no_grad():
            for n, p in self.params.items():
                step = sum(j / len(js) * v[n] for j, v in zip(js, vs))
                p.mul_(1 - self.lr * self.weight_decay).sub_(self.lr * step)
        self.finish(sum(js) / len(js))
        return float(loss.detach())
