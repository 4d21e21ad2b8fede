"""The optimizer registry: each method adds itself from its own file with one line,
``@register("name")`` above its class. ``zotune.optim`` imports every module of the package
before it answers a question about names, so a new method file is found without editing a list."""

from __future__ import annotations

# CLI name -> (module, class, zeroth-order?)
METHODS: dict[str, tuple[str, str, bool]] = {}


def register(name: str, zeroth_order: bool = True):
    """Class decorator: make an optimizer class selectable as ``--optimizer name``."""

    def add(cls):
        if name in METHODS and METHODS[name][:2] != (cls.__module__, cls.__qualname__):
            raise ValueError(f"optimizer name {name!r} is registered twice ({METHODS[name][1]}, {cls.__qualname__})")
        METHODS[name] = (cls.__module__, cls.__qualname__, zeroth_order)
        return cls

    return add
