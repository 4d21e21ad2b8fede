"""SubZero = MeZO with low-rank draws in random subspaces that change every F steps (a preset).

Yu et al., "SubZero: Random Subspace Zeroth-Order Optimization for Memory-Efficient LLM
Fine-Tuning" (arXiv 2410.08989; code: github.com/zimingyy/SubZero). The draws are the sampler
``zotune.samplers.Subspace`` (Z = √(mn)/r · U Z₀ Vᵀ per matrix, U, V refreshed every F steps,
dense draws for vectors and thin matrices); the rule is MeZO's. The same draws work with any method:
``--optimizer zo-adam --opt 'sampler={name: subspace, rank: 24}'``.

Forward passes per step: 2 (2n with ``num_directions=n``). State memory: 0 × params (U, V are
regenerated from their seed; the reference code stores them, Σ r(m+n) numbers).
Defaults: rank 24 and F = 1000 from the README example (OPT-1.3B, prompt tuning; lr 1e-3,
ε 1e-2 there); lr 1e-6 and ε 1e-3 follow MeZO's full-parameter setting; the paper's full-FT
values were not found (assumption).
"""

from zotune.optim.base import fixed_sampler
from zotune.optim.mezo import MeZO
from zotune.optim.registry import register
from zotune.samplers import Subspace


@register("subzero")
class SubZero(MeZO):
    """MeZO with SubZero's subspace draws: ``rank`` r per matrix, new subspaces every
    ``refresh_every`` steps; the rest as MeZO."""

    def __init__(self, params, lr: float = 1e-6, eps: float = 1e-3, weight_decay: float = 0.0,
                 rank: int = 24, refresh_every: int = 1000, **engine):
        sampler = Subspace(rank, refresh_every)
        super().__init__(params, lr, eps, weight_decay, **fixed_sampler(engine, sampler, "SubZero"))
