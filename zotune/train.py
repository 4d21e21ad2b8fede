"""The training loop: one loop for zeroth-order and first-order optimizers, new or resumed.

``train(config)`` checks everything, loads the model and task, measures the zero-shot test score,
runs ``config.steps`` optimizer steps on seeded mini-batches, evaluates on dev along the way,
measures the fine-tuned test score, and leaves a run folder (``zotune.run_folder``). Each step is
appended to the run's trajectory (``zotune.trajectory``) before the next begins, so
``resume(run)`` continues a killed run to the same weights, bit for bit: from the latest
checkpoint, with the later steps played back from the trajectory.

ZO and first-order (FO) optimizers share the loop; only the closure differs. Both run the model
in eval mode (dropout off), so the two kinds optimise the same deterministic objective.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import re
import resource
import shutil
import signal
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from zotune.adapters import apply_adapter, load_adapter, save_adapter
from zotune.config import DEFAULT_NOISE, TrainConfig, load_config, merge, save_config, validate
from zotune.distributed import Layout, is_writer, join, mean_of
from zotune.errors import TrainingFailure
from zotune.signals import install as install_signals
from zotune.optim import (OPTIMIZERS, NonFiniteLossError, NonFiniteUpdateError, build_optimizer, check_args,
                           is_zeroth_order)
from zotune.tasks import Task, encode, evaluate, get_task, loss_fn, looks_like_data
from zotune.tasks.encoding import model_context
from zotune.tasks.evaluation import MIN_LENGTH
from zotune.tasks.icl import draw_demonstrations, evaluate_in_context, shots_summary
from zotune.run_folder import (MetricsLog, atomic_write, check_out_dir, latest_checkpoint, load_weights, open_run_dir,
                               finish_cut_move, read_metrics_until, replace_old_run, save_checkpoint, save_weights, sweep_temps,
                               unstarted_run, write_json)
from zotune.trajectory import FILE_NAME as TRAJECTORY
from zotune.trajectory import (StepRecord, TrajectoryError, TrajectoryWriter, make_header, play, read_trajectory,
                               weights_hash)

RUN_FILES = ("config.yaml", "metrics.jsonl", "results.json", "model.safetensors")
TB_DIR = "tb"


# --------------------------------------------------------------------------- small utilities

def _peak_memory_mb(device: torch.device) -> tuple[float, str]:
    """Peak memory of this run: accelerator allocations on CUDA, process RSS otherwise."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return (rss / 2**20 if sys.platform == "darwin" else rss / 1024), "max_rss"


def default_out(config: TrainConfig) -> str:
    task = Path(config.task).stem if looks_like_data(config.task) else config.task
    return os.path.join("runs", f"{task}-{config.optimizer}-s{config.seed}")


def optimizer_hparams(config: TrainConfig) -> dict[str, Any]:
    """The configured optimizer's arguments; ZO ones also get eps and seed (first-order ones have no
    such arguments, and AdamW's own ``eps`` means something else). None values: method defaults."""
    hp: dict[str, Any] = {"lr": config.lr, "weight_decay": config.weight_decay}
    if OPTIMIZERS[config.optimizer][2]:  # zeroth-order
        hp.update(eps=config.eps, seed=config.seed, noise=config.noise or DEFAULT_NOISE)
    hp.update(config.optimizer_kwargs)
    return hp


def absolute_paths(config: TrainConfig) -> TrainConfig:
    """The config with its data paths made absolute, so that the saved config.yaml (read by
    ``zotune eval --run``) names the same files from any working directory."""
    def absolute(value):
        return str(Path(value).expanduser().resolve()) if isinstance(value, str) else value

    return dataclasses.replace(
        config,
        task=absolute(config.task) if looks_like_data(config.task) else config.task,
        task_spec=absolute(config.task_spec),
        data_dir=absolute(config.data_dir),
    )


# --------------------------------------------------------------------------- parameters and weights

def select_trainable(model: torch.nn.Module, pattern: str | None) -> list[tuple[str, torch.nn.Parameter]]:
    """Set requires_grad from the ``trainable`` regex, among the parameters the model leaves
    trainable (an adapter's, under peft); return the trainable (name, param) pairs.

    named_parameters() lists a tied (shared) tensor once, under its first name, so each tensor is
    trained - and saved - exactly once.
    """
    rx = re.compile(pattern) if pattern is not None else None
    named = []
    for name, p in model.named_parameters():
        p.requires_grad_(p.requires_grad and (rx is None or bool(rx.search(name))))
        if p.requires_grad:
            named.append((name, p))
    if not named:
        names = [n for n, _ in model.named_parameters()][:8]
        raise ValueError(f"trainable pattern {pattern!r} matches no parameter; names look like: {', '.join(names)}")
    return named


# --------------------------------------------------------------------------- batches and closures

class BatchSampler:
    """Epoch-wise shuffled batches from a private ``random.Random(seed)``.

    Private so that the batch order depends only on the seed - not on whatever else (model
    init, dropout, a user's own code) consumed the global RNG.
    """

    def __init__(self, n: int, batch_size: int, seed: int):
        if batch_size > n:
            raise ValueError(f"batch_size {batch_size} is larger than the {n} training examples")
        self.n, self.batch_size = n, batch_size
        self.rng = random.Random(seed)
        self.order: list[int] = []

    def next(self) -> list[int]:
        if len(self.order) < self.batch_size:
            perm = list(range(self.n))
            self.rng.shuffle(perm)
            self.order += perm
        idx, self.order = self.order[:self.batch_size], self.order[self.batch_size:]
        return idx


