"""Direction samplers: which random vector each parameter moves along, and which parameters a
step touches. Any sampler combines with any method (``--opt sampler=NAME`` or ``sampler=`` in
Python); SubZero, LOZO, LeZO, SparseZO, Sparse-MeZO and BlockZO are MeZO with one of these.

| name       | class         | directions                                              |
|------------|---------------|---------------------------------------------------------|
| dense      | Sampler       | the dense stream of the noise kind (Gaussian/Rademacher) |
| subspace   | Subspace      | SubZero's √(mn)/r·U Z₀ Vᵀ, U, V refreshed every F steps |
| projected  | Projected     | ZO-Muon's P·u, P (m×r) refreshed every K steps          |
| lowrank    | LowRank       | LOZO's U Vᵀ, V kept for ν steps                         |
| sparse     | SparseMask    | a Bernoulli(p) coordinate mask on the dense draw        |
| magnitude  | MagnitudeMask | Sparse-MeZO: only the smallest-magnitude weights         |
| layers     | LayerSubset   | LeZO: a random subset of layer blocks per step           |
| blocks     | Blocks        | BlockZO: each visited layer block gets its own estimate  |

Each sampler registers itself in its own file (one ``@register_sampler`` line).
"""

from zotune.samplers.base import SAMPLERS, Sampler, make_sampler, register_sampler
from zotune.samplers.layers import Blocks, LayerSubset, block_label, layer_blocks
from zotune.samplers.low_rank import LowRank, Projected, Subspace, low_rank_shape
from zotune.samplers.sparse import MagnitudeMask, SparseMask

__all__ = ["SAMPLERS", "Blocks", "LayerSubset", "LowRank", "MagnitudeMask", "Projected", "Sampler", "SparseMask",
           "Subspace", "block_label", "layer_blocks", "low_rank_shape", "make_sampler", "register_sampler"]
