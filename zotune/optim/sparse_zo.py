"""SparseZO = MeZO along a dense draw times a random coordinate mask resampled every k steps (a
preset).

The "gradient sparsity" extension of ZO-Bench: Zhang et al., "Revisiting Zeroth-Order
Optimization for Memory-Efficient LLM Fine-Tuning: A Benchmark" (arXiv 2402.11592, ICML 2024;
code: github.com/ZO-Bench/ZO-LLM, options ``gradient_sparsity`` and
``sparse_gradient_resample_steps``). The draws are the sampler ``zotune.samplers.SparseMask``
(z' = M ⊙ z, M Bernoulli(p) per coordinate); the rule is MeZO's. Masked-out coordinates are
neither perturbed nor moved by g (weight decay, if set, still shrinks every coordinate).

Forward passes per step: 2 (2n with ``num_directions=n``; one mask per step for all n).
State memory: 0 × params (the mask is re-derived from its seed).
Defaults: density p = 0.8 and k = 1 follow ZO-Bench's sweep (gradient_sparsity 0.2, read here as
the fraction of coordinates zeroed, an assumption) and its default resample interval; lr 1e-6 and
ε 1e-3 follow MeZO's full-parameter setting.
"""

from zotune.optim.base import fixed_sampler
from zotune.optim.mezo import MeZO
from zotune.optim.registry import register
from zotune.samplers import SparseMask


@register("sparse-zo")
class SparseZO(MeZO):
    """MeZO with a random sparse mask on the draw: ``density`` p ∈ (0, 1] of coordinates kept, a
    new mask every ``resample_every`` steps; the rest as MeZO."""

    def __init__(self, params, lr: float = 1e-6, eps: float = 1e-3, weight_decay: float = 0.0,
                 density: float = 0.8, resample_every: int = 1, **engine):
        sampler = SparseMask(density, resample_every)
        super().__init__(params, lr, eps, weight_decay, **fixed_sampler(engine, sampler, "SparseZO"))
