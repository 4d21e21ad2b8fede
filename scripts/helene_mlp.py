"""HELENE against MeZO and ZO-SGD-Sign on the tests' small MLP, 4500 steps at lr 1e-3: the loss every
500 steps. Shows the climb of HELENE without its per-coordinate clip (``clip=None``) and the clipped
rule's descent (zotune/optim/helene.py).

    OMP_NUM_THREADS=1 .venv/bin/python scripts/helene_mlp.py mezo:lr=1e-3 helene:lr=1e-3 \\
        helene:lr=1e-3:clip=none zo-sgd-sign:lr=1e-3
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from method_checks import mlp  # noqa: E402

from zotune.optim import build_optimizer  # noqa: E402


def losses(name: str, steps: int = 4500, **kwargs) -> list[float]:
    model, closure = mlp()
    opt = build_optimizer(name, model.named_parameters(), **kwargs)
    seen = []
    for t in range(1, steps + 1):
        opt.step(closure)
        if t % 500 == 0:
            seen.append(round(closure().item(), 3))
    return seen


if __name__ == "__main__":
    torch.set_num_threads(1)
    for spec in sys.argv[1:] or ["mezo:lr=1e-3", "helene:lr=1e-3", "helene:lr=1e-3:clip=none"]:
        name, *pairs = spec.split(":")
        kwargs = {k: None if v == "none" else float(v) for k, v in (p.split("=") for p in pairs)}
        print(spec, losses(name, **kwargs), flush=True)
