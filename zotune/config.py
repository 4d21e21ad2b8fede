"""Run configuration: one dataclass shared by the library, config files and the CLI.

A run is fully described by a :class:`TrainConfig`, which is saved as ``config.yaml`` next to the
run's results so that ``zotune eval --run`` (and a human) can rebuild exactly what was trained.
Values come from, in increasing priority: the defaults below, a YAML/TOML file, command-line flags.
Every value is checked here, before any model is loaded, so a typo fails in milliseconds with a
message that says what to change, instead of after minutes of loading.
"""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from zotune.adapters import MODES
from zotune.rng import NOISE_KINDS
from zotune.tasks.batches import OBJECTIVES

DEMO_LR = 3e-5  # measured for the README demo (MeZO, SmolLM2, 400 steps)

DEFAULT_NOISE = "rademacher"  # the CLI's ZO directions: same second moment as Gaussian, far cheaper on a CPU
DTYPES = ("fp32", "bf16", "fp16")
AUTOCASTS = ("bf16",)  # or None: no autocast
DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?|mps)$")


@dataclass
class TrainConfig:
    """Everything that defines a fine-tuning run.

    The defaults are the README demo (SmolLM2-135M on the packaged SST-2 sample with MeZO, sized
    to finish in under 20 minutes on 2 CPU cores) except ``lr``: unset hyperparameters (None) take
    the optimizer's own defaults, and ``zotune demo`` adds ``DEMO_LR``. Parameter-free methods
    (AdaNAGED) take no lr or eps at all.
    """

    model: str = "smollm2"
    task: str = "sst2"
    task_spec: str | dict | None = None
    data_dir: str | None = None
    objective: str = "loss"
    icl_shots: int = 0
    optimizer: str = "mezo"
    lr: float | None = None
    eps: float | None = None
    noise: str | None = None
    weight_decay: float | None = None
    steps: int = 400
    batch_size: int = 16
    eval_every: int = 100
    eval_examples: int | None = 500
    test_examples: int | None = 1000
    max_length: int | None = None
    max_new_tokens: int | None = None
    seed: int = 0
    dtype: str = "fp32"
    autocast: str | None = "bf16"
    device: str = "auto"
    out: str | None = None
    trainable: str | None = None
    mode: str = "ft"
    lora_r: int = 8
    lora_alpha: float = 16.0
    lora_targets: str | None = None
    virtual_tokens: int = 20
    grad_accum: int = 1
    evaluation_ranks: int = 1
    rank_timeout_s: float = 300.0
    log_every: int = 1
    save_weights: bool = True
    save_every: int = 500
    max_skips: int = 5
    optimizer_kwargs: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


