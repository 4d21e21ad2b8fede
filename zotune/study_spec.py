"""The study file of ``zotune bench study``: a grid of (method × task × mode × hyperparameters × seed)
on one model: its schema (below), its parsing and checking, and its cells (expanded by ``zotune.study_grid``).

A cell is one training run (or one baseline evaluation) with a fully resolved ``TrainConfig``; its
id is a readable slug plus a hash of that config, so a finished cell is found again by a rerun of
the same file and a changed setting makes a new cell instead of reusing a stale one. The schema
(``configs/study/*.yaml`` are examples)::

    name: smollm2-cpu               # optional title of the report
    model: smollm2                  # every cell's model
    data_dir: /work/shared/data     # optional (else $ZOTUNE_DATA)
    out: runs/study-smollm2-cpu     # optional; --out overrides
    defaults: {steps: 300, batch_size: 8, eval_every: 50, ...}  # TrainConfig fields of every cell;
                                    # the ZO-only ones (eps, noise) are left out for first-order methods
    tasks: [sst2, copa, rte]
    task_overrides: {rte: {max_length: 128}}   # optional TrainConfig fields per task
    seeds: [0]
    baselines: [zero-shot, icl]     # or {zero-shot: {}, icl: {icl_shots: 16, max_length: 1024}}: once per task
    methods:
      - name: MeZO                  # the label in the tables (unique)
        optimizer: mezo             # a registered optimizer name
        modes: [ft, lora]           # default [ft]
        grid: {lr: [1e-6, 1e-5]}    # TrainConfig fields or opt.KEY (optimizer options): all combinations;
                                    # null: the optimizer's default (e.g. lr: [null, 1e-4])
        opt: {}                     # optimizer options (TrainConfig.optimizer_kwargs)
        config: {}                  # other TrainConfig fields of this method
        tasks: [sst2]               # optional: a subset of the study's tasks
        mode_overrides: {lora: {grid: {lr: [1e-4]}, opt: {}, config: {}}}
        task_overrides: {copa: {modes: [ft], grid: {lr: [3e-5]}}}   # per task: modes, grid, opt, config
    sanity: {task: sst2, lr: 3e-5, eps: 1e-3, steps: 200}   # textbook MeZO vs zotune MeZO (noise gaussian)
    keep_weights: false             # optional (default true): delete a finished run's checkpoints and
                                    # weights (a replayable ZO run's come back with `zotune replay`)
    cost: {s_per_example_forward: {sst2: 0.07}, backward_factor: 3, s_per_cell: 15,
           step_factor: {fzoo: 0.76}, eval_factor: 0.5, threads: 1}   # optional: --dry-run hours (study_cost)
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from zotune.adapters import MODES
from zotune.config import FIELDS, TrainConfig, from_dict, known_optimizers

TOP_KEYS = ("name", "model", "data_dir", "out", "defaults", "tasks", "task_overrides", "seeds", "baselines",
            "methods", "sanity", "cost", "keep_weights")
METHOD_KEYS = ("name", "optimizer", "modes", "grid", "opt", "config", "tasks", "mode_overrides", "task_overrides")
OVERRIDE_KEYS = ("grid", "opt", "config")
BASELINES = ("zero-shot", "icl")
BASELINE_KEYS = ("icl_shots", "max_length", "test_examples")
CELL_SET = ("model", "task", "optimizer", "mode", "seed", "out", "optimizer_kwargs", "data_dir")
"""Fields the study sets itself: a method's config or grid may not set them."""
COST_KEYS = ("s_per_example_forward", "backward_factor", "s_per_cell", "step_factor", "eval_factor", "threads")


class StudyError(ValueError):
    """A study file that cannot run; the message names the problem and the fix."""