def make_closure(model, batches: list[tuple[int, dict]], device, autocast, zeroth_order: bool, opt,
                 counter: list[int]):
    """The closure for ``opt.step`` over one step's micro-batches, (examples, batch) pairs
    (``--grad-accum``; usually one).

    ZO: forward only (the optimizer calls it under no_grad, perturbing the weights itself): the
    examples' mean loss over the micro-batches (``distributed.mean_of``: float64 sums, the
    arithmetic ranks combine their shards with), so every micro-batch is read at the same perturbed
    point and the step is the one of the whole batch, with one micro-batch's activations alive.
    FO: the standard zero_grad/forward/backward closure, each micro-batch's loss/k backpropagated in
    turn; a non-finite loss (before backward) or gradient (after it) raises before torch's
    optimizers touch the weights, matching the ZO guarantee.
    """
    k = len(batches)

    def zo_closure():
        parts = []
        for n, batch in batches:
            counter[0] += 1
            with autocast_context(device, autocast):
                parts.append((n, loss_fn(model, batch)))
        return mean_of(parts)

    def fo_closure():
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for _, batch in batches:
            counter[0] += 1
            with torch.enable_grad(), autocast_context(device, autocast):
                loss = loss_fn(model, batch) / k
            if not torch.isfinite(loss.detach()).all():
                raise NonFiniteLossError(f"non-finite loss {loss.item() * k}")
            loss.backward()
            total = total + loss.detach()
        grads = [p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None]
        if grads and not all(bool(torch.isfinite(g).all()) for g in grads):
            raise NonFiniteLossError(f"non-finite gradient (loss {float(total)}): no weight was changed")
        return total

    return zo_closure if zeroth_order else fo_closure


def step_closure(s, indices: list[int], counter: list[int]):
    """(closure, micro-batches) of one step over the training examples ``indices``. Under torchrun
    this rank reads its shard of them and the closure's value is the whole batch's mean loss
    (``Layout.closure``: one float64 all-reduced per forward)."""
    if s.layout is None:
        batches = micro_batches(s, indices)
        return make_closure(s.model, batches, s.device, s.config.autocast, s.zeroth_order, s.opt, counter), batches
    batches = micro_batches(s, s.layout.batch_share(indices))
    return s.layout.closure(split_closures(s, batches, counter), len(indices)), batches


def split_closures(s, batches: list[tuple[int, dict]], counter: list[int]) -> list[tuple[int, Any]]:
    """(examples, closure) per micro-batch: the parts a ``Layout`` sums over ranks."""
    return [(n, make_closure(s.model, [(n, b)], s.device, s.config.autocast, True, s.opt, counter))
            for n, b in batches]


def micro_batches(s, indices: list[int]) -> list[tuple[int, dict]]:
    """The step's examples ``indices`` encoded as ``grad_accum`` equal micro-batches: (examples,
    batch) pairs."""
    config = s.config
    size = len(indices) // config.grad_accum
    return [(size, encode(s.task, s.tokenizer, [s.train_ex[i] for i in indices[j:j + size]],
                          max_length=s.max_length, objective=config.objective))
            for j in range(0, len(indices), size)]


def make_anchor_closure(s, opt, step: int, counter: list[int]):
    """The large-batch closure of an optimizer that asks for one at this step (MeZO-SVRG's anchor:
    ``opt.anchor_due()``), else None: the mean loss of ``opt.anchor_batch_size`` training examples
    drawn for this step from the run seed (so a resumed run draws the same ones, and the training
    batches are not disturbed), run in microbatches of the training batch size."""
    due = getattr(opt, "anchor_due", None)
    if due is None or not due():
        return None
    config = s.config
    pick = random.Random(f"anchor {config.seed} {step}").sample(range(len(s.train_ex)),
                                                                 min(opt.anchor_batch_size, len(s.train_ex)))
    mine = s.layout.anchor_share(pick) if s.layout else pick
    parts = [mine[i:i + config.batch_size] for i in range(0, len(mine), config.batch_size)]
    batches = [(len(p), encode(s.task, s.tokenizer, [s.train_ex[i] for i in p], max_length=s.max_length,
                               objective=config.objective)) for p in parts]
    if s.layout:
        return s.layout.closure(split_closures(s, batches, counter), len(pick))
    return make_closure(s.model, batches, s.device, config.autocast, True, opt, counter)


def autocast_context(device, autocast):
    from zotune.models import autocast_context as ctx
    return ctx(device, autocast) if autocast else nullcontext()


# --------------------------------------------------------------------------- logging

def non_finite_tensors(named_params) -> list[str]:
    """Names of the tensors among ``named_params`` ((name, tensor) pairs) holding NaN or inf."""
    return [name for name, p in named_params if not bool(torch.isfinite(p.detach()).all())]


def _log(msg: str) -> None:
    if is_writer():  # under torchrun, rank 0 speaks for all
        print(f"zotune: {msg}", file=sys.stderr, flush=True)


class Discard:
    """The trajectory writer and metrics log of a rank that writes nothing (all but rank 0)."""

    def append(self, *args) -> None:
        pass

    write = cut = close = append


# --------------------------------------------------------------------------- the run

RESUME_MAY_CHANGE = ("steps", "save_every", "max_skips", "evaluation_ranks", "rank_timeout_s")
"""Config fields a resumed run may change; any other change would make it another run."""


class StopSignals:
    """SIGINT and SIGTERM during training only note the signal: the step under way finishes (or,
    during its forward passes, never started writing), then the loop checkpoints and exits with
    128 + the signal's number. A second signal interrupts at once (the trajectory is already on disk)."""

    def __init__(self):
        self.received: int | None = None

    def _note(self, signum, frame) -> None:
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signum
        _log(f"{signal.Signals(signum).name} received: finishing this step, then writing a checkpoint "
             "(send it again to stop at once)")

    def __enter__(self):
        self.restore = install_signals(self._note)
        return self

    def __exit__(self, *exc) -> None:
        self.restore()


