"""Functional perturbation: during a forward pass every module reads θ + c·z, θ is never written.

Why: the textbook ZO step writes θ+εz into the weights and later subtracts it again, which is not
exact in floating point (in bf16 the weights drift by ~12% of their scale over 1000 no-op steps)
and leaves the model perturbed if the forward raises. Here a global forward pre-hook swaps, for the
duration of one module's forward, each trainable parameter that module owns for a perturbed copy,
and the matching forward hook (always called, even on exceptions) swaps the original back. Peak
extra memory is one module's parameters, not a copy of the model. A low-rank perturbation c·A·Bᵀ
of a Linear's weight is applied in the forward instead, as x·B·Aᵀ added to the output, where that
costs fewer flops than building the copy (small batches).

The optimizer needs no reference to the model: it only knows its parameters, and the hooks
recognise them by identity in whichever module owns them. Two cases need care:
- a parameter owned by several modules (tied embeddings): its perturbed copy is kept for the
  whole context, so all owners see the same tensor and it is built once;
- a parameter read outside its owner's forward (or not used at all): the pre-hooks never see it.
  Such parameters are swapped through ``.data`` for the whole context instead (``outside``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch.nn.modules import module as nn_module


@dataclass
class Perturbed:
    """One trainable parameter as the engine sees it: the tensor, its noise key, its name (None
    when the optimizer was given plain ``parameters()``) and its 1-based position among them."""

    param: torch.Tensor
    key: int
    name: str | None = None
    index: int = 0


class FunctionalPerturbation:
    """Context manager: inside it, forwards see ``make(entry)`` instead of each tracked parameter.

    ``entries`` maps ``id(param)`` → Perturbed; ``make(entry, dtype)`` builds the perturbed tensor
    of an entry (in ``dtype`` if given, else the parameter's own);
    ``shared`` (ids of parameters with several owner modules) and ``outside`` (ids swapped through
    ``.data``) are learned by the caller from ``visits`` of earlier passes.
    """

    def __init__(
        self,
        entries: dict[int, Perturbed],
        make: Callable[[Perturbed, torch.dtype | None], torch.Tensor],
        shared: set[int] = frozenset(),
        outside: set[int] = frozenset(),
        factors: Callable[[Perturbed], tuple[torch.Tensor, torch.Tensor] | None] | None = None,
        in_forward: str = "auto",
    ):
        self.entries = entries
        self.make = make
        self.factors = factors  # (A, B) of a low-rank perturbation c·A·Bᵀ, or None
        self.in_forward = in_forward  # "auto" (where cheaper), "always", "never"
        self._corrections: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.shared = shared
        self.outside = outside
        self.visits: dict[int, int] = {}  # id(param) -> number of owner forwards that read it
        self._memo: dict[tuple[int, torch.dtype | None], torch.Tensor] = {}
        self._swapped: list[tuple[torch.nn.Module, str, torch.Tensor]] = []
        self._data_swapped: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._handles = []

    def _perturbed(self, pid: int, dtype: torch.dtype | None) -> torch.Tensor:
        if pid not in self.shared:
            return self.make(self.entries[pid], dtype)
        # a tied parameter: build θ + c·z once per context; an owner that wants it in an autocast
        # dtype gets a cast of that copy (the same values: one rounding of fl(θ + c·z))
        if (pid, None) not in self._memo:
            self._memo[(pid, None)] = self.make(self.entries[pid], None)
        if (pid, dtype) not in self._memo:
            self._memo[(pid, dtype)] = self._memo[(pid, None)].to(dtype)
        return self._memo[(pid, dtype)]

    def _pre_hook(self, module, args):
        params = module._parameters
        cast = _autocast_dtype(module, params)
        for name, p in params.items():
            if p is None:
                continue
            pid = id(p)
            if pid in self.entries and pid not in self.outside:
                self.visits[pid] = self.visits.get(pid, 0) + 1
                if name == "weight" and self._low_rank_in_forward(module, pid, p, args):
                    continue  # the weight stays θ; the forward hook adds the perturbation's output
                self._swapped.append((module, name, p))
                params[name] = self._perturbed(pid, cast if name == "weight" else None)

    def _low_rank_in_forward(self, module, pid: int, w: torch.Tensor, args) -> bool:
        """For a Linear whose perturbation is low-rank, c·A·Bᵀ (A m×r, B n×r): apply it as
        x·B·Aᵀ added to the output instead of building W + c·A·Bᵀ, where that costs fewer flops:
        tokens·r·(m + n) against m·n·r (and an m×n copy), i.e. for fewer than m·n/(m+n) tokens."""
        if self.factors is None or self.in_forward == "never" or type(module) is not torch.nn.Linear \
                or pid in self.shared or not args or not torch.is_tensor(args[0]):
            return False
        m, n = w.shape
        tokens = args[0].numel() // max(args[0].shape[-1], 1)
        if self.in_forward == "auto" and tokens * (m + n) >= m * n:
            return False
        f = self.factors(self.entries[pid])
        if f is None:
            return False
        self._corrections[id(module)] = f
        return True

    def _post_hook(self, module, args, output):
        self._restore(module)
        f = self._corrections.pop(id(module), None)
        if f is not None and torch.is_tensor(output):
            a, b = f
            x = args[0]
            dt = output.dtype
            return output + ((x.to(dt) @ b.to(dt)) @ a.T.to(dt))
        return None

    def _restore(self, module=None):
        keep = []
        for entry in reversed(self._swapped):
            m, name, p = entry
            if module is None or m is module:
                m._parameters[name] = p
            else:
                keep.append(entry)
        self._swapped = keep[::-1]

    def __enter__(self):
        for pid in self.outside:
            p = self.entries[pid].param
            self._data_swapped.append((p, p.data))
            p.data = self.make(self.entries[pid], None)
        self._handles = [
            nn_module.register_module_forward_pre_hook(self._pre_hook),
            nn_module.register_module_forward_hook(self._post_hook, always_call=True),
        ]
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles = []
        self._restore()
        self._corrections.clear()
        for p, data in reversed(self._data_swapped):
            p.data = data
        self._data_swapped = []
        self._memo.clear()
        return False


def _autocast_dtype(module: torch.nn.Module, params) -> torch.dtype | None:
    """The dtype autocast would cast a Linear's fp32 weight to, if autocast is on.

    Building the perturbed weight directly in that dtype gives the same values autocast would
    (one round-to-nearest of fl(θ + c·z)) and saves a full-precision temporary and a cast pass.
    """
    w = params.get("weight")
    if type(module) is not torch.nn.Linear or w is None or w.dtype != torch.float32:
        return None
    if not torch.is_autocast_enabled(w.device.type):
        return None
    return torch.get_autocast_dtype(w.device.type)
