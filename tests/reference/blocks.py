"""Layer blocks as LeZO's and BlockZO's docstrings define them (shared by their twins).

A parameter name with a numeric component is grouped up to it (``layers.1.weight`` →
``layers.1``); any other by its module path (``lm_head.weight`` → ``lm_head``). Blocks keep the
order in which their first parameter appears.
"""

from __future__ import annotations


def label(name: str) -> str:
    parts = name.split(".")
    for i, part in enumerate(parts[:-1]):
        if part.isdigit():
            return ".".join(parts[: i + 1])
    return ".".join(parts[:-1])


def layer_blocks(names) -> list[list[str]]:
    """The parameter names of each block, blocks in order of appearance."""
    blocks: dict[str, list[str]] = {}
    for n in names:
        blocks.setdefault(label(n), []).append(n)
    return list(blocks.values())
