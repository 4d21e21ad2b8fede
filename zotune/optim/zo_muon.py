"""ZO-Muon: one-sided queries in a random left subspace, the update orthogonalised by Newton–Schulz.

OPTML-Group, "ZO-Muon" (arXiv 2602.17155); rule as in the authors' trainer (OPTML-Group/ZO-Muon,
``llm/LowDimTrainer.py``, optimizer "muon" with multiple samples). Per step, for each matrix
W ∈ R^{m×n} (shape[0] × rest) with r < min(m, n), with P ∈ R^{m×r} orthonormal, redrawn every K
steps (``zotune.samplers.Projected``), and N draws u_i ∈ R^{r×n} from the step seed:

    L₀ = L(θ),   g_i = (L(θ + ε·P u_i) − L₀) / ε      # N + 1 forward passes, all tensors at once
    Ĝ  = (1/N) Σ_i g_i u_i                            # r×n: the estimate is P·Ĝ
    W ← (1 − lr·λ)·W − lr · P·NS(Ĝ)                   # P·NS(Ĝ) has r singular values ≈ 1

Other tensors (vectors, and matrices with min(m, n) ≤ r) take dense draws and MeZO's rule with
the forward difference: θ ← (1 − lr_d·λ)·θ − lr_d·(1/N) Σ_i g_i z_i, lr_d = ``dense_lr``.
Why: the estimate's scale and spread no longer set the matrices' step (Muon's spectral step moves
every direction of the subspace equally), and with r ≪ m the queries explore r·n instead of m·n
dimensions; the paper reports MeZO's SST-2 accuracy with 24.7% of MeZO's queries.
NS: ``zotune.geometry.orthogonalise_many``: Muon's 5 quintic steps (bf16 where native, ``ns_dtype``)
followed by 2 fp32 cubic polishing steps that bring the singular values to ≈ 1 (the authors' 5
quintic steps alone leave them in ≈ [0.7, 1.2]); same-shaped cores are batched.

Forward passes per step: N + 1 (N = ``num_directions``). State: none kept by the optimizer (the
draws' coefficients u_i are regenerated from their seeds; the authors store them); the sampler
caches P for at most two periods (Σ m·r fp32 numbers per matrix, ``sampler.cache_bytes()``).
Defaults: the authors' OPT-13B recipe: lr 1e-2, ε 1e-3, rank 64, K = 100, N = 4; the dense tensors'
lr 1e-7 is the authors' fixed value for 1-D parameters. The returned loss is L₀.
"""

from __future__ import annotations

import torch

from zotune.geometry import orthogonalise_many
from zotune.optim.base import ZOOptimizer, check_closure, check_hparams, fixed_sampler
from zotune.optim.mezo import sgd_update
from zotune.optim.registry import register
from zotune.samplers import Projected

NS_DTYPES = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16}


def muon_update(basis: torch.Tensor, polar: torch.Tensor, lr: float) -> torch.Tensor:
    """The rule for one matrix: −lr·P·NS(Ĝ), from P (m×r) and NS(Ĝ) (r×n)."""
    return (basis @ polar).mul_(-lr)


@register("zo-muon")
class ZOMuon(ZOOptimizer):
    """ZO-Muon. ``loss = opt.step(closure)`` returns L(θ). ``rank`` r and ``refresh_every`` K set
    the projection; ``dense_lr`` is the step size of the tensors without one."""

    @property
    def forward_passes(self) -> int:
        return 1 + self.directions_now() * len(self.engine.subsets())

    def __init__(self, params, lr: float = 1e-2, eps: float = 1e-3, weight_decay: float = 0.0,
                 dense_lr: float = 1e-7, rank: int = 64, refresh_every: int = 100, num_directions: int = 4,
                 ns_dtype: str = "auto", **engine):
        check_hparams(lr, eps, weight_decay)
        check_hparams(lr=dense_lr)
        if ns_dtype not in NS_DTYPES:
            raise ValueError(f"ns_dtype must be one of {sorted(NS_DTYPES)}, got {ns_dtype!r}")
        self.ns_dtype = NS_DTYPES[ns_dtype]
        sampler = Projected(rank, refresh_every)
        super().__init__(params, dict(lr=lr, eps=eps, weight_decay=weight_decay, dense_lr=dense_lr),
                         num_directions=num_directions, **fixed_sampler(engine, sampler, "ZOMuon"))

    @torch.no_grad()
    def step(self, closure):
        check_closure(self, closure)
        est = self.engine.one_sided_spsa(closure, self.shared_eps(), self.directions_now())
        t = self.current_step()
        pending = []  # (group, parameter, P, Ĝ): orthogonalised together, then written
        for group, e, part in self.estimated(est):
            basis = self.sampler.basis(e, t)
            if basis is None:
                self.engine.write_along(e, *sgd_update(part, group["dense_lr"], group["weight_decay"]))
            else:
                pending.append((group, e, basis, self.sampler.core(e, part.mean(), t)))
        polars = orthogonalise_many([core for *_, core in pending], dtype=self.ns_dtype)
        for (group, e, basis, _), polar in zip(pending, polars):
            lr = group["lr"]
            self.engine.write(e, muon_update(basis, polar, lr).view_as(e.param), decay=1.0 - lr * group["weight_decay"])
        self.finish_step(est.projected)
        return torch.tensor(est.loss)