@dataclass
class Cell:
    """One unit of the study: a training run (kind ``train`` or ``sanity``) or a baseline evaluation
    (``zero-shot``, ``icl``) of ``config``."""

    kind: str
    label: str
    config: TrainConfig
    grid: dict[str, Any] = field(default_factory=dict)  # this cell's grid point
    id: str = ""
    keep_weights: bool = True  # False: a finished run's checkpoints and weights are deleted (not in the id)

    def __post_init__(self):
        if not self.id:
            self.id = cell_id(self)

    def to_dict(self) -> dict:
        return {"id": self.id, "kind": self.kind, "label": self.label, "grid": self.grid,
                "config": self.config.to_dict(), "keep_weights": self.keep_weights}

    @staticmethod
    def from_dict(d: dict) -> "Cell":
        return Cell(d["kind"], d["label"], from_dict(d["config"], where=f"cell {d['id']}"), d.get("grid") or {},
                    d["id"], bool(d.get("keep_weights", True)))


@dataclass
class Method:
    name: str
    optimizer: str
    modes: list[str]
    grid: dict[str, list]
    opt: dict
    config: dict
    tasks: list[str] | None
    mode_overrides: dict[str, dict]
    task_overrides: dict[str, dict]


@dataclass
class Study:
    """A parsed study file; ``cells`` is the whole expanded grid, sanity and baselines first."""

    path: str
    name: str
    model: str
    data_dir: str | None
    out: str | None
    defaults: dict
    tasks: list[str]
    task_overrides: dict[str, dict]
    seeds: list[int]
    baselines: dict[str, dict]
    methods: list[Method]
    sanity: dict | None
    cost: dict
    keep_weights: bool = True
    cells: list[Cell] = field(default_factory=list)


def _slug(value: Any) -> str:
    text = f"{value:g}" if isinstance(value, float) else str(value)
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", text).strip("-").lower()


DEFAULT_CONFIG = TrainConfig().to_dict()


def cell_id(cell: Cell) -> str:
    """``<task>-<label>-<mode>-<grid point>-s<seed>-<hash>``: readable, and unique to the cell's kind
    and config. The hash covers the fields that differ from TrainConfig's defaults (the output folder
    excluded), so a field added to zotune later, at a default that keeps the old behaviour, does not
    turn every finished cell into a new one."""
    c = cell.config
    config = {k: v for k, v in c.to_dict().items()
              if k != "out" and (k not in DEFAULT_CONFIG or v != DEFAULT_CONFIG[k])}
    digest = hashlib.sha256(json.dumps({"kind": cell.kind, "config": config}, sort_keys=True, default=str)
                            .encode()).hexdigest()[:10]
    # null: the optimizer's default, the same cell as a method without that grid key
    point = "-".join(f"{k.removeprefix('opt.')}{_slug(v)}" for k, v in cell.grid.items() if v is not None)
    training = cell.kind in ("train", "sanity")
    parts = (["sanity"] if cell.kind == "sanity" else []) + [c.task, _slug(cell.label)] + ([c.mode] if training else [])
    parts += [point] if point else []
    parts += [f"s{c.seed}"] if training else []
    return "-".join(p for p in parts if p)[:90] + "-" + digest


# --------------------------------------------------------------------------- reading

def _mapping(value, where: str, keys: tuple[str, ...] | None = None) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise StudyError(f"{where} must be a mapping (key: value lines), got {type(value).__name__} {value!r}")
    if keys is not None:
        unknown = sorted(set(value) - set(keys))
        if unknown:
            raise StudyError(f"unknown key(s) {', '.join(map(repr, unknown))} in {where}; "
                             f"valid keys: {', '.join(keys)}")
    return dict(value)


def _list(value, where: str, default=None) -> list:
    if value is None:
        if default is None:
            raise StudyError(f"{where} is missing; give a list, e.g. {where.split('.')[-1]}: [...]")
        return list(default)
    if isinstance(value, (str, int, float)):
        return [value]
    if not isinstance(value, list) or not value:
        raise StudyError(f"{where} must be a non-empty list, got {value!r}")
    return list(value)