@dataclasses.dataclass
class Session:
    """What one training session works with: a new run, or a resumed one."""

    config: TrainConfig
    task: Task
    train_ex: list
    dev_ex: list
    test_ex: list
    model: torch.nn.Module
    tokenizer: Any
    named: list
    opt: Any
    device: torch.device
    max_length: int
    out: Path
    t_start: float
    layout: Layout | None = None  # how the ranks share the work, under torchrun

    @property
    def zeroth_order(self) -> bool:
        return is_zeroth_order(self.opt)

    @property
    def writes(self) -> bool:
        """Whether this process writes the run folder: rank 0, or the only process."""
        return self.layout is None or self.layout.rank == 0

    def shared(self, fn, examples) -> dict:
        """``fn(examples)``, an evaluation, shared out over the ranks under torchrun."""
        return self.layout.evaluate(fn, examples) if self.layout else fn(examples)

    def evaluate(self, examples) -> dict:
        return self.shared(lambda part: evaluate(self.model, self.tokenizer, self.task, part, batch_size=32,
                                                 autocast=self.config.autocast, device=self.device,
                                                 max_length=self.max_length), examples)


@dataclasses.dataclass
class Progress:
    """The loop's counters, all recoverable from the trajectory and metrics.jsonl on resume."""

    step: int = 0
    forward_passes: int = 0
    train_time_s: float = 0.0
    best_dev: float | None = None
    best_step: int | None = None
    last_dev: float | None = None
    last_loss: float = float("nan")
    skips_in_row: int = 0
    skipped: int = 0
    logged: int = 0  # the last step metrics.jsonl has a line for
    sampler: Any = None  # the batch sampler, positioned after ``step``


