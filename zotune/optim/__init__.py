"""Optimizers: zeroth-order methods on zotune's engine, and first-order baselines from torch.optim.

``build_optimizer(name, named_params, **hparams)`` is what the trainer and the CLI use; every
method is also importable directly (``zotune.optim.MeZO``). Methods are imported on first use,
so importing this package stays cheap.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect

from zotune.optim.base import NonFiniteLossError, ZOOptimizer

# CLI name -> (module, class, zeroth-order?)
OPTIMIZERS: dict[str, tuple[str, str, bool]] = {
    "mezo": ("zotune.optim.mezo", "MeZO", True),
    "zo-sgd-sign": ("zotune.optim.zo_sgd_sign", "ZOSGDSign", True),
    "zo-sgd-momentum": ("zotune.optim.zo_sgd_momentum", "ZOSGDMomentum", True),
    "zo-sgd-cons": ("zotune.optim.zo_sgd_conservative", "ZOSGDConservative", True),
    "zo-adam": ("zotune.optim.zo_adam", "ZOAdam", True),
    "forward-grad": ("zotune.optim.forward_grad", "ForwardGrad", True),
    "subzero": ("zotune.optim.subzero", "SubZero", True),
    "lozo": ("zotune.optim.lozo", "LOZO", True),
    "lezo": ("zotune.optim.lezo", "LeZO", True),
    "sparse-zo": ("zotune.optim.sparse_zo", "SparseZO", True),
    "block-zo": ("zotune.optim.block_zo", "BlockZO", True),
    "hybrid-zo": ("zotune.optim.hybrid_zo", "HybridZO", True),
    "helene": ("zotune.optim.helene", "HELENE", True),
    "mezo-gv": ("zotune.optim.mezo_gv", "MeZOGV", True),
    "mezo-greedy": ("zotune.optim.mezo_greedy", "MeZOGreedy", True),
    "adanaged": ("zotune.optim.adanaged", "AdaNAGED", True),
    "sgd": ("torch.optim", "SGD", False),
    "adamw": ("torch.optim", "AdamW", False),
}
_CLASSES = {cls: (mod, cls) for mod, cls, _ in OPTIMIZERS.values() if mod.startswith("zotune.")}


def __getattr__(name: str):
    """``zotune.optim.ZOAdam`` etc.: import the method's module on first access."""
    if name in _CLASSES:
        mod, cls = _CLASSES[name]
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
    cls = optimizer_class(name)
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


__all__ = ["NonFiniteLossError", "OPTIMIZERS", "ZOOptimizer", "available", "build_optimizer",
           "is_zeroth_order", "optimizer_class", *_CLASSES]
