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
import math
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
    naming the accepted ones; ``None`` values are dropped so the method's defaults apply. A low-rank
    ``rank`` given here that no trainable matrix is larger than is refused (it would train as MeZO).
    """
    hparams = check_args(name, hparams)
    opt = optimizer_class(name)(list(named_params), **hparams)
    sampler = hparams.get("sampler")
    if "rank" in hparams or (isinstance(sampler, dict) and "rank" in sampler):
        opt.sampler.check_rank_fits()  # a rank the user chose must lower some matrix's rank
    return opt


def check_args(name: str, hparams: dict) -> dict:
    """The hyperparameters ``build_optimizer(name, ...)`` would pass (``None`` values dropped), or
    a ValueError naming those the optimizer does not take. Cheap: no parameters needed, so a caller
    can check a run's options before loading a model."""
    hparams = {k: v for k, v in hparams.items() if v is not None}
    annotations = _accepted_args(optimizer_class(name))
    unknown = sorted(set(hparams) - set(annotations))
    if unknown:
        raise ValueError(f"optimizer {name!r} does not take {unknown}; it accepts {sorted(annotations)}")
    hparams = {k: _typed(name, k, v, annotations[k]) for k, v in hparams.items()}
    check_finite_options(name, hparams)
    return hparams


def _accepted_args(cls) -> dict[str, str]:
    """The keyword arguments ``cls`` takes (through ``**kwargs`` to its bases), each with its type
    annotation as text ('' when it has none)."""
    args: dict[str, str] = {}
    for klass in cls.__mro__:
        if klass is object or "__init__" not in vars(klass):
            continue
        sig = inspect.signature(klass.__init__)
        for n, p in sig.parameters.items():
            if n not in ("self", "params", "defaults") and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
                ann = p.annotation
                args.setdefault(n, "" if ann is inspect.Parameter.empty else
                                ann if isinstance(ann, str) else ann.__name__ if isinstance(ann, type) else str(ann))
        if not any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values()):
            break
    return args


def _split_top(text: str, sep: str) -> list[str]:
    """``text`` split on ``sep`` outside brackets."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += ch == "["
        depth -= ch == "]"
        if ch == sep and depth == 0:
            parts.append(cur.strip())
            cur = ""
        else:
            cur += ch
    return parts + [cur.strip()]


def _typed(owner: str, key: str, value, annotation: str):
    """``value`` as the type ``annotation`` names, or a ValueError saying what to give.

    Options come from ``--opt KEY=VALUE`` through YAML, which reads ``1e-3`` as text and ``2.5`` as
    a float: a number written as text is taken for a float option, but a fraction for a whole-number
    option is refused (truncating ``num_directions=2.5`` to 2 would silently run another method),
    and so is text where a number or true/false is expected (it would fail later in a comparison).
    Options without a simple annotation (samplers, torch tensors) are passed through unchanged.
    """
    kinds = [k for k in _split_top(annotation, "|") if k not in ("None", "torch.Tensor", "Tensor", "")]
    if len(kinds) != 1:
        return value
    kind = kinds[0]

    def refuse(expected: str, example: str):
        return ValueError(f"optimizer {owner!r}: {key} must be {expected}, got {value!r}; "
                          f"give e.g. --opt {key}={example}")

    if kind == "float":
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise refuse("a number", "0.5") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise refuse("a number", "0.5")
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise refuse("a whole number", "2")
        try:
            number = float(value)
        except ValueError:
            raise refuse("a whole number", "2") from None
        if not number.is_integer():  # NaN and inf are not integers either
            raise refuse("a whole number", str(max(1, math.floor(number)) if math.isfinite(number) else 2))
        return int(number)
    if kind == "bool":
        if not isinstance(value, bool):
            raise refuse("true or false", "true")
        return value
    if kind == "str":
        if not isinstance(value, str):
            raise refuse("text", "NAME")
        return value
    if kind.startswith("tuple[") and kind.endswith("]"):
        items = _split_top(kind[len("tuple["):-1], ",")
        if "..." in items:
            return value
        try:
            if not isinstance(value, (list, tuple)) or len(value) != len(items):
                raise ValueError
            return tuple(_typed(owner, key, v, t) for v, t in zip(value, items))
        except ValueError:
            example = ", ".join("2" if "int" in t else "0.5" for t in items)
            raise ValueError(f"optimizer {owner!r}: {key} must be a list of {len(items)} numbers, got {value!r}; "
                             f"give e.g. --opt '{key}=[{example}]'") from None
    return value


__all__ = ["NonFiniteLossError", "NonFiniteUpdateError", "OPTIMIZERS", "ZOOptimizer", "available", "build_optimizer",
           "check_args", "is_zeroth_order", "optimizer_class"]
