"""ZO-SGD-MMT twin (ZO-Bench, arXiv 2402.11592): heavy-ball momentum as torch.optim.SGD has it
(no dampening, L2 weight decay added to the estimate).

    m ← μ·m + ĝ + λ·θ,   θ ← θ − lr·m           (m starts at 0, fp32)

Tolerance rtol=1e-5, atol=1e-6: losses and g are bit-identical to the engine's; m and θ round
differently by about one ulp per step. State compared: ``momentum_buffer``.
"""

from __future__ import annotations

import torch

from reference.mezo_reference import Reference as MeZOReference

METHOD = "zo-sgd-momentum"
TOLERANCE = dict(rtol=1e-5, atol=3e-7)


class Reference(MeZOReference):
    def __init__(self, named_params, lr: float = 1e-6, eps: float = 1e-3, momentum: float = 0.9,
                 weight_decay: float = 0.0, **common):
        super().__init__(named_params, lr=lr, eps=eps, weight_decay=weight_decay, **common)
        self.momentum = momentum

    @torch.no_grad()
    def step(self, closure) -> float:
        grad, gs, loss = self.spsa(closure, self.eps, self.directions())
        for name, p in self.params.items():
            st = self.state[name]
            m = st.setdefault("momentum_buffer", torch.zeros_like(p))
            m.copy_(self.momentum * m + grad[name] + self.weight_decay * p)
            p.sub_(self.lr * m)
        self.finish(sum(gs) / len(gs))
        return loss
