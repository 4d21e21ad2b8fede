"""LOZO = MeZO with low-rank draws U Vᵀ whose right factor is kept for ν steps (a preset).

Chen et al., "Enhancing Zeroth-order Fine-tuning for Language Models with Low-rank Structures"
(arXiv 2410.07698; code: github.com/optsuite/LOZO). The draws are the sampler
``zotune.samplers.LowRank`` (Z = U Vᵀ per matrix, V lazy; dense draws for vectors and thin
matrices, a deviation for the latter: the reference code would confine a 1×n head to the r-dim
span of V for ν steps); the rule is MeZO's. Like the paper, Z is not rescaled (E‖UVᵀ‖² = r·mn),
so the paper's learning rates apply as given; compared with MeZO, divide lr by r.

Forward passes per step: 2 (2n with ``num_directions=n``). State memory: 0 × params (V is
regenerated from its seed; the reference code stores it, Σ n·r numbers).
Defaults: rank r = 2, ν = 50, ε = 1e-3, lr = 1e-6 from the paper's OPT-13B search ranges and
example script (r ∈ {1, 2}, ν ∈ {50, 100}, lr ∈ {1e-6, 1e-7}). LOZO-M (momentum in the factor
space) is not implemented.
"""

from zotune.optim.base import fixed_sampler
from zotune.optim.mezo import MeZO
from zotune.optim.registry import register
from zotune.samplers import LowRank


@register("lozo")
class LOZO(MeZO):
    """MeZO with LOZO's draws U Vᵀ: ``rank`` r, a new V every ``refresh_every`` steps; the rest
    as MeZO."""

    def __init__(self, params, lr: float = 1e-6, eps: float = 1e-3, weight_decay: float = 0.0,
                 rank: int = 2, refresh_every: int = 50, **engine):
        sampler = LowRank(rank, refresh_every)
        super().__init__(params, lr, eps, weight_decay, **fixed_sampler(engine, sampler, "LOZO"))
