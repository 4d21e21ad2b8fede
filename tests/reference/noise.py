"""The one door from the twins to the engine: the noise generator and the seeds' salts.

Why one module: the twins must draw exactly the numbers the engine draws (the same z for a step
seed and a parameter), but they must not depend on how the engine is organised. Every name the
twins need from ``zotune`` is imported here and nowhere else, so when the engine renames or moves
one, one line below changes. The salts are fixed numbers (the golden weights pin them); they are
imported rather than copied so that a deliberate change shows up here too.
"""

from __future__ import annotations

import torch

from zotune.rng import CounterRNG, mix, name_key
from zotune.samplers.layers import BLOCKS  # salt: BlockZO's random block order
from zotune.samplers.layers import LAYERS  # salt: LeZO's layer subset
from zotune.samplers.low_rank import LAZY  # salt: LOZO's lazy right factor V
from zotune.samplers.low_rank import PROJECTED  # salt: ZO-Muon's projection P
from zotune.samplers.low_rank import SUBSPACE  # salt: SubZero's subspace bases U, V
from zotune.samplers.sparse import MASK  # salt: SparseZO's coordinate mask

__all__ = ["BLOCKS", "LAYERS", "LAZY", "MASK", "PROJECTED", "SUBSPACE", "draw", "mix", "step_seed"]

_SOURCE = CounterRNG()


def step_seed(seed: int, step: int) -> int:
    """Seed of the directions of step ``step`` (0-based) of a run seeded with ``seed``."""
    return mix(seed, step)


def draw(seed: int, name: str, shape, kind: str = "gaussian") -> torch.Tensor:
    """The engine's noise for parameter ``name`` at ``seed``: an fp32 CPU tensor of ``shape``.
    ``kind``: "gaussian", "rademacher" or "uniform" ([0, 1))."""
    n = 1
    for s in shape:
        n *= int(s)
    return _SOURCE.draw(seed, name_key(name), 0, n, n, kind).view(tuple(shape))
