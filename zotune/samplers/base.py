"""The direction sampler every method takes, and the registry of samplers by name.

A sampler answers two questions for each step (``docs/engine.md``):

- ``draw(e, seed, t)``: the random vector z(seed) of parameter ``e`` at step ``t``, materialised
  (fp32, e's shape), or None for the dense counter-based stream of the noise kind, which the
  engine regenerates chunk by chunk and never materialises;
- ``subsets(t)``: the parameter subsets of step ``t`` that each get their own estimate: ``[None]``
  (one estimate over every parameter), one subset (LeZO's layers) or several (BlockZO's blocks).
  Parameters in no subset are neither perturbed nor updated that step.

Draws must be pure functions of (run seed, step, seed, parameter key): a step regenerates the same
z for the perturbation and the update, and a resumed run draws the same directions. A sampler is
bound to one optimizer's parameters (``bind``); give each optimizer its own sampler object.
"""

from __future__ import annotations

import numbers

import torch

from zotune.engine import Step
from zotune.perturb import Perturbed
from zotune.rng import NOISE_KINDS, CounterRNG

SAMPLERS: dict[str, type[Sampler]] = {}


def register_sampler(name: str):
    """Class decorator: make a sampler selectable by name (``--opt sampler=NAME``)."""

    def add(cls):
        cls.name = name
        SAMPLERS[name] = cls
        return cls

    return add


class Sampler:
    """Dense directions: z(seed) is the stream of the noise kind on every parameter, every step.
    With ``noise="gaussian"`` this is MeZO's z ~ N(0, I); with ``"rademacher"``, ±1 entries."""

    name = "dense"

    def __init__(self) -> None:
        self.kind = "gaussian"
        self.rng = CounterRNG()
        self.params: list[Perturbed] = []

    def bind(self, params: list[Perturbed], kind: str) -> Sampler:
        """Attach to an optimizer's trainable parameters; ``kind`` is its noise kind."""
        if kind not in NOISE_KINDS:
            raise ValueError(f"unknown noise {kind!r}; choose one of {NOISE_KINDS}")
        self.params = list(params)
        self.kind = kind
        return self

    def draw(self, e: Perturbed, seed: int, t: Step) -> torch.Tensor | None:
        return None

    def factors(self, e: Perturbed, seed: int, t: Step) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(A, B) with ``draw(e, seed, t) == (A @ B.T).view_as(e.param)`` for a low-rank draw (A is m×r,
        B is n×r), so a forward can apply it as (x B) Aᵀ without building it; None otherwise."""
        return None

    def dense_draw(self, e: Perturbed, seed: int, kind: str | None = None) -> torch.Tensor:
        """The dense stream of ``e`` at ``seed`` (default: the noise kind), materialised."""
        n = e.param.numel()
        return self.rng.draw(seed, e.key, 0, n, n, kind or self.kind, device=e.param.device).view_as(e.param)

    def subsets(self, t: Step) -> list[frozenset[int] | None]:
        return [None]

    def state(self) -> dict:
        """What the draws depend on besides seeds and step (Sparse-MeZO's thresholds, fixed from the
        first weights): saved in the optimizer's ``state_dict()`` so a resumed run draws alike."""
        return {}

    def load_state(self, state: dict) -> None:
        """Restore what ``state`` returned."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


register_sampler("dense")(Sampler)


def whole_number(name: str, value, minimum: int) -> int:
    """``value`` as an int >= ``minimum``, or a ValueError: a fraction is refused, not truncated
    (``rank=2.5`` silently becoming 2 would run another method than the one asked for)."""
    ok = not isinstance(value, bool) and (isinstance(value, numbers.Integral) or (isinstance(value, float) and value.is_integer()))
    if not ok or value < minimum:
        raise ValueError(f"{name} must be a whole number >= {minimum}, got {value!r}")
    return int(value)


def make_sampler(spec=None) -> Sampler:
    """A sampler from ``spec``: None (dense), a registered name, a mapping ``{"name": NAME,
    **options}`` (what ``--opt 'sampler={name: subspace, rank: 8}'`` gives), or a Sampler."""
    if spec is None:
        return Sampler()
    if isinstance(spec, Sampler):
        return spec
    options = {}
    if isinstance(spec, dict):
        options = {k: v for k, v in spec.items() if k != "name"}
        spec = spec.get("name")
    if not isinstance(spec, str) or spec not in SAMPLERS:
        raise ValueError(f"unknown sampler {spec!r}; choose one of {sorted(SAMPLERS)} "
                         "(or a mapping {name: NAME, option: value, ...})")
    try:
        return SAMPLERS[spec](**options)
    except TypeError as err:
        raise ValueError(f"sampler {spec!r}: {err}") from None