HELP = {
    'model': "'smollm2', 'gemma3', a .gguf file, a Hugging Face folder, or 'tiny-llama' / 'tiny-opt' (tests)",
    'task': "a task name (sst2, rte, cb, boolq, wsc, wic, multirc, copa, record, squad, drop) or a path to "
            "your own .jsonl/.csv/.tsv data (then give --task-spec)",
    'task_spec': "for your own data: a YAML file (or, in a config file, an inline mapping) with the prompt "
                 "template and the label/choices/completion fields (see docs/tasks.md)",
    'data_dir': "folder laid out like the benchmark data (RTE/train.jsonl, SQuAD/dev-v1.1.json, ...); "
                "unset: $ZOTUNE_DATA, and for sst2 the sample packaged with zotune",
    'objective': "what training minimises: 'loss' (cross-entropy), or the negative batch 'accuracy' or 'f1' "
                 "(no gradient: zeroth-order optimizers only; f1 for generation tasks)",
    'icl_shots': "in-context demonstrations drawn from train (fixed seed) prepended to every evaluated prompt, "
                 "as many as fit the context (MeZO's ICL baseline uses 32); 0: zero-shot",
    'optimizer': 'optimizer name (see zotune.optim.OPTIMIZERS)',
    'lr': "learning rate (unset: the optimizer's default; `zotune demo` uses 3e-5)",
    'eps': "perturbation scale of zeroth-order optimizers (unset: the optimizer's default, 1e-3 for MeZO)",
    'noise': "direction distribution of zeroth-order optimizers: 'rademacher' (±1, cheap to draw on a "
             "CPU) or 'gaussian' (MeZO's N(0, I)); both have E[zz^T] = I. Unset: rademacher",
    'weight_decay': "weight decay (unset: the optimizer's default)",
    'steps': 'number of optimizer steps',
    'batch_size': 'training examples per step',
    'eval_every': 'evaluate on dev every this many steps (0: only at the end)',
    'eval_examples': "dev examples used at each evaluation ('none': all)",
    'test_examples': "test examples for the zero-shot and fine-tuned accuracy ('none': all)",
    'max_length': "maximum tokens per sequence, prompt + answer (longer prompts lose words on the left); "
                  "unset: the model's context length",
    'max_new_tokens': "generation tasks: token budget of a generated answer (unset: the task's own, 50 for "
                      "SQuAD and DROP as in MeZO)",
    'seed': 'seed of the batch order and of ZO perturbations',
    'dtype': 'weight dtype. Keep fp32 for ZO: bf16 weights swallow eps-sized perturbations',
    'autocast': "compute dtype of the forward pass ('bf16' or None)",
    'device': 'auto, cpu, cuda, cuda:N or mps',
    'out': 'run folder; unset picks runs/<task>-<optimizer>-s<seed>',
    'trainable': 'regex on parameter names (re.search); only matching parameters are trained. Unset: all',
    'mode': "what is trained: 'ft' (the weights), or a peft adapter on frozen weights: 'lora', 'prefix' (prefix "
            "tuning) or 'prompt' (prompt tuning); see docs/integrations.md",
    'lora_r': 'LoRA rank r (--mode lora)',
    'lora_alpha': 'LoRA scale α; the update is (α/r)·B·A (--mode lora)',
    'lora_targets': "LoRA's modules: unset for peft's defaults of the architecture, 'all-linear', or "
                    "comma-separated module names such as q_proj,v_proj (--mode lora)",
    'virtual_tokens': 'learned virtual tokens (--mode prefix or prompt)',
    'grad_accum': "split each step's batch into this many micro-batches that share the step's directions and "
                  "whose losses are averaged: the same step, one micro-batch's activation memory",
    'evaluation_ranks': "under torchrun: ranks that share out each step's forward passes on the same batch "
                        "(evaluation-parallel); the world size / this many groups split the batch (data-parallel). "
                        "1: data-parallel only; the world size: evaluation-parallel only",
    'rank_timeout_s': "under torchrun: seconds a rank waits for the others before the run stops on every rank "
                      "(raise it if checkpoints of a large model take longer to write)",
    'log_every': 'write a metrics.jsonl line every this many steps',
    'save_weights': 'save trainable weights as model.safetensors',
    'save_every': "write a resumable checkpoint (weights, optimizer state) every this many steps (0: only at "
                  "the end and on SIGINT/SIGTERM); a resume replays the trajectory from the last one",
    'max_skips': "a step whose loss is NaN/inf is skipped (weights unchanged); stop the run after this many "
                 "skips in a row (0: stop at the first)",
    'optimizer_kwargs': 'extra keyword arguments for the optimizer (e.g. momentum, betas)',
}
"""One line per field: the --help text of its command-line flag."""

FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
_HINTS = typing.get_type_hints(TrainConfig)


def _base_type(name: str) -> tuple[type, bool]:
    """(the non-None type of a field, whether None is allowed)."""
    hint = _HINTS[name]
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        non_none = [a for a in args if a is not type(None)]
        return typing.get_origin(non_none[0]) or non_none[0], True
    return typing.get_origin(hint) or hint, False


def _coerce(name: str, value: Any) -> Any:
    """Convert a value from a file or flag to the field's type, or raise a ValueError naming it.

    YAML 1.1 reads '1e-5' as a string, so numeric strings are accepted for float fields; the
    string 'none'/'null' means None for optional fields (handy on the command line).
    """
    typ, optional = _base_type(name)
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null")):
        if optional:
            return None
        raise ValueError(f"config field '{name}' must not be empty (expected {typ.__name__})")
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
    elif typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
    elif typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif typ is str:
        if name == "task_spec" and isinstance(value, dict):  # an inline spec in a config file
            return dict(value)
        if isinstance(value, (str, Path)):
            return str(value)
    elif typ is dict:
        if isinstance(value, dict):
            return dict(value)
    else:  # pragma: no cover - a new field type without a rule here
        return value
    raise ValueError(
        f"config field '{name}' must be {typ.__name__}{' or null' if optional else ''}, "
        f"got {type(value).__name__} {value!r}"
    )


def _unknown_keys_error(unknown: list[str], where: str) -> ValueError:
    valid = ", ".join(FIELDS)
    return ValueError(f"unknown config key(s) {', '.join(map(repr, unknown))} in {where}; valid keys: {valid}")


def from_dict(values: dict[str, Any], where: str = "config") -> TrainConfig:
    """Build a validated TrainConfig from a plain mapping (e.g. a parsed file)."""
    return merge(TrainConfig(), values, where=where, skip_none=False)


