"""Optimizers: zeroth-order methods on zotune's engine, and first-order baselines from torch.optim.

``build_optimizer(name, named_params, **hparams)`` is what the trainer and the CLI use; every
method is also importable directly (``zotune.optim.MeZO``). Each method registers its name from
its own file (``zotune.optim.registry``); the registry is filled by importing the package's
modules the first time a name is looked up.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
import pkgutil
from collections.abc import Mapping

from zotune.engine import NonFiniteLossError, NonFiniteUpdateError
from zotune.optim.base import ZOOptimizer, check_finite_options
from zotune.optim.registry import METHODS

_NOT_METHODS = {"base", "registry"}


@functools.cache
def _load_all() -> dict[str, tuple[str, str, bool]]:
    """Import every method module once, so each registers its name; the filled registry."""
    for info in pkgutil.iter_modules(__path__):
        if info.name not in _NOT_METHODS:
            importlib.import_module(f"{__name__}.{info.name}")
    return METHODS


class _Registry(Mapping):
    """CLI name -> (module, class, zeroth-order?), filled on first use."""

    def __getitem__(self, name):
        return _load_all()[name]

    def __iter__(self):
        return iter(sorted(_load_all()))

    def __len__(self):
        return len(_load_all())

    def __repr__(self):
        return repr(dict(self.items()))


OPTIMIZERS: Mapping[str, tuple[str, str, bool]] = _Registry()


def __getattr__(name: str):
    """``zotune.optim.ZOAdam`` etc.: the class of a registered zotune method."""
    for mod, cls, _ in _load_all().values():
        if cls == name and mod.startswith("zotune."):
            return getattr(importlib.import_module(mod), cls)
    raise AttributeError(f"module 'zotune.optim' has no attribute {name!r}")


def available() -> list[str]:
    """Optimizer names whose implementation is present."""
    return sorted(n for n, (mod, _, _) in OPTIMIZERS.items() if importlib.util.find_spec(mod) is not None)


def optimizer_class(name: str) -> type:
    if name not in OPTIMIZERS or name not in available():
        raise ValueError(f"unknown optimizer {name!r}; choose one of {available()}")
    mod, cls, _ = OPTIMIZERS[name]
    return getattr(importlib.import_module(mod), cls)


def is_zeroth_order(opt) -> bool:
    """True for optimizers whose ``step(closure)`` takes a forward-only closure."""
    return isinstance(opt, ZOOptimizer)


def build_optimizer(name: str, named_params, **hparams):
    """Build optimizer ``name`` over ``named_params`` ((name, tensor) pairs).

    Hyperparameters the optimizer does not take (e.g. ``eps`` for SGD) are rejected with an error
    naming the accepted ones; ``None`` values are dropped so the method's defaults apply.
    """
    hparams = check_args(name, hparams)
    return optimizer_class(name)(list(named_params), **hparams)


def check_args(name: str, hparams: dict) -> dict:
    """The hyperparameters ``build_optimizer(name, ...)`` would pass (``None`` values dropped), or
    a ValueError naming those the optimizer does not take. Cheap: no parameters needed, so a caller
    can check a run's options before loading a model."""
    hparams = {k: v for k, v in hparams.items() if v is not None}
    accepted = _accepted_args(optimizer_class(name))
    unknown = sorted(set(hparams) - accepted)
    if unknown:
        raise ValueError(f"optimizer {name!r} does not take {unknown}; it accepts {sorted(accepted)}")
    check_finite_options(name, hparams)
    return hparams


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


__all__ = ["NonFiniteLossError", "NonFiniteUpdateError", "OPTIMIZERS", "ZOOptimizer", "available", "build_optimizer",
           "check_args", "is_zeroth_order", "optimizer_class"]
