"""Expanding a parsed study (``zotune.study_spec``) into its cells, each a checked TrainConfig.

The sanity pair first, then the baselines, then each method's grid: per task, mode, grid point and
seed, settings applied in the order study defaults, task overrides, method, its mode's overrides,
its task's overrides. Each cell's optimizer options are checked without a model (as ``zotune train``
does before loading one), and ``check_data`` loads every task's data once, so a study fails before
anything runs rather than in its cells.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

from zotune.config import TrainConfig, from_dict, is_zeroth_order_name
from zotune.study_spec import Cell, Method, Study, StudyError, parse_study

OPTIONAL_DEFAULTS = ("lr", "eps", "noise", "weight_decay")
"""Fields of ``defaults`` a cell leaves out when its optimizer does not take them (AdamW no eps or
noise, AdaNAGED no lr or eps), so one ``defaults`` serves every method; set in a method, they are checked."""
EVAL_FIELDS = ("model", "task", "task_spec", "data_dir", "test_examples", "max_length", "max_new_tokens", "dtype",
               "autocast", "device", "icl_shots")
"""What a baseline evaluation reads; its cell id depends on these only."""
SANITY_OPTIMIZERS = ("textbook-mezo", "mezo")
DEFAULT_ICL_SHOTS = 32  # MeZO's ICL baseline


def read_study(path: str | Path) -> Study:
    """Parse, check and expand a study file; a StudyError names any problem. Nothing is written."""
    study = parse_study(path)
    study.cells = expand(study)
    return study


def _takes(optimizer: str, key: str) -> bool:
    """Whether the optimizer takes the config field ``key`` (eps and noise: zeroth-order ones only;
    AdamW's own ``eps`` is another quantity)."""
    from zotune.optim import check_args

    if key in ("eps", "noise") and not is_zeroth_order_name(optimizer):
        return False
    if key == "noise":
        return True
    try:
        check_args(optimizer, {key: 1e-3})
        return True
    except ValueError:
        return False


def _config(study: Study, task: str, values: dict, where: str) -> TrainConfig:
    """The cell's TrainConfig: the study's defaults (less those its optimizer does not take), the
    task's overrides, then ``values``; checked."""
    optimizer = values.get("optimizer", "mezo")
    shared = {**study.defaults, **study.task_overrides.get(task, {})}
    shared = {k: v for k, v in shared.items() if k not in OPTIONAL_DEFAULTS or _takes(optimizer, k)}
    merged = {"model": study.model, "data_dir": study.data_dir, "task": task, **shared, **values}
    try:
        return from_dict(merged, where=where)
    except ValueError as e:
        raise StudyError(f"{where}: {e}") from None


def _check_optimizer(config: TrainConfig, where: str) -> None:
    """The optimizer takes the cell's options (checked without a model, as ``zotune train`` does)."""
    from zotune.optim import check_args
    from zotune.train import optimizer_hparams

    try:
        check_args(config.optimizer, optimizer_hparams(config))
    except ValueError as e:
        raise StudyError(f"{where}: {e}") from None


def _points(grid: dict[str, list]) -> list[dict]:
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def method_cells(study: Study, m: Method) -> list[Cell]:
    """The method's cells: per task, mode, grid point and seed. Settings apply in the order method,
    its mode's overrides, its task's overrides (the most specific last)."""
    cells = []
    for task in m.tasks or study.tasks:
        t = m.task_overrides.get(task, {})
        for mode in t.get("modes", m.modes):
            o = m.mode_overrides.get(mode, {})
            grid = {**m.grid, **o.get("grid", {}), **t.get("grid", {})}
            for point in _points(grid):
                opt = {**m.opt, **o.get("opt", {}), **t.get("opt", {}),
                       **{k[4:]: v for k, v in point.items() if k.startswith("opt.") and v is not None}}
                for seed in study.seeds:
                    values = {**m.config, **o.get("config", {}), **t.get("config", {}),
                              **{k: v for k, v in point.items() if not k.startswith("opt.")},
                              "optimizer": m.optimizer, "mode": mode, "seed": seed, "optimizer_kwargs": opt}
                    where = f"method {m.name!r} ({task}, {mode}, {point or 'no grid'}, seed {seed})"
                    config = _config(study, task, values, where)
                    _check_optimizer(config, where)
                    cells.append(Cell("train", m.name, config, point))
    return cells


def sanity_cells(study: Study) -> list[Cell]:
    """Textbook MeZO and zotune's MeZO at equal settings: both draw Gaussian noise (the published
    noise is Gaussian), the same batches (same seed) and the same evaluation."""
    if study.sanity is None:
        return []
    values = {k: v for k, v in study.sanity.items() if k != "task"}
    cells = []
    for optimizer in SANITY_OPTIMIZERS:
        where = f"sanity ({optimizer})"
        config = _config(study, str(study.sanity["task"]), {**values, "optimizer": optimizer, "noise": "gaussian",
                                                            "mode": "ft"}, where)
        _check_optimizer(config, where)
        cells.append(Cell("sanity", optimizer, config))
    return cells


def baseline_cells(study: Study) -> list[Cell]:
    cells = []
    for name, options in study.baselines.items():
        shots = int(options.get("icl_shots", DEFAULT_ICL_SHOTS)) if name == "icl" else 0
        extra = {k: v for k, v in options.items() if k != "icl_shots"}
        for task in study.tasks:
            where = f"baseline {name} ({task})"
            config = _config(study, task, {**extra, "icl_shots": shots}, where)
            # the fields an evaluation does not read stay at their defaults, out of the id
            config = from_dict({k: getattr(config, k) for k in EVAL_FIELDS}, where=where)
            cells.append(Cell(name, name, config))
    return cells


def check_data(study: Study) -> None:
    """Every task's data loads (each split a cell reads, once per task and data folder), so a missing
    or malformed file stops the study before anything runs, not in each of its cells."""
    from zotune.train import load_task_data

    seen = set()
    for cell in study.cells:
        c = cell.config
        key = (c.task, json.dumps(c.task_spec, sort_keys=True, default=str), c.data_dir)
        if key in seen:
            continue
        seen.add(key)
        try:
            load_task_data(c)
        except (OSError, ValueError) as e:
            raise StudyError(f"task {c.task}: {e}") from None


def expand(study: Study) -> list[Cell]:
    """Every cell of the study: the sanity pair, the baselines, then each method's grid, task by task
    in the file's order of ``tasks`` (a study cut short has every method on its first tasks). Two
    cells with the same kind and config would share a folder: refused, naming them."""
    cells = sanity_cells(study) + baseline_cells(study)
    trained = [c for m in study.methods for c in method_cells(study, m)]
    order = {task: i for i, task in enumerate(study.tasks)}
    cells += sorted(trained, key=lambda c: order.get(c.config.task, len(order)))  # stable: methods keep their order
    seen: dict[str, Cell] = {}
    for c in cells:
        if c.id in seen:
            raise StudyError(f"cells {seen[c.id].label!r} and {c.label!r} have the same config ({c.id}); remove one "
                             "entry or make their settings differ")
        seen[c.id] = c
        c.keep_weights = study.keep_weights
    return cells