def _fields(values: dict, where: str, allowed: tuple[str, ...] = ()) -> dict:
    """TrainConfig fields, each checked by name (its value is checked when a cell is built)."""
    values = {str(k).replace("-", "_"): v for k, v in values.items()}
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise StudyError(f"unknown config field(s) {', '.join(map(repr, unknown))} in {where}; valid fields: "
                         f"{', '.join(FIELDS)}")
    owned = sorted(set(values) & set(CELL_SET) - set(allowed))
    if owned:
        raise StudyError(f"{where} sets {', '.join(owned)}, which the study sets for every cell: give model/data_dir "
                         "at the top, tasks/seeds as lists, the optimizer in `optimizer:`, modes in `modes:`, "
                         "and optimizer options in `opt:`")
    return values


def _grid(value, where: str) -> dict[str, list]:
    grid = {}
    for key, values in _mapping(value, where).items():
        key = str(key)
        if not key.startswith("opt."):
            _fields({key: None}, where)
        grid[key] = _list(values, f"{where}.{key}")
    return grid


def _method(raw, i: int, tasks: list[str]) -> Method:
    where = f"methods[{i}]"
    m = _mapping(raw, where, METHOD_KEYS)
    for key in ("name", "optimizer"):
        if not isinstance(m.get(key), str) or not m[key]:
            raise StudyError(f"{where} needs `{key}:` (a label and a registered optimizer name)")
    where = f"method {m['name']!r}"
    if m["optimizer"] not in known_optimizers():
        raise StudyError(f"{where}: unknown optimizer {m['optimizer']!r}; "
                         f"choose one of {', '.join(known_optimizers())}")
    modes = [str(x) for x in _list(m.get("modes"), f"{where}.modes", default=["ft"])]
    bad = [x for x in modes if x not in MODES]
    if bad:
        raise StudyError(f"{where}: unknown mode(s) {bad}; choose among {', '.join(MODES)}")
    own_tasks = m.get("tasks")
    if own_tasks is not None:
        own_tasks = [str(t) for t in _list(own_tasks, f"{where}.tasks")]
        stray = [t for t in own_tasks if t not in tasks]
        if stray:
            raise StudyError(f"{where}: tasks {stray} are not among the study's tasks {tasks}; add them to `tasks:`")
    mode_overrides = {}
    for mode, o in _mapping(m.get("mode_overrides"), f"{where}.mode_overrides").items():
        if mode not in modes:
            raise StudyError(f"{where}.mode_overrides names mode {mode!r}, which is not in its modes {modes}")
        mode_overrides[mode] = _override(o, f"{where}.mode_overrides.{mode}")
    task_overrides = {}
    for task, o in _mapping(m.get("task_overrides"), f"{where}.task_overrides").items():
        if task not in (own_tasks or tasks):
            raise StudyError(f"{where}.task_overrides names task {task!r}, which it does not run "
                             f"({own_tasks or tasks})")
        o = dict(_mapping(o, f"{where}.task_overrides.{task}", OVERRIDE_KEYS + ("modes",)))
        task_modes = [str(x) for x in _list(o.pop("modes", None), f"{where}.task_overrides.{task}.modes", modes)]
        if set(task_modes) - set(modes):
            raise StudyError(f"{where}.task_overrides.{task}.modes {task_modes} must be among its modes {modes}")
        task_overrides[task] = {**_override(o, f"{where}.task_overrides.{task}"), "modes": task_modes}
    return Method(m["name"], m["optimizer"], modes, _grid(m.get("grid"), f"{where}.grid"),
                  _mapping(m.get("opt"), f"{where}.opt"), _fields(_mapping(m.get("config"), f"{where}.config"),
                                                                  f"{where}.config"), own_tasks, mode_overrides,
                  task_overrides)


