"""Optimizers: zeroth-order methods on zotune's engine, and first-order baselines from torch.optim.

``build_optimizer(name, named_params, **hparams)`` is what the trainer and the CLI use; every
ZO optimizer is also importable directly (``zotune.optim.MeZO``).
"""

from __future__ import annotations

import inspect

import torch

from zotune.optim.base import NonFiniteLossError, ZOOptimizer
from zotune.optim.mezo import MeZO

# name -> (class, is zeroth-order)
OPTIMIZERS: dict[str, tuple[type, bool]] = {
    "mezo": (MeZO, True),
    "sgd": (torch.optim.SGD, False),
    "adamw": (torch.optim.AdamW, False),
}


def is_zeroth_order(opt) -> bool:
    """True for optimizers whose ``step(closure)`` takes a forward-only closure."""
    return isinstance(opt, ZOOptimizer)


def build_optimizer(name: str, named_params, **hparams):
    """Build optimizer ``name`` over ``named_params`` ((name, tensor) pairs).

    Hyperparameters the optimizer does not take (e.g. ``eps`` for SGD) are rejected with an error
    naming the accepted ones; ``None`` values are dropped so the method's defaults apply.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {sorted(OPTIMIZERS)}")
    cls, _ = OPTIMIZERS[name]
    hparams = {k: v for k, v in hparams.items() if v is not None}
    accepted = _accepted_args(cls)
    unknown = sorted(set(hparams) - accepted)
    if unknown:
        raise ValueError(f"optimizer {name!r} does not take {unknown}; it accepts {sorted(accepted)}")
    return cls(list(named_params), **hparams)


def _accepted_args(cls) -> set[str]:
    args = set()
    for klass in cls.__mro__:
        if klass is object or "__init__" not in vars(klass):
            continue
        sig = inspect.signature(klass.__init__)
        args |= {n for n, p in sig.parameters.items() if n not in ("self", "params", "defaults")
                 and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        if not any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values()):
            break
    return args


__all__ = ["MeZO", "NonFiniteLossError", "OPTIMIZERS", "ZOOptimizer", "build_optimizer", "is_zeroth_order"]