def merge(config: TrainConfig, overrides: dict[str, Any] | None, where: str = "overrides",
          skip_none: bool = True) -> TrainConfig:
    """Return a copy of ``config`` with ``overrides`` applied, then validated.

    By default keys whose value is None are treated as "not given" (argparse leaves unset flags at
    None), so command-line flags only override the values they actually name; to set an optional
    field to None from the command line, pass the string 'none'. Files use ``skip_none=False``:
    there ``null`` means None.
    """
    overrides = {k.replace("-", "_"): v for k, v in (overrides or {}).items()
                 if v is not None or not skip_none}
    unknown = sorted(set(overrides) - set(FIELDS))
    if unknown:
        raise _unknown_keys_error(unknown, where)
    coerced = {k: _coerce(k, v) for k, v in overrides.items()}
    new = dataclasses.replace(config, **coerced)
    validate(new)
    return new


def load_config(path: str | Path) -> TrainConfig:
    """Read a TrainConfig from a .yaml/.yml or .toml file (unknown keys and bad types are errors)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    suffix = path.suffix.lower()
    text = path.read_text(encoding="utf-8")
    try:
        if suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text)
        elif suffix == ".toml":
            data = tomllib.loads(text)
        else:
            raise ValueError(f"config file {path} must end in .yaml, .yml or .toml (got '{suffix or 'no suffix'}')")
    except yaml.MarkedYAMLError as e:  # one line: where, and what, not PyYAML's multi-line excerpt
        def at(mark):
            return f"line {mark.line + 1}, column {mark.column + 1}"

        where = f", {at(e.problem_mark)}" if e.problem_mark is not None else ""
        context = (f" ({e.context} started at {at(e.context_mark)})"
                   if e.context and e.context_mark is not None and e.problem else "")
        raise ValueError(f"cannot parse config file {path}{where}: {e.problem or e.context}{context}; write one "
                         "'key: value' per line, indented with spaces (see configs/demo.yaml)") from None
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as e:
        raise ValueError(f"cannot parse config file {path}: {e}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must contain a mapping of keys to values, got {type(data).__name__}")
    return from_dict(data, where=str(path))


def save_config(config: TrainConfig, path: str | Path) -> None:
    """Write the config as YAML that :func:`load_config` reads back to an equal config."""
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False), encoding="utf-8")


def known_optimizers() -> list[str]:
    """Names accepted by zotune.optim.build_optimizer."""
    from zotune.optim import available

    return available()


def is_zeroth_order_name(optimizer: str) -> bool:
    """Whether the named optimizer is zeroth-order (True for names the registry lacks)."""
    from zotune.optim import OPTIMIZERS

    entry = OPTIMIZERS.get(optimizer)
    return True if entry is None else bool(entry[2])


def _check_task(c: TrainConfig) -> None:
    """The task exists (or the own-data spec parses) and takes the objective; data is read later."""
    from zotune.tasks import check_objective, get_task

    task = get_task(c.task, spec=c.task_spec)
    check_objective(task, c.objective)


def _doubled_options(c: TrainConfig, zeroth_order: bool) -> list[str]:
    """Problems for optimizer_kwargs that set what a config field sets: the trainer passes both, and
    one would silently beat the other (``--opt lr=`` used to override ``--lr``). A first-order
    optimizer's ``eps`` is its own epsilon (AdamW's), not the field's perturbation scale."""
    fields = ("lr", "weight_decay") + (("eps", "seed", "noise") if zeroth_order else ())
    problems = []
    for key in fields:
        if key in c.optimizer_kwargs:
            flag = "--" + key.replace("_", "-")
            problems.append(f"optimizer option {key}={c.optimizer_kwargs[key]} sets what {flag} (config key "
                            f"{key}) sets; give it once, as {flag} {c.optimizer_kwargs[key]} (not --opt {key}=...)")
    return problems


