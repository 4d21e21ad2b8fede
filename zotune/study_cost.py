"""What a study will cost, before it runs (``--dry-run``): forward passes per cell, and hours when
the study file measures its machine.

A training cell's forward passes are its optimizer's closure calls per step (read from the
optimizer itself, built on a few small stand-in tensors, averaged over its first steps so MeZO-SVRG's
anchor steps count) times the steps. Its cost in example-forwards (one example through the model
once) adds the examples of each call (the anchor batch on MeZO-SVRG's anchor steps), a backward
as ``backward_factor`` forwards, and the evaluations: the test set twice (before and after
training) and the dev set at each evaluation. With ``cost: {s_per_example_forward: {task: s}}``
(seconds per example-forward measured on the machine at the threads one cell gets) and
``s_per_cell`` (loading the model and data), the dry run also estimates hours; ``step_factor``
(per optimizer) corrects the methods whose steps cost more or less than their forward passes say
(measured step time over the forward-count prediction: SparseZO's masks, LeZO's skipped layers);
``eval_factor`` is what an evaluated example costs against a training one (evaluation runs batches
of 32 under no_grad).
"""

from __future__ import annotations

import functools

import torch

from zotune.config import TrainConfig, is_zeroth_order_name
from zotune.study_spec import Cell, Study

STAND_IN = (("model.layers.0.self_attn.q_proj.weight", (64, 64)), ("model.layers.1.mlp.up_proj.weight", (96, 64)),
            ("model.norm.weight", (64,)))
STEPS_AVERAGED = 12  # a multiple of MeZO-SVRG's default anchor period (2)
NOMINAL_SPLIT = {"dev": 500, "test": 1000}  # MeZO's sizes, when the data cannot be read


@functools.cache
def calls_per_step(optimizer: str, options: str, batch_size: int) -> tuple[float, float]:
    """(closure calls, examples through the model) per step of ``optimizer`` with ``options`` (a
    JSON text), averaged over its first ``STEPS_AVERAGED`` steps; (2, 2·batch) when it cannot be
    built on the stand-in tensors."""
    import json

    from zotune.optim import build_optimizer

    if not is_zeroth_order_name(optimizer):
        return 1.0, float(batch_size)
    params = [(n, torch.nn.Parameter(torch.zeros(shape))) for n, shape in STAND_IN]
    try:
        opt = build_optimizer(optimizer, params, **json.loads(options))
    except (ValueError, TypeError):
        return 2.0, 2.0 * batch_size
    calls = examples = 0.0
    for t in range(STEPS_AVERAGED):
        opt.zo_step = t
        n = opt.forward_passes
        anchor = getattr(opt, "anchor_due", None)
        calls += n
        examples += n * (opt.anchor_batch_size if anchor is not None and anchor() else batch_size)
    return calls / STEPS_AVERAGED, examples / STEPS_AVERAGED


@functools.cache
def split_size(task: str, split: str, data_dir: str | None, cap: int | None) -> int:
    from zotune.tasks import get_task

    try:
        n = len(get_task(task).load(split, data_dir=data_dir))
    except (OSError, ValueError):
        n = NOMINAL_SPLIT[split]
    return min(n, cap) if cap is not None else n


def _evaluations(c: TrainConfig) -> int:
    """Dev evaluations of a run: every ``eval_every`` steps, and always after the last."""
    if not c.eval_every:
        return 1
    return c.steps // c.eval_every + (1 if c.steps % c.eval_every else 0)


def cell_cost(cell: Cell, backward_factor: float, step_factor: float = 1.0, eval_factor: float = 1.0) -> dict:
    """Forward passes (closure calls) and example-forwards of one cell; a training step's
    example-forwards are scaled by ``step_factor`` (the method's measured step time over what its
    forward passes predict: the noise passes over the weights, a JVP), an evaluated example's by
    ``eval_factor``."""
    c = cell.config
    test = split_size(c.task, "test", c.data_dir, c.test_examples)
    if cell.kind not in ("train", "sanity"):
        return {"forward_passes": 0, "example_forwards": round(test * eval_factor)}
    import json

    hp = {"lr": c.lr, "eps": c.eps, "weight_decay": c.weight_decay, **c.optimizer_kwargs}
    calls, examples = calls_per_step(c.optimizer, json.dumps({k: v for k, v in hp.items() if v is not None},
                                                             sort_keys=True, default=str), c.batch_size)
    factor = 1.0 if is_zeroth_order_name(c.optimizer) else backward_factor
    dev = split_size(c.task, "dev", c.data_dir, c.eval_examples)
    return {"forward_passes": round(calls * c.grad_accum * c.steps),
            "example_forwards": round(examples * factor * step_factor * c.steps
                                      + (2 * test + _evaluations(c) * dev) * eval_factor)}


def study_cost(study: Study, cells: list[Cell]) -> tuple[list[dict], dict]:
    """Per-cell cost rows and the totals; ``seconds`` where the study's ``cost:`` measures the machine."""
    cost = study.cost
    backward = float(cost.get("backward_factor", 3.0))
    per_example = cost.get("s_per_example_forward")
    rows, totals = [], {"cells": len(cells), "forward_passes": 0, "example_forwards": 0, "seconds": None}
    seconds_total = 0.0
    for cell in cells:
        factor = float((cost.get("step_factor") or {}).get(cell.config.optimizer, 1.0))
        row = {"id": cell.id, "kind": cell.kind, "seconds": None,
               **cell_cost(cell, backward, factor, float(cost.get("eval_factor", 1.0)))}
        rate = per_example.get(cell.config.task) if isinstance(per_example, dict) else per_example
        if rate is not None:
            row["seconds"] = row["example_forwards"] * float(rate) + float(cost.get("s_per_cell", 0.0))
            seconds_total += row["seconds"]
        elif per_example is not None:
            seconds_total = float("nan")  # a task without a measured rate: no total
        rows.append(row)
        totals["forward_passes"] += row["forward_passes"]
        totals["example_forwards"] += row["example_forwards"]
    if per_example is not None and seconds_total == seconds_total:
        totals["seconds"] = seconds_total
    return rows, totals