def prepare(config: TrainConfig, out: Path | None, overwrite: bool, t_start: float) -> Session:
    """Check everything a run needs, then load the data, the model and the optimizer. Nothing in
    the run folder is touched here, so bad input never damages an old run."""
    from zotune.models import resolve_device

    validate(config)
    # All the data first: a bad file must fail in milliseconds, before a model or a run folder exists.
    task, train_ex, dev_ex, test_ex = load_task_data(config)
    check_args(config.optimizer, optimizer_hparams(config))  # a mistyped --opt fails before the model loads
    if config.batch_size > len(train_ex):
        raise ValueError(f"batch_size {config.batch_size} is larger than the {len(train_ex)} training examples; "
                         f"use --batch-size {len(train_ex)} or fewer, or more training data")
    if out is None:
        out = check_out_dir(config.out or default_out(config), overwrite)
        config = dataclasses.replace(absolute_paths(config), out=str(out))  # the saved config names its folder
    layout = join_ranks(config)
    device = resolve_device(config.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _log(f"loading model {config.model} ({config.dtype}) on {device}")
    model, tokenizer = load_run_model(config, str(device))
    named = select_trainable(model, config.trainable)
    opt = build_optimizer(config.optimizer, named, **optimizer_hparams(config))
    if layout is not None and layout.split is not None:
        opt.engine.split = layout.split
    return Session(config, task, train_ex, dev_ex, test_ex, model, tokenizer, named, opt, device,
                   config.max_length or model_context(model), out, t_start, layout)


def join_ranks(config: TrainConfig) -> Layout | None:
    """Under torchrun: check that the run can be shared out, then join the other ranks (before the
    model loads: NCCL picks this rank's GPU). None in one process."""
    from zotune.config import is_zeroth_order_name
    from zotune.distributed import launched
    from zotune.optim import optimizer_class

    if not launched():
        return None
    if not is_zeroth_order_name(config.optimizer):
        raise ValueError(f"{config.optimizer} is first-order: under torchrun zotune shares out zeroth-order steps "
                         "only (ranks agree on losses, not gradients); run it in one process, or use DDP")
    if not optimizer_class(config.optimizer).scalar_closure:
        raise ValueError(f"{config.optimizer} reads derivatives from its closure, which ranks cannot combine by "
                         "sending losses; run it in one process")
    world = int(os.environ["WORLD_SIZE"])
    data_ranks = world // config.evaluation_ranks if world % config.evaluation_ranks == 0 else None
    if data_ranks is not None and config.batch_size % (data_ranks * config.grad_accum):
        raise ValueError(f"a batch of {config.batch_size} does not split over {data_ranks} data-parallel ranks × "
                         f"{config.grad_accum} micro-batches; use a --batch-size divisible by "
                         f"{data_ranks * config.grad_accum}")
    return join(config.evaluation_ranks, config.rank_timeout_s)


def load_run_model(config: TrainConfig, device: str, model: str | None = None):
    """(model, tokenizer) a run trains: the base model (``model``, default the config's) in eval
    mode (dropout off for both ZO and FO: one deterministic objective), with the config's adapter
    (``--mode``) initialised from the run seed."""
    from zotune.models import load_model

    net, tokenizer = load_model(model or config.model, dtype=config.dtype, device=device)
    net = apply_adapter(net, config.mode, config.seed, lora_r=config.lora_r, lora_alpha=config.lora_alpha,
                        lora_targets=config.lora_targets, virtual_tokens=config.virtual_tokens)
    net.eval()
    return net, tokenizer


def train(config: TrainConfig, overwrite: bool = False, progress: bool = True) -> dict:
    """Fine-tune as ``config`` says; return the results (also written to ``<out>/results.json``).

    A step whose loss is not finite is skipped (weights unchanged); ``config.max_skips`` skips in
    a row stop the run with the last good weights, and ``"stopped"`` in the results (the CLI then
    exits with code 1). SIGINT/SIGTERM end the run with a checkpoint, resumable with ``resume``.
    """
    s = prepare(config, None, overwrite, time.perf_counter())
    # Everything the run needs now exists: only from here on may the run folder change.
    out, swap, writer = s.out, None, Discard()
    if s.writes:
        s.out = open_run_dir(out, overwrite)  # a staging folder until the first step is on disk
        swap = (s.out, out)
    try:
        n_train = sum(p.numel() for _, p in s.named)
        _log(f"{s.config.optimizer} ({'zeroth' if s.zeroth_order else 'first'}-order) on "
             f"{n_train:,} trainable parameters in {len(s.named)} tensors -> {out}" +
             (f", {s.layout.describe()}" if s.layout else ""))
        if s.writes:
            atomic_write(s.out / "config.yaml", lambda p: save_config(s.config, p))
            header = make_header(trajectory_config(s.config), weights_hash(s.named), s.named, s.device.type)
            writer = TrajectoryWriter(s.out / TRAJECTORY, header)
        base = run_baseline(s)
    except BaseException:
        if swap:
            shutil.rmtree(swap[0], ignore_errors=True)
        raise
    return run_loop(s, Progress(), writer, base, progress, swap=swap)


def trajectory_config(config: TrainConfig) -> dict:
    """The config as a trajectory header keeps it: what defines the run's steps (not where it is
    saved, how long it runs, or how often it checkpoints)."""
    return {k: v for k, v in config.to_dict().items() if k not in ("out", *RESUME_MAY_CHANGE)}


def run_baseline(s: Session) -> dict:
    """The zero-shot (or ICL) test evaluation before training, kept in baseline.json so that a
    resumed run does not redo it (under torchrun rank 0 decides, and the ranks share it out)."""
    path = s.out / "baseline.json"
    known = None
    if s.writes and path.is_file():
        try:
            known = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            pass  # a damaged file: measure again
    if s.layout is not None and s.layout.from_rank0(known is not None):
        return known or {"result": {"metric": s.task.metric, "score": None}, "icl": None}  # rank 0 reports it
    if known is not None:
        return known
    what = "ICL" if s.config.icl_shots else "zero-shot"
    _log(f"{what} evaluation on {len(s.test_ex)} test examples ({s.task.metric})")
    shown = {}

    def measure(part):
        result, shown["icl"] = baseline(s.model, s.tokenizer, s.task, s.train_ex, part, s.config.icl_shots,
                                        s.max_length, batch_size=32, autocast=s.config.autocast, device=s.device)
        return result

    base = {"result": s.shared(measure, s.test_ex), "icl": shown["icl"]}
    if s.writes:
        write_json(path, base)
    return base


def resume(run: str | Path, changes: dict | None = None, progress: bool = True) -> dict:
    """Continue the run in folder ``run`` after a crash, a kill or a signal, to final weights
    bit-identical to an uninterrupted run's. ``changes`` may set the fields of ``RESUME_MAY_CHANGE``
    (e.g. more ``steps``); any other field must equal the run's own."""
    t_start = time.perf_counter()
    out = Path(run)
    if out.is_dir() and is_writer():
        finish_cut_move(out)
    if unstarted_run(out):
        raise ValueError(f"the run in {out} was stopped before its first step, so there is nothing to resume; "
                         "start it again with the same command")
    if not (out / "config.yaml").is_file():
        raise FileNotFoundError(f"{out} is not a zotune run folder (no config.yaml); give the --out of a run")
    config = load_config(out / "config.yaml")
    changes = {k: v for k, v in (changes or {}).items() if v is not None}
    merged = merge(config, changes, where="resume flags")
    differ = [k for k in changes if k not in RESUME_MAY_CHANGE and getattr(merged, k) != getattr(config, k)]
    if differ:
        raise ValueError(f"{out} was made with {', '.join(f'{k}={getattr(config, k)!r}' for k in differ)}; a resume "
                         f"continues the run with its own config (only {', '.join(RESUME_MAY_CHANGE)} may change). "
                         "Start a new run with another --out to change the rest")
    config = dataclasses.replace(merged, out=str(out))
    finished = _read_results(out)
    if finished is not None and finished.get("stopped"):
        raise ValueError(f"{out} stopped ({finished['stopped']}) and cannot continue: its last steps gave "
                         "non-finite losses. Start a new run with a smaller --lr")
    if finished is not None and finished.get("steps", 0) >= config.steps:
        raise ValueError(f"{out} already finished its {finished['steps']} steps; pass --steps N (more than "
                         f"{finished['steps']}) to train it further")
    traj = read_trajectory(out)
    if traj.header["config"] != trajectory_config(config):
        diff = sorted(k for k in set(traj.header["config"]) | set(trajectory_config(config))
                      if traj.header["config"].get(k) != trajectory_config(config).get(k))
        raise TrajectoryError(f"{out}/config.yaml differs from the config its trajectory was recorded with "
                              f"(fields {', '.join(diff)}); restore the run's config.yaml, or start a new run")
    if traj.torn_bytes:
        _log(f"warning: the trajectory's last record was cut short or damaged ({traj.torn_bytes} bytes, a crash "
             f"while writing it); it is dropped and step {traj.last_step + 1} is redone")
    if traj.last_step > config.steps:
        raise ValueError(f"{out} has already run {traj.last_step} steps, more than --steps {config.steps}")
    s = prepare(config, out, False, t_start)
    if traj.header["device_type"] != s.device.type:
        raise TrajectoryError(f"{out} was recorded on {traj.header['device_type']}; the noise drawn on "
                              f"{s.device.type} differs, so resume it with --device {traj.header['device_type']}")
    if weights_hash(s.named) != traj.header["base_weights_sha256"]:
        raise TrajectoryError(f"the base weights of {config.model} differ from those {out} started from (hash "
                              "mismatch): the model files changed since the run began; resume with the same model")
    writer = Discard()
    if s.writes:
        sweep_temps(out)
        writer = TrajectoryWriter(out / TRAJECTORY, keep_bytes=traj.valid_bytes)
    prog = restore_progress(s, traj, writer)
    _log(f"resuming {out} at step {prog.step} of {config.steps}")
    base = run_baseline(s)
    return run_loop(s, prog, writer, base, progress, redo_record=True)


def _read_results(out: Path) -> dict | None:
    try:
        return json.loads((out / "results.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def restore_progress(s: Session, traj, writer: TrajectoryWriter) -> Progress:
    """Bring the session to the trajectory's last step: the latest checkpoint, then its later steps
    played back (ZO methods), or the trajectory cut back to the checkpoint (methods whose steps
    need tensors: first-order, HybridZO, which redo those steps). Returns the loop's counters."""
    replayable = s.zeroth_order and s.opt.replayable
    ckpt = latest_checkpoint(s.out, traj.last_step)
    start = 0
    if ckpt is not None:
        load_weights(s.model, ckpt.weights)
        s.opt.load_state_dict(torch.load(ckpt.optimizer, map_location=s.device, weights_only=True))
        start = ckpt.step
    records = traj.records
    if not replayable:
        keep = [r for r in records if r.step <= start]
        writer.cut(traj.bytes_through(start))
        records = keep
    elif records[start:]:
        _log(f"replaying steps {start + 1}..{traj.last_step} from the trajectory (no forward passes)")
    if s.zeroth_order and records:
        # the layout the live run had learned by now (it decides, e.g., where low-rank perturbations
        # may be applied inside a forward): learned before any step is redone or taken
        s.opt.engine.probe_layout(lambda: probe_forward(s))
    prog = Progress()
    sampler = BatchSampler(len(s.train_ex), s.config.batch_size, s.config.seed)
    for rec in records:
        sampler.next()  # the batch order as the live run drew it
        if rec.step > start:
            loss = play(s.opt, rec)
            if loss is not None:
                prog.last_loss = loss
        prog.forward_passes += rec.calls
        prog.skipped += rec.skipped
        prog.skips_in_row = prog.skips_in_row + 1 if rec.skipped else 0
        prog.step = rec.step
    prog.sampler = sampler
    for rec in read_metrics_until(s.out, prog.step):
        prog.train_time_s = rec.get("elapsed", prog.train_time_s) or prog.train_time_s
        if rec.get("dev_accuracy") is not None:
            prog.last_dev = rec["dev_accuracy"]
            if prog.best_dev is None or prog.last_dev > prog.best_dev:
                prog.best_dev, prog.best_step = prog.last_dev, rec["step"]
        if rec["step"] == prog.step and isinstance(rec.get("loss"), float):
            prog.last_loss = rec["loss"]
        prog.logged = rec["step"]
    return prog


def probe_forward(s: Session) -> None:
    """One tiny forward of the model (two tokens), for the engine to learn which parameters it reads."""
    ids = torch.zeros(1, 2, dtype=torch.long, device=s.device)
    with autocast_context(s.device, s.config.autocast):
        s.model(input_ids=ids)


def run_loop(s: Session, prog: Progress, writer: TrajectoryWriter, base: dict, progress: bool,
             redo_record: bool = False, swap: tuple[Path, Path] | None = None) -> dict:
    """Train from ``prog.step`` to ``config.steps``; then finish (weights, test, results).
    ``swap``: (staging folder, run folder) of a run replacing an old one, swapped in after step 1."""
    from tqdm.auto import tqdm

    config, opt = s.config, s.opt
    log = MetricsLog(s.out) if s.writes else Discard()
    sampler = prog.sampler or BatchSampler(len(s.train_ex), config.batch_size, config.seed)
    counter = [prog.forward_passes]
    stopped, interrupted, good_batch = None, None, None
    t_loop = time.perf_counter() - prog.train_time_s
    if s.layout is not None:
        s.layout.first_step = prog.step
    bar = tqdm(total=config.steps, initial=prog.step, desc="train", unit="step", disable=not (progress and s.writes),
               dynamic_ncols=True)

    def after_step(step: int) -> None:
        """The metrics line of ``step`` (and its dev evaluation, when due)."""
        record = None
        if step % config.log_every == 0 or step == config.steps:
            record = {"step": step, "loss": prog.last_loss, "lr": opt.param_groups[0].get("lr"),
                      "forward_passes": prog.forward_passes, "elapsed": round(time.perf_counter() - t_loop, 3)}
        if (config.eval_every and step % config.eval_every == 0) or step == config.steps:
            prog.last_dev = s.evaluate(s.dev_ex)["score"]
            if prog.best_dev is None or prog.last_dev > prog.best_dev:
                prog.best_dev, prog.best_step = prog.last_dev, step
            record = record or {"step": step, "loss": prog.last_loss, "lr": opt.param_groups[0].get("lr"),
                                "forward_passes": prog.forward_passes}
            record.update(dev_accuracy=prog.last_dev, elapsed=round(time.perf_counter() - t_loop, 3))
            if s.writes:
                bar.write(f"step {step}: loss {prog.last_loss:.4f}, dev {s.task.metric} {prog.last_dev:.4f}")
        if record is not None:
            log.write(record)

    def swap_in() -> None:
        """Move the staged new run into the run folder, replacing the old run's files."""
        nonlocal swap, log
        log.close()  # TensorBoard reopens its file by path: reopen both after the move
        replace_old_run(swap[1], swap[0])
        s.out, swap = swap[1], None
        log = MetricsLog(s.out)

    def stop_now(signals: StopSignals) -> bool:
        """Whether a signal asks to stop before the next step; under torchrun, a signal to any rank
        (every rank asks at the same point, so all stop after the same step)."""
        asked = signals.received is not None
        return s.layout.stop_agreed(asked) if s.layout else asked

    def checkpoint(step: int, weights_file: Path | None = None) -> None:
        if not s.writes:
            return
        loop = {k: getattr(prog, k) for k in ("step", "forward_passes", "best_dev", "best_step", "last_dev", "skipped")}
        loop["train_time_s"] = round(time.perf_counter() - t_loop, 3)
        try:
            save_checkpoint(s.out, step, s.named, opt, loop, weights_file)
        except OSError as e:
            raise CheckpointWriteError(
                f"could not write the checkpoint of step {step} in {s.out} ({e.strerror or e}); the trajectory and "
                f"the previous checkpoint are intact. Free disk space, then continue with "
                f"`zotune train --resume {s.out}`") from None

    try:
        with StopSignals() as signals:
            if redo_record and prog.step > prog.logged:
                after_step(prog.step)  # killed between the step's record and its metrics line
            saved = prog.step
            for step in range(prog.step + 1, config.steps + 1):
                if stop_now(signals):
                    break
                closure, batches = step_closure(s, sampler.next(), counter)
                seed = opt.step_seed() & (2**64 - 1) if s.zeroth_order else 0
                calls = counter[0]
                if s.zeroth_order:
                    opt.engine.tape.recording = True
                anchor = make_anchor_closure(s, opt, step, counter) if s.zeroth_order else None
                try:
                    loss = opt.step(closure) if anchor is None else opt.step(closure, anchor_closure=anchor)
                    loss_val = float(loss.detach()) if torch.is_tensor(loss) else float(loss)
                    if not math.isfinite(loss_val):  # an optimizer that did not check: stop anyway
                        raise NonFiniteUpdateError(f"non-finite loss {loss_val} returned after the update")
                except NonFiniteLossError as err:
                    if s.zeroth_order:
                        opt.skip_step()
                    writer.append(StepRecord(step, seed, (), counter[0] - calls, skipped=True))
                    if swap:
                        swap_in()
                    prog.step, prog.skipped, prog.skips_in_row = step, prog.skipped + 1, prog.skips_in_row + 1
                    log.write({"step": step, "skipped": True, "reason": str(err).split(":")[0]})
                    _log(f"step {step} skipped: {err}")
                    bar.update(1)
                    if prog.skips_in_row >= max(config.max_skips, 1):
                        stopped = (f"non-finite loss at step {step} ({prog.skips_in_row} skipped in a row, "
                                   f"--max-skips {config.max_skips})")
                        break
                    continue
                except FloatingPointError as err:  # NonFiniteUpdateError, a half-precision overflow
                    stopped = f"non-finite update at step {step}"
                    _log(str(err))
                    break
                values = tuple(opt.engine.tape.take()) if s.zeroth_order else (loss_val,)
                writer.append(StepRecord(step, seed, values, counter[0] - calls))
                if swap:  # the new run has started training: only now may it replace the old one
                    swap_in()
                prog.step, prog.last_loss, prog.skips_in_row, good_batch = step, loss_val, 0, batches[0][1]
                prog.forward_passes = counter[0]
                bar.update(1)
                bar.set_postfix(loss=f"{loss_val:.4f}", refresh=False)
                after_step(step)
                if config.save_every and step % config.save_every == 0 and step < config.steps:
                    checkpoint(step)
                    saved = step
            interrupted = signal.SIGTERM if stop_now(signals) and signals.received is None else signals.received
            if interrupted is not None and prog.step > saved:
                checkpoint(prog.step)
    finally:
        bar.close()
        log.close()
        writer.close()
        if swap:  # stopped before its first step: the old run stays as it was
            shutil.rmtree(swap[0], ignore_errors=True)
    prog.train_time_s = time.perf_counter() - t_loop
    if interrupted is not None and swap:
        name = signal.Signals(interrupted).name
        _log(f"{name} before the first step: nothing was trained, and {swap[1]} is as it was")
        return {"out": str(swap[1]), "steps": 0, "interrupted": name, "exit_code": 128 + interrupted,
                "resumable": False}
    if interrupted is not None:
        name = signal.Signals(interrupted).name
        _log(f"{name}: stopped after step {prog.step} with a checkpoint; continue with "
             f"`zotune train --resume {s.out}`")
        return {"out": str(s.out), "steps": prog.step, "interrupted": name, "exit_code": 128 + interrupted}
    return finish(s, prog, base, stopped, good_batch, checkpoint)


def state_bytes(opt) -> int:
    """Bytes of optimizer state kept between steps: every tensor in ``opt.state`` (ZO methods
    count their own, e.g. fp32 masters and moments; torch's AdamW its two moments and step)."""
    if hasattr(opt, "state_bytes"):
        return opt.state_bytes()
    return sum(v.numel() * v.element_size() for st in opt.state.values() for v in st.values()
               if isinstance(v, torch.Tensor))


class CheckpointWriteError(TrainingFailure):
    """A checkpoint could not be written (a full disk): the run stops, resumable once fixed."""


def finish(s: Session, prog: Progress, base: dict, stopped: str | None, good_batch, checkpoint) -> dict:
    """Save the final weights (and the final checkpoint), measure the test score, write results.json."""
    config, out = s.config, s.out
    weights_step = prog.step - (prog.skips_in_row if stopped else 0)
    if stopped is not None and "update" in stopped and weights_step > 0 and rebuild_weights(s, weights_step):
        # a refused update may have written part of its step: put back exactly the last recorded step
        _log(f"the weights after step {weights_step} were rebuilt from the checkpoint and the trajectory")
    if stopped is not None and weights_step > 0 and good_batch is not None:
        broken = weights_broken(s.model, s.named, good_batch, s.device, config.autocast)
        if broken:
            _log(f"the weights after step {weights_step} {broken}; restoring the base model's weights")
            restore_base_weights(config, s.named)
            stopped += f" (the weights after step {weights_step} {broken}, so the base model's weights were kept)"
            weights_step = 0
    if config.save_weights and s.writes:
        save_weights(s.named, out / "model.safetensors")
        if config.mode != "ft":
            save_adapter(s.model, out)
    if stopped is None:
        checkpoint(prog.step, out / "model.safetensors" if config.save_weights else None)
    final = None
    if stopped is None:
        _log(f"fine-tuned evaluation on {len(s.test_ex)} test examples")
        final = s.evaluate(s.test_ex)
    else:
        _log(f"stopped: {stopped}; weights from step {weights_step} kept" +
             (f" in {out / 'model.safetensors'}" if config.save_weights else ""))
    zero_shot, icl = base["result"], base["icl"]
    peak, peak_kind = _peak_memory_mb(s.device)
    results = {
        "out": str(out),
        "model": config.model,
        "task": config.task,
        "task_name": s.task.name,
        "metric": s.task.metric,
        "objective": config.objective,
        "optimizer": config.optimizer,
        "zeroth_order": s.zeroth_order,
        "zero_shot_test_accuracy": None if icl else zero_shot["score"],
        "icl_test_accuracy": zero_shot["score"] if icl else None,
        "icl": icl,
        "test_accuracy": final["score"] if final else None,
        "baseline_test_metrics": _metrics_only(zero_shot),
        "test_metrics": _metrics_only(final) if final else None,
        "test_examples": len(s.test_ex),
        "best_dev_accuracy": prog.best_dev,
        "best_dev_step": prog.best_step,
        "final_dev_accuracy": prog.last_dev,
        "final_loss": prog.last_loss if stopped is None else None,
        "steps": prog.step,
        "skipped_steps": prog.skipped,
        "weights_step": weights_step,
        "train_forward_passes": prog.forward_passes,
        "trainable_parameters": sum(p.numel() for _, p in s.named),
        "state_bytes": state_bytes(s.opt),
        "train_time_s": round(prog.train_time_s, 3),
        "wall_time_s": round(time.perf_counter() - s.t_start, 3),
        "trajectory_bytes": (out / TRAJECTORY).stat().st_size if s.writes else None,
        "peak_memory_mb": round(peak, 1),
        "peak_memory_kind": peak_kind,
        "device": str(s.device),
        "stopped": stopped,
        **ranks_summary(s, prog),
    }
    if s.writes:
        write_json(out / "results.json", results)
    return results


def ranks_summary(s: Session, prog: Progress) -> dict:
    """How the run was shared out (1 rank: one process) and the bytes rank 0 sent per step; the
    counts of forward passes above are rank 0's own."""
    if s.layout is None:
        return {"ranks": 1}
    steps = max(prog.step - s.layout.first_step, 1)
    return {"ranks": s.layout.world, "data_ranks": s.layout.data_ranks, "evaluation_ranks": s.layout.evaluation_ranks,
            "bytes_per_step": round(s.layout.step_bytes / steps, 1)}


def rebuild_weights(s: Session, step: int) -> bool:
    """Put back the weights after ``step`` from the latest checkpoint at or before it and the
    trajectory (a failed update may have written part of a step). False where the method's steps
    cannot be played back (first-order, HybridZO)."""
    if not (s.zeroth_order and s.opt.replayable):
        return False
    traj = read_trajectory(s.out)
    opt = build_optimizer(s.config.optimizer, s.named, **optimizer_hparams(s.config))
    ckpt = latest_checkpoint(s.out, step)
    if ckpt is not None:
        load_weights(s.model, ckpt.weights)
        opt.load_state_dict(torch.load(ckpt.optimizer, map_location=s.device, weights_only=True))
    else:
        restore_base_weights(s.config, s.named)
    opt.engine.probe_layout(lambda: probe_forward(s))
    for record in traj.records[ckpt.step if ckpt else 0:step]:
        play(opt, record)
    return True


def weights_broken(model, named, batch, device, autocast) -> str | None:
    """Why the current weights must not be saved (NaN/inf in a tensor, or a non-finite loss at θ
    itself on ``batch``, the last step's batch, whose losses were finite), or None. A ZO step's
    losses are taken at θ ± εz, and the failing step's batch may itself be the culprit: this one
    forward tells broken weights from a bad batch before the weights are kept."""
    bad = non_finite_tensors(named)
    if bad:
        return f"hold NaN or inf in {', '.join(bad[:3])}"
    with torch.no_grad(), autocast_context(device, autocast):
        loss = float(loss_fn(model, batch).detach())
    return None if math.isfinite(loss) else f"give a non-finite loss ({loss})"


def restore_base_weights(config: TrainConfig, named) -> None:
    """Copy the base model's values into the trainable tensors (the last weights known to give a
    finite loss when no finite copy of a later step exists; keeping one would double the memory)."""
    base, _ = load_run_model(config, "cpu")
    values = dict(base.named_parameters(remove_duplicate=False))
    with torch.no_grad():
        for name, p in named:
            p.copy_(values[name].to(device=p.device, dtype=p.dtype))
    del base


class NonFiniteWeightsError(FloatingPointError):
    """Saved weights hold NaN or inf: any score of them would be meaningless."""


def evaluate_run(run: str | Path | None = None, model: str | None = None, task: str | None = None,
                 split: str = "test", examples: int | None = None, data_dir: str | None = None,
                 dtype: str | None = None, autocast: str | None = "config", device: str | None = None,
                 max_length: int | None = None, batch_size: int = 32, icl_shots: int = 0,
                 task_spec: str | dict | None = None, max_new_tokens: int | None = None) -> dict:
    """The task metric of a saved run's weights, or of a model zero-shot (or with ``icl_shots``
    demonstrations) when ``run`` is None.

    With a run, every unset argument comes from the run's config.yaml, so by default this
    reproduces the run's own test score (same model, examples, dtype and autocast). ``accuracy``
    holds the task's headline metric, which ``metric`` names (f1 for SQuAD and DROP).
    """
    from zotune.models import load_model, resolve_device

    cfg = TrainConfig()
    if run is not None:
        run = Path(run)
        if not (run / "config.yaml").is_file():
            raise FileNotFoundError(f"{run} is not a zotune run folder (no config.yaml)")
        cfg = load_config(run / "config.yaml")
    model_name = model or cfg.model
    task_name = task or cfg.task
    data_dir = data_dir if data_dir is not None else cfg.data_dir
    if examples is not None and examples < 1:
        raise ValueError(f"--examples must be >= 1 (got {examples}); omit it to use the run's own count")
    if examples is None:
        examples = cfg.test_examples if split == "test" else cfg.eval_examples if split == "dev" else None
    autocast = cfg.autocast if autocast == "config" else autocast
    dev = resolve_device(device or cfg.device)
    if icl_shots < 0:
        raise ValueError(f"--icl-shots must be >= 0 (got {icl_shots}); MeZO's ICL baseline uses 32")
    if max_new_tokens is not None and max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be >= 1 (got {max_new_tokens}); omit it for the run's or task's budget")
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1 (got {batch_size}); evaluation uses 32 by default")
    if max_length is not None and max_length < MIN_LENGTH:
        raise ValueError(f"--max-length must be >= {MIN_LENGTH} tokens (got {max_length}); omit it for the run's "
                         "or the model's context length")
    spec = task_spec if task_spec is not None else (cfg.task_spec if task is None else None)
    t = get_task(task_name, spec=spec)
    budget = max_new_tokens if max_new_tokens is not None else cfg.max_new_tokens
    if budget is not None:
        t.max_new_tokens = budget
    t.check_split(split)
    exs = t.load(split, data_dir=data_dir)[:examples]  # data before the model: bad data fails fast
    if not exs:
        raise ValueError(f"task {task_name} split {split} has no examples")
    train_ex = t.load("train", data_dir=data_dir) if icl_shots else []
    t0 = time.perf_counter()
    net, tokenizer = load_model(model_name, dtype=dtype or cfg.dtype, device=str(dev))
    net.eval()
    if run is not None:
        if cfg.mode != "ft":  # the adapter as peft saved it, on the base model
            net = load_adapter(net, run).eval()
            loaded = [n for n, _ in net.named_parameters()]
        else:
            loaded = load_weights(net, run / "model.safetensors")
        params = dict(net.named_parameters(remove_duplicate=False))
        bad = non_finite_tensors((n, params[n]) for n in loaded)
        if bad:
            raise NonFiniteWeightsError(
                f"{run / 'model.safetensors'} holds NaN or inf in {len(bad)} tensor(s) ({', '.join(bad[:3])}); "
                "its scores would be meaningless. Retrain with a smaller --lr (or --eps), or evaluate another run.")
    max_length = max_length or cfg.max_length or model_context(net)
    res, icl = baseline(net, tokenizer, t, train_ex, exs, icl_shots, max_length, batch_size=batch_size,
                        autocast=autocast, device=dev)
    return {"accuracy": res["score"], "metric": res["metric"], "n": res["n"], "split": split,
            "model": model_name, "task": task_name, "run": str(run) if run is not None else None,
            "metrics": _metrics_only(res), "icl": icl, "eval_time_s": round(time.perf_counter() - t0, 3)}


def load_task_data(config: TrainConfig) -> tuple[Task, list, list, list]:
    """(task, train, dev, test) examples as the config asks, each split checked non-empty."""
    task = get_task(config.task, spec=config.task_spec)
    if config.max_new_tokens is not None:
        task.max_new_tokens = config.max_new_tokens
    splits = {}
    for split, cap in (("train", None), ("dev", config.eval_examples), ("test", config.test_examples)):
        examples = task.load(split, data_dir=config.data_dir)[:cap]
        if not examples:
            raise ValueError(f"task {config.task}: the {split} split has no examples; check its data file")
        splits[split] = examples
    return task, splits["train"], splits["dev"], splits["test"]


def baseline(model, tokenizer, task: Task, train_ex: list, examples: list, shots: int, max_length: int,
             **kwargs) -> tuple[dict, dict | None]:
    """The evaluation of ``examples`` zero-shot, or with ``shots`` demonstrations from ``train_ex``
    in front (as many as fit), and what was shown (None for zero-shot)."""
    if not shots:
        return evaluate(model, tokenizer, task, examples, max_length=max_length, **kwargs), None
    demos = draw_demonstrations(task, train_ex, shots)
    result, used = evaluate_in_context(model, tokenizer, task, examples, demos, max_length, **kwargs)
    return result, shots_summary(shots, used, max_length)


def _metrics_only(result: dict) -> dict:
    return {k: v for k, v in result.items() if k not in ("score", "n")}
