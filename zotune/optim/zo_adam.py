"""ZO-Adam: Adam's moments on the two-point estimate, with decoupled (AdamW) weight decay.

Zhang et al., "Revisiting Zeroth-Order Optimization for Memory-Efficient LLM Fine-Tuning: A
Benchmark" (ZO-Bench), ICML 2024 (arXiv 2402.11592); the benchmark's code hands ĝ to
``torch.optim.Adam``. Per step t (counted per parameter), with z drawn from the step seed:

    ĝ = g·z,  g = (L(θ + εz) − L(θ − εz)) / (2ε)     # two forward passes
    m ← β₁m + (1 − β₁)ĝ,   v ← β₂v + (1 − β₂)ĝ²
    θ ← (1 − lr·λ)·θ − lr · (m / (1 − β₁ᵗ)) / (√(v / (1 − β₂ᵗ)) + δ)

Why: the per-coordinate scale makes the step size insensitive to the scale of g (which varies with
the model, the loss and ε), at the cost of two buffers. Weight decay is decoupled (AdamW) rather
than torch Adam's L2 term that ZO-Bench used, so λ does not get divided by √v: a deliberate
difference, equal to ZO-Bench when λ = 0 (its default).
With ``num_directions=n``, ĝ = (1/n) Σ g_j z_j (2n forward passes).
Forward passes per step: 2 (2n). State: 2× params (fp32 m and v, 8 bytes/element, also for
half-precision weights), plus an integer step count per parameter.
Defaults: β = (0.9, 0.999) and δ = 1e-8 (torch Adam, as in ZO-Bench's code); lr = 1e-5 and
ε = 1e-3 from ZO-Bench's ZO-Adam sweep for OPT-1.3B on SST-2 (lr ∈ {1e-4, 1e-5},
ε ∈ {1e-3, 1e-4}, as recorded in our research notes); weight decay 0.
"""

from __future__ import annotations

import torch

from zotune.optim.base import ZOOptimizer, check_closure, check_hparams
from zotune.optim.registry import register


def adam_update(m: torch.Tensor, v: torch.Tensor, g_hat: torch.Tensor, t: int, lr: float,
                betas: tuple[float, float], adam_eps: float) -> torch.Tensor:
    """The rule: Adam's moments m, v updated in place at step t (1-based); returns the delta
    −lr·m̂/(√v̂ + δ), written into ``g_hat``'s memory. Weight decay is the write's decay."""
    b1, b2 = betas
    m.mul_(b1).add_(g_hat, alpha=1 - b1)
    v.mul_(b2).addcmul_(g_hat, g_hat, value=1 - b2)
    denom = (v / (1 - b2 ** t)).sqrt_().add_(adam_eps)
    return torch.div(m, denom, out=g_hat).mul_(-lr / (1 - b1 ** t))


@register("zo-adam")
class ZOAdam(ZOOptimizer):
    """Adam on the ZO estimate. ``loss = opt.step(closure)``; ``adam_eps`` is Adam's δ (``eps`` is
    the perturbation scale, as in every zotune ZO method)."""

    def __init__(self, params, lr: float = 1e-5, eps: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 adam_eps: float = 1e-8, weight_decay: float = 0.0, **engine):
        check_hparams(lr, eps, weight_decay)
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}")
        if adam_eps <= 0:
            raise ValueError(f"adam_eps must be > 0, got {adam_eps}")
        defaults = dict(lr=lr, eps=eps, betas=tuple(map(float, betas)), adam_eps=adam_eps, weight_decay=weight_decay)
        super().__init__(params, defaults, **engine)

    @torch.no_grad()
    def step(self, closure):
        check_closure(self, closure)
        est = self.estimate(closure, self.shared_eps())
        for group, e, part in self.estimated(est):
            state = self.state[e.param]
            state["step"] = state.get("step", 0) + 1  # a Python int: not a tensor, so not counted as memory
            m, v = self.buffer(e, "exp_avg"), self.buffer(e, "exp_avg_sq")
            lr = group["lr"]
            delta = adam_update(m, v, self.engine.tensor(e, part.mean()), state["step"], lr, group["betas"],
                                group["adam_eps"])
            self.engine.write(e, delta, decay=1.0 - lr * group["weight_decay"])
        self.finish_step(est.projected)
        return torch.tensor(est.loss)
