"""ZO-SGD-Cons: a ZO-SGD step that is only taken when it lowers the batch loss.

Zhang et al., "Revisiting Zeroth-Order Optimization for Memory-Efficient LLM Fine-Tuning: A
Benchmark" (ZO-Bench), ICML 2024 (arXiv 2402.11592); rule as in the benchmark's code
(github.com/ZO-Bench/ZO-LLM, zo-bench/trainer.py). Per step, on one batch:

    ℓ₀ = L(θ)                                          # 1 forward pass
    g  = (L(θ + εz) − L(θ − εz)) / (2ε),  ĝ = g·z      # 2 forward passes
    ℓ₋ = L(θ − lr·ĝ),  ℓ₊ = L(θ + lr·ĝ)                # 2 forward passes
    θ ← the candidate among {θ, θ − lr·ĝ, θ + lr·ĝ} with the smallest loss

Why: the noisy estimate sometimes points uphill; checking the step (and its mirror image, which
is then likely downhill) on the same batch makes the batch loss monotone, for 2.5× MeZO's forward
passes. The reference code writes each candidate into the weights and walks back; here the two
candidates are evaluated functionally (θ is never written until the choice is made), so a
rejected step leaves θ bit-identical and an exception at any of the five passes changes nothing.
A candidate whose loss is NaN/inf is rejected; a non-finite ℓ₀ or two-point loss raises.
For fp32 weights the kept point is the compared candidate up to one rounding of the update; for
half-precision weights the candidates are evaluated rounded to nearest while the kept step is
written with the engine's stochastic rounding (or master weights), so there the guarantee holds
only in expectation.
With ``num_directions=n``, ĝ = (1/n) Σ g_j z_j (2n + 3 forward passes).
Forward passes per step: 5 (2n + 3). State: none (O(1)).
Defaults: lr = 1e-6 and ε = 1e-3, inside ZO-Bench's Cons sweep for OPT-1.3B on SST-2
(lr ∈ {1e-5, 1e-6}, ε ∈ {1e-2, 1e-3}, as recorded in our research notes).
All parameter groups share one lr (the candidates are one point each in the whole parameter
space), and weight decay is not supported (weight_decay must be 0): decaying the kept point would
move it off the candidate whose loss was compared, breaking the method's guarantee.
"""

from __future__ import annotations

import math

import torch

from zotune.engine import check_finite
from zotune.optim.base import ZOOptimizer, check_closure, check_hparams
from zotune.optim.registry import register


def conservative_choice(l0: float, l_minus: float, l_plus: float) -> tuple[float, int]:
    """The rule: keep the candidate with the lowest loss among θ (0), θ − lr·ĝ (−1), θ + lr·ĝ (+1);
    non-finite candidates are rejected, ties go to the earlier one. Returns (its loss, choice)."""
    finite = [(loss, c) for loss, c in ((l0, 0), (l_minus, -1), (l_plus, 1)) if math.isfinite(loss)]
    return min(finite, key=lambda lc: lc[0])


@register("zo-sgd-cons")
class ZOSGDConservative(ZOOptimizer):
    """Conservative ZO-SGD. ``loss = opt.step(closure)`` returns the loss of the kept point (on
    this step's batch); ``last_candidates`` holds (ℓ₀, ℓ₋, ℓ₊) and ``last_choice`` is -1 (stepped
    along −ĝ), +1 (along +ĝ) or 0 (kept θ)."""

    @property
    def forward_passes(self) -> int:
        return super().forward_passes + 3

    def __init__(self, params, lr: float = 1e-6, eps: float = 1e-3, weight_decay: float = 0.0, **engine):
        check_hparams(lr, eps, weight_decay)
        if weight_decay != 0:
            raise ValueError("ZOSGDConservative does not support weight decay (the kept point must be the "
                             f"candidate whose loss was compared); set weight_decay=0, got {weight_decay}")
        super().__init__(params, dict(lr=lr, eps=eps, weight_decay=0.0), **engine)
        self.last_candidates = (math.nan, math.nan, math.nan)
        self.last_choice = 0

    @torch.no_grad()
    def step(self, closure):
        check_closure(self, closure)
        lr = self.param_groups[0]["lr"]
        if any(g["lr"] != lr or g["weight_decay"] != 0 for g in self.param_groups):
            raise ValueError("ZOSGDConservative uses one lr and no weight decay for all parameter groups")
        eps = self.shared_eps()
        l0 = self.engine.loss_at(closure, self.step_seed(), 0.0).item()
        check_finite(l0, step=self.zo_step + 1)
        est = self.estimate(closure, eps)

        def g_hat(e):  # ĝ of each parameter, None where this step has no estimate
            part = est.part_of(e)
            return None if part is None else part.mean()

        candidates = [self.engine.loss_at(closure, g_hat, -lr), self.engine.loss_at(closure, g_hat, lr)]
        l_minus, l_plus = torch.stack(candidates).tolist()
        self.last_candidates = (l0, l_minus, l_plus)
        kept, choice = conservative_choice(l0, l_minus, l_plus)
        self.last_choice = choice
        if choice:
            for _, e, part in self.estimated(est):
                self.engine.write_along(e, part.mean(), coef=choice * lr)
        self.finish_step(est.projected)
        return torch.tensor(kept)