def _override(o, where: str) -> dict:
    """A method's overrides for one mode or task: its grid, optimizer options, config fields."""
    o = _mapping(o, where, OVERRIDE_KEYS)
    return {"grid": _grid(o.get("grid"), f"{where}.grid"), "opt": _mapping(o.get("opt"), f"{where}.opt"),
            "config": _fields(_mapping(o.get("config"), f"{where}.config"), f"{where}.config")}


def _baselines(value) -> dict[str, dict]:
    if value is None:
        return {}
    items = {str(v): {} for v in value} if isinstance(value, list) else _mapping(value, "baselines")
    out = {}
    for name, options in items.items():
        if name not in BASELINES:
            raise StudyError(f"unknown baseline {name!r}; choose among {', '.join(BASELINES)}")
        out[name] = _mapping(options, f"baselines.{name}", BASELINE_KEYS)
    return out


def _cost(value, tasks: list[str]) -> dict:
    """The dry run's cost model: numbers (seconds, a factor), s_per_example_forward one or per task."""
    cost = _mapping(value, "cost", COST_KEYS)
    per_name = {"s_per_example_forward": "task: seconds", "step_factor": "optimizer: factor"}
    for key, v in cost.items():
        values = v.values() if isinstance(v, dict) and key in per_name else [v]
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) and x >= 0 for x in values):
            raise StudyError(f"cost.{key} must be a number >= 0" + (f" or a mapping {per_name[key]}"
                                                                     if key in per_name else "") + f", got {v!r}")
    unknown = sorted(set(cost.get("step_factor") or {}) - set(known_optimizers()))
    if unknown:
        raise StudyError(f"cost.step_factor names unknown optimizer(s) {unknown}; choose among {known_optimizers()}")
    return cost


def _keep_weights(value) -> bool:
    if not isinstance(value, bool):
        raise StudyError(f"keep_weights must be true or false, got {value!r}")
    return value


def parse_study(path: str | Path) -> Study:
    """Parse and check a study file (its cells are expanded by ``zotune.study_grid.read_study``); a
    StudyError names any problem. Nothing is written."""
    path = Path(path)
    if not path.is_file():
        raise StudyError(f"study file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise StudyError(f"cannot parse study file {path}: {str(e).splitlines()[0]}; write `key: value` lines "
                         "indented with spaces (see configs/study/tiny.yaml)") from None
    top = _mapping(raw, f"study file {path}", TOP_KEYS)
    if not isinstance(top.get("model"), str):
        raise StudyError(f"study file {path} needs `model:` (e.g. smollm2)")
    tasks = [str(t) for t in _list(top.get("tasks"), "tasks")]
    seeds = _list(top.get("seeds"), "seeds", default=[0])
    if not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise StudyError(f"seeds must be whole numbers, got {seeds}")
    methods = [_method(m, i, tasks) for i, m in enumerate(_list(top.get("methods"), "methods"))]
    names = [m.name for m in methods]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise StudyError(f"method name(s) {twice} are used twice; give every method entry its own `name:`")
    task_overrides = {}
    for task, o in _mapping(top.get("task_overrides"), "task_overrides").items():
        if task not in tasks:
            raise StudyError(f"task_overrides names task {task!r}, which is not among the study's tasks {tasks}")
        task_overrides[task] = _fields(_mapping(o, f"task_overrides.{task}"), f"task_overrides.{task}",
                                       allowed=("data_dir",))
    sanity = top.get("sanity")
    if sanity is not None:
        sanity = _fields(_mapping(sanity, "sanity"), "sanity", allowed=("task", "seed"))
        sanity.setdefault("task", "sst2")
    study = Study(str(path), str(top.get("name") or path.stem), top["model"], top.get("data_dir"), top.get("out"),
                  _fields(_mapping(top.get("defaults"), "defaults"), "defaults"), tasks, task_overrides,
                  [int(s) for s in seeds], _baselines(top.get("baselines")), methods, sanity,
                  _cost(top.get("cost"), tasks), _keep_weights(top.get("keep_weights", True)))
    return study
