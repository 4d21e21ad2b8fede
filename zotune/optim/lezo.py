"""LeZO = MeZO that perturbs and updates a random subset of layers each step (a preset).

Wang et al., "Simultaneous Computation and Memory Efficient Zeroth-Order Optimizer for Fine-Tuning
Large Language Models" (arXiv 2410.09823). The subsets are the sampler
``zotune.samplers.LayerSubset`` (max(1, round((1 − ρ)·L)) of the L layer blocks per step, from the
step seed); the rule is MeZO's on the chosen blocks. Unchosen blocks are neither perturbed nor
updated, so their perturbation and update cost (over half of a MeZO step in the paper's profile)
is skipped. ``opt.sampler.labels(opt.current_step())`` names the blocks of the next step.

Forward passes per step: 2 (2n with ``num_directions=n``; one subset per step for all n).
State memory: 0 × params (the subset is re-derived from the step seed).
Defaults: ρ = ``sparsity`` = 0.75 is an assumption (the paper's value was not found); lr 1e-6 and
ε 1e-3 follow MeZO's full-parameter setting.
"""

from zotune.optim.base import fixed_sampler
from zotune.optim.mezo import MeZO
from zotune.optim.registry import register
from zotune.samplers import LayerSubset


@register("lezo")
class LeZO(MeZO):
    """MeZO restricted each step to a random subset of layer blocks: ``sparsity`` ρ ∈ [0, 1), the
    fraction of blocks left out each step (at least one is chosen); the rest as MeZO."""

    def __init__(self, params, lr: float = 1e-6, eps: float = 1e-3, weight_decay: float = 0.0,
                 sparsity: float = 0.75, **engine):
        sampler = LayerSubset(sparsity)
        super().__init__(params, lr, eps, weight_decay, **fixed_sampler(engine, sampler, "LeZO"))
