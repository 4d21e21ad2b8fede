"""BlockZO = MeZO with a separate two-point estimate for each layer block (a preset).

Block-wise ZO of ZO-Bench: Zhang et al., "Revisiting Zeroth-Order Optimization for
Memory-Efficient LLM Fine-Tuning: A Benchmark" (arXiv 2402.11592, ICML 2024; option
``module_wise_perturbation``), and with one block per step, MeZO-BCD (block-coordinate descent,
arXiv 2501.19099). The blocks of a step are the sampler ``zotune.samplers.Blocks`` (all blocks, or
k per step in cyclic or random order); each is its own subset, so MeZO's rule gives, per visited
block b, g_b = (L(θ + ε z_b) − L(θ − ε z_b)) / (2ε) with only b perturbed and
θ_b ← θ_b − lr·(g_b·z_b + λ·θ_b).

Difference from ZO-Bench's code: it updates block b right after g_b is known (Gauss-Seidel), so
later blocks are estimated at the partly updated point. Here no weight is written before every
loss of the step is known and finite (exception safety), so all blocks are estimated at the same
θ and updated together (Jacobi). For small lr the two agree to first order.

Forward passes per step: 2 × (blocks visited) × n (``num_directions=n`` per block).
State memory: 0 × params. The step returns the mean of all perturbed losses.
Defaults: all blocks, lr 1e-6 and ε 1e-3 (MeZO's full-parameter setting; ZO-Bench's README
example uses lr 1e-8 with block-wise ZO-SGD on OPT-1.3B in fp16).
"""

from zotune.optim.base import fixed_sampler
from zotune.optim.mezo import MeZO
from zotune.optim.registry import register
from zotune.samplers import Blocks


@register("block-zo")
class BlockZO(MeZO):
    """Block-wise ZO-SGD: ``blocks_per_step`` (None = every block each step) and ``order``
    ("cyclic" or "random"); the rest as MeZO."""

    def __init__(self, params, lr: float = 1e-6, eps: float = 1e-3, weight_decay: float = 0.0,
                 blocks_per_step: int | None = None, order: str = "cyclic", **engine):
        sampler = Blocks(blocks_per_step, order)
        super().__init__(params, lr, eps, weight_decay, **fixed_sampler(engine, sampler, "BlockZO"))