def validate(config: TrainConfig) -> None:
    """Raise ValueError for a config that cannot run, saying what is wrong and how to fix it."""
    c = config
    problems = []
    if c.steps < 1:
        problems.append(f"steps must be >= 1 (got {c.steps}); set --steps to the number of optimizer steps")
    if c.batch_size < 1:
        problems.append(f"batch_size must be >= 1 (got {c.batch_size}); use e.g. --batch-size 16")
    for flag, v in (("lr", c.lr), ("eps", c.eps), ("weight-decay", c.weight_decay)):
        if v is not None and not math.isfinite(v):
            problems.append(f"--{flag} must be a finite number (got {v}); NaN or infinity would turn every weight "
                            f"into NaN: give a finite value, or leave --{flag} unset for the optimizer's default")
    if c.lr is not None and c.lr < 0:
        problems.append(f"lr must be >= 0 (got {c.lr}); a learning rate is a positive step size, e.g. --lr 1e-6")
    if c.eps is not None and c.eps <= 0:
        problems.append(f"eps must be > 0 (got {c.eps}); it is the perturbation scale, e.g. --eps 1e-3")
    if c.weight_decay is not None and c.weight_decay < 0:
        problems.append(f"weight_decay must be >= 0 (got {c.weight_decay})")
    if c.eval_every < 0:
        problems.append(f"eval_every must be >= 0 (got {c.eval_every}); 0 evaluates only at the end")
    if c.save_every < 0:
        problems.append(f"save_every must be >= 0 (got {c.save_every}); 0 checkpoints only at the end")
    if c.max_skips < 0:
        problems.append(f"max_skips must be >= 0 (got {c.max_skips}); 0 stops at the first non-finite loss")
    if c.log_every < 1:
        problems.append(f"log_every must be >= 1 (got {c.log_every})")
    if c.mode not in MODES:
        problems.append(f"mode must be one of {', '.join(MODES)} (got '{c.mode}')")
    if c.lora_r < 1 or not math.isfinite(c.lora_alpha) or c.lora_alpha <= 0:
        problems.append(f"lora_r must be >= 1 and lora_alpha > 0 (got {c.lora_r}, {c.lora_alpha})")
    if c.virtual_tokens < 1:
        problems.append(f"virtual_tokens must be >= 1 (got {c.virtual_tokens})")
    if c.mode != "ft" and c.trainable is not None:
        problems.append(f"--trainable chooses weights to train, and --mode {c.mode} trains an adapter instead: drop "
                        "one of them")
    if c.mode in ("prefix", "prompt") and c.icl_shots:
        problems.append(f"--mode {c.mode} puts learned tokens in front of every prompt, which in-context "
                        "demonstrations would separate from it: use --icl-shots 0, or --mode lora")
    if c.grad_accum < 1 or c.batch_size % max(c.grad_accum, 1):
        problems.append(f"grad_accum must be >= 1 and divide batch_size (got {c.grad_accum} for a batch of "
                        f"{c.batch_size}): each step's batch is split into that many equal micro-batches")
    if c.evaluation_ranks < 1:
        problems.append(f"evaluation_ranks must be >= 1 (got {c.evaluation_ranks}); 1 is data-parallel only")
    if not (c.rank_timeout_s > 0 and math.isfinite(c.rank_timeout_s)):
        problems.append(f"rank_timeout_s must be a positive number of seconds (got {c.rank_timeout_s})")
    if c.max_length is not None and c.max_length < 8:
        problems.append(f"max_length must be >= 8 tokens (got {c.max_length})")
    if c.max_new_tokens is not None and c.max_new_tokens < 1:
        problems.append(f"max_new_tokens must be >= 1 or none (got {c.max_new_tokens})")
    if c.icl_shots < 0:
        problems.append(f"icl_shots must be >= 0 (got {c.icl_shots}); 0 evaluates zero-shot, MeZO's ICL uses 32")
    if c.objective not in OBJECTIVES:
        problems.append(f"objective must be one of {', '.join(OBJECTIVES)} (got '{c.objective}')")
    for name in ("eval_examples", "test_examples"):
        v = getattr(c, name)
        if v is not None and v < 1:
            problems.append(f"{name} must be >= 1 or none (got {v}); 'none' uses the whole split")
    if c.dtype not in DTYPES:
        problems.append(f"dtype must be one of {', '.join(DTYPES)} (got '{c.dtype}')")
    if c.autocast is not None and c.autocast not in AUTOCASTS:
        problems.append(f"autocast must be 'bf16' or none (got '{c.autocast}')")
    if not DEVICE_RE.match(c.device):
        problems.append(f"device must be auto, cpu, cuda, cuda:N or mps (got '{c.device}')")
    if c.trainable is not None:
        try:
            re.compile(c.trainable)
        except re.error as e:
            problems.append(f"trainable is not a valid regular expression ({e}): {c.trainable!r}")
    if c.noise is not None and c.noise not in NOISE_KINDS:
        problems.append(f"noise must be one of {', '.join(NOISE_KINDS)} (got '{c.noise}')")
    names = known_optimizers()
    if c.optimizer not in names:
        problems.append(f"unknown optimizer '{c.optimizer}'; choose one of: {', '.join(names)}")
    else:
        zeroth_order = is_zeroth_order_name(c.optimizer)
        if c.objective != "loss" and not zeroth_order:
            problems.append(f"objective '{c.objective}' has no gradient, so it needs a zeroth-order optimizer "
                            f"('{c.optimizer}' is first-order): use e.g. --optimizer mezo, or --objective loss")
        if c.eps is not None and not zeroth_order:
            problems.append(f"eps is the perturbation scale of zeroth-order optimizers and '{c.optimizer}' is "
                            "first-order, so it would be ignored: drop --eps (an optimizer's own epsilon, such as "
                            "AdamW's, is --opt eps=...)")
        if c.noise is not None and not zeroth_order:
            problems.append(f"noise is the direction distribution of zeroth-order optimizers and '{c.optimizer}' is "
                            "first-order, so it would be ignored: drop --noise")
        problems += _doubled_options(c, zeroth_order)
    if problems:
        raise ValueError("invalid config: " + "; ".join(problems))
    _check_task(c)
