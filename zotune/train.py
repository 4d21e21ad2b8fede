"""The training harness: one loop for zeroth-order and first-order optimizers.

``train(config)`` loads the model and task, measures zero-shot test accuracy, runs ``config.steps``
optimizer steps on seeded mini-batches, evaluates on dev along the way, measures fine-tuned test
accuracy, and leaves a self-describing run folder:

- ``config.yaml``       the exact config (written once the model and optimizer are built, so a crashed
                        run still says what it was, and a run failing on bad input leaves no folder)
- ``metrics.jsonl``     one JSON object per logged step: step, loss, lr, elapsed [, dev_accuracy]
- ``tb/``               TensorBoard events, when tensorboard is installed
- ``model.safetensors`` the trainable parameters after the last good step
- ``results.json``      the summary (accuracies, steps, wall time, peak memory, forward passes)

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
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from zotune.config import TrainConfig, load_config, save_config, validate
from zotune.optim import (OPTIMIZERS, NonFiniteLossError, NonFiniteUpdateError, build_optimizer, check_args,
                           is_zeroth_order)
from zotune.tasks import Task, encode, evaluate, get_task, loss_fn, looks_like_data
from zotune.tasks.encoding import model_context
from zotune.tasks.icl import draw_demonstrations, evaluate_in_context, shots_summary

RUN_FILES = ("config.yaml", "metrics.jsonl", "results.json", "model.safetensors")
TB_DIR = "tb"


# --------------------------------------------------------------------------- small utilities

def _atomic_write(path: Path, write) -> None:
    """Write a file through a temp file in the same folder + os.replace, so readers (and a crash)
    never see a half-written file. ``write(tmp_path)`` produces the content."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes files private; results are ordinary files
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_json(path: Path, data: dict) -> None:
    _atomic_write(path, lambda p: p.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8"))


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


def _is_stale_temp(name: str) -> bool:
    """A temporary file that ``_atomic_write`` left behind when its process was killed mid-write."""
    return name.endswith(".tmp") and any(name.startswith(f".{f}.") for f in RUN_FILES)


def check_out_dir(out: str | Path, overwrite: bool) -> Path:
    """Refuse an output path a run cannot use, touching nothing (called before the model loads).

    Temp files of a killed write do not count as content: they are swept by ``open_run_dir``.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"output path {out} exists and is not a folder; choose another --out")
    if out.is_dir() and not overwrite and any(not _is_stale_temp(p.name) for p in out.iterdir()):
        raise ValueError(f"run folder {out} already exists and is not empty; "
                         "pass --overwrite to replace it, or choose another --out")
    existing = next(p for p in (out, *out.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise ValueError(f"cannot create run folder {out}: {existing} is a file; choose another --out")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write to {existing}; choose a writable --out")
    return out


def open_run_dir(out: Path, overwrite: bool) -> Path:
    """Create (or, with ``overwrite``, empty) the run folder; call it only once the model and the
    optimizer are built, so that a run failing on bad input never touches an old run.

    Only zotune's own files are removed, never anything else a user put there; temp files of a
    killed write are always removed.
    """
    check_out_dir(out, overwrite)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"cannot create run folder {out} ({e.strerror}); choose a writable --out") from None
    for p in out.iterdir():
        if _is_stale_temp(p.name) and p.is_file():
            p.unlink(missing_ok=True)
    if overwrite:
        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(out / TB_DIR, ignore_errors=True)
    return out


def optimizer_hparams(config: TrainConfig) -> dict[str, Any]:
    """The configured optimizer's arguments; ZO ones also get eps and seed (first-order ones have no
    such arguments, and AdamW's own ``eps`` means something else). None values: method defaults."""
    hp: dict[str, Any] = {"lr": config.lr, "weight_decay": config.weight_decay}
    if OPTIMIZERS[config.optimizer][2]:  # zeroth-order
        hp.update(eps=config.eps, seed=config.seed, noise=config.noise)
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
    """Set requires_grad from the ``trainable`` regex; return the trainable (name, param) pairs.

    named_parameters() lists a tied (shared) tensor once, under its first name, so each tensor is
    trained - and saved - exactly once.
    """
    rx = re.compile(pattern) if pattern is not None else None
    named = []
    for name, p in model.named_parameters():
        p.requires_grad_(rx is None or bool(rx.search(name)))
        if p.requires_grad:
            named.append((name, p))
    if not named:
        names = [n for n, _ in model.named_parameters()][:8]
        raise ValueError(f"trainable pattern {pattern!r} matches no parameter; names look like: {', '.join(names)}")
    return named


def save_weights(named_params: list[tuple[str, torch.nn.Parameter]], path: Path) -> None:
    """Save the trainable tensors with safetensors, each storage once (tied weights share one)."""
    from safetensors.torch import save_file

    tensors, seen = {}, set()
    for name, p in named_params:
        key = (p.data_ptr(), p.dtype, tuple(p.shape))
        if key in seen:
            continue
        seen.add(key)
        tensors[name] = p.detach().to("cpu").contiguous().clone()
    _atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt", "producer": "zotune"}))


def load_weights(model: torch.nn.Module, path: str | Path) -> list[str]:
    """Copy saved tensors into the model's parameters (by name); return the names loaded.

    Tied parameters appear under several names in the model but once in the file; copying into
    the one shared tensor updates every alias.
    """
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path} (was the run saved with save_weights: false?)")
    saved = load_file(str(path))
    params = dict(model.named_parameters(remove_duplicate=False))
    missing = [k for k in saved if k not in params]
    if missing:
        raise ValueError(f"{path} has tensors this model lacks ({', '.join(missing[:5])}); "
                         "was it trained on a different --model?")
    with torch.no_grad():
        for name, t in saved.items():
            p = params[name]
            if p.shape != t.shape:
                raise ValueError(f"{path}: tensor {name} has shape {tuple(t.shape)}, model has {tuple(p.shape)}")
            p.copy_(t.to(device=p.device, dtype=p.dtype))
    return list(saved)


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


def make_closure(model, batch, device, autocast, zeroth_order: bool, opt, counter: list[int]):
    """The closure for ``opt.step``.

    ZO: forward only (the optimizer calls it under no_grad, perturbing the weights itself).
    FO: the standard zero_grad/forward/backward closure; a non-finite loss (before backward) or
    gradient (after it) raises before torch's optimizers touch the weights, matching the ZO guarantee.
    """
    def zo_closure():
        counter[0] += 1
        with autocast_context(device, autocast):
            return loss_fn(model, batch)

    def fo_closure():
        counter[0] += 1
        opt.zero_grad(set_to_none=True)
        with torch.enable_grad(), autocast_context(device, autocast):
            loss = loss_fn(model, batch)
        if not torch.isfinite(loss.detach()).all():
            raise NonFiniteLossError(f"non-finite loss {loss.item()}")
        loss.backward()
        grads = [p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None]
        if grads and not all(bool(torch.isfinite(g).all()) for g in grads):
            raise NonFiniteLossError(f"non-finite gradient (loss {loss.item()}): no weight was changed")
        return loss

    return zo_closure if zeroth_order else fo_closure


def autocast_context(device, autocast):
    from zotune.models import autocast_context as ctx
    return ctx(device, autocast) if autocast else nullcontext()


# --------------------------------------------------------------------------- logging

class MetricsLog:
    """metrics.jsonl (one flushed line per record) plus TensorBoard scalars when available."""

    def __init__(self, out: Path):
        self.file = open(out / "metrics.jsonl", "a", encoding="utf-8")
        self.tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(log_dir=str(out / TB_DIR))
        except Exception:  # tensorboard not installed (it is optional)
            self.tb = None

    def write(self, record: dict) -> None:
        self.file.write(strict_json(record) + "\n")
        self.file.flush()
        if self.tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, record["step"])

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()


def strict_json(record: dict) -> str:
    """One JSON line that strict readers accept: NaN and ±inf (which ``json.dumps`` would write as
    bare ``NaN``/``Infinity`` tokens) become null."""
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
    return json.dumps(clean, allow_nan=False)


def non_finite_tensors(named_params) -> list[str]:
    """Names of the tensors among ``named_params`` ((name, tensor) pairs) holding NaN or inf."""
    return [name for name, p in named_params if not bool(torch.isfinite(p.detach()).all())]


def _log(msg: str) -> None:
    print(f"zotune: {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- the run

def train(config: TrainConfig, overwrite: bool = False, progress: bool = True) -> dict:
    """Fine-tune as ``config`` says; return the results (also written to ``<out>/results.json``).

    A non-finite loss stops the run: the weights from before the failing step are saved, and the
    results carry ``"stopped": "non-finite loss at step N"`` (the CLI then exits with code 1).
    """
    from tqdm.auto import tqdm

    from zotune.models import load_model, resolve_device

    validate(config)
    t_start = time.perf_counter()
    # All the data first: a bad file must fail in milliseconds, before a model or a run folder exists.
    task, train_ex, dev_ex, test_ex = load_task_data(config)
    check_args(config.optimizer, optimizer_hparams(config))  # a mistyped --opt fails before the model loads
    if config.batch_size > len(train_ex):
        raise ValueError(f"batch_size {config.batch_size} is larger than the {len(train_ex)} training examples; "
                         f"use --batch-size {len(train_ex)} or fewer, or more training data")
    out = check_out_dir(config.out or default_out(config), overwrite)
    config = dataclasses.replace(absolute_paths(config), out=str(out))  # the saved config names its folder
    device = resolve_device(config.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _log(f"loading model {config.model} ({config.dtype}) on {device}")
    model, tokenizer = load_model(config.model, dtype=config.dtype, device=str(device))
    model.eval()  # dropout off for both ZO and FO: one deterministic objective
    max_length = config.max_length or model_context(model)

    named = select_trainable(model, config.trainable)
    opt = build_optimizer(config.optimizer, named, **optimizer_hparams(config))
    zeroth_order = is_zeroth_order(opt)
    # Everything the run needs now exists: only from here on may the run folder change.
    open_run_dir(out, overwrite)
    _atomic_write(out / "config.yaml", lambda p: save_config(config, p))
    n_train = sum(p.numel() for _, p in named)
    _log(f"{config.optimizer} ({'zeroth' if zeroth_order else 'first'}-order) on "
         f"{n_train:,} trainable parameters in {len(named)} tensors -> {out}")

    def eval_on(examples):
        return evaluate(model, tokenizer, task, examples, batch_size=32, autocast=config.autocast,
                        device=device, max_length=max_length)

    _log(f"{'ICL' if config.icl_shots else 'zero-shot'} evaluation on {len(test_ex)} test examples ({task.metric})")
    zero_shot, icl = baseline(model, tokenizer, task, train_ex, test_ex, config.icl_shots, max_length,
                              batch_size=32, autocast=config.autocast, device=device)

    log = MetricsLog(out)
    sampler = BatchSampler(len(train_ex), config.batch_size, config.seed)
    counter = [0]
    best_dev, best_step, last_dev = None, None, None
    stopped, steps_done, loss_val, good_batch = None, 0, float("nan"), None
    t_loop = time.perf_counter()
    bar = tqdm(total=config.steps, desc="train", unit="step", disable=not progress, dynamic_ncols=True)
    try:
        for step in range(1, config.steps + 1):
            batch = encode(task, tokenizer, [train_ex[i] for i in sampler.next()], max_length=max_length,
                           objective=config.objective)
            closure = make_closure(model, batch, device, config.autocast, zeroth_order, opt, counter)
            try:
                loss = opt.step(closure)
                loss_val = float(loss.detach()) if torch.is_tensor(loss) else float(loss)
                if not math.isfinite(loss_val):  # an optimizer that did not check: stop anyway
                    raise NonFiniteLossError(f"non-finite loss {loss_val}")
            except FloatingPointError as err:
                stopped = f"non-finite {'update' if isinstance(err, NonFiniteUpdateError) else 'loss'} at step {step}"
                _log(str(err))
                break
            steps_done, good_batch = step, batch
            bar.update(1)
            bar.set_postfix(loss=f"{loss_val:.4f}", refresh=False)
            record = None
            if step % config.log_every == 0 or step == config.steps:
                record = {"step": step, "loss": loss_val, "lr": opt.param_groups[0].get("lr"),
                          "elapsed": round(time.perf_counter() - t_loop, 3)}
            if (config.eval_every and step % config.eval_every == 0) or step == config.steps:
                last_dev = eval_on(dev_ex)["score"]
                if best_dev is None or last_dev > best_dev:
                    best_dev, best_step = last_dev, step
                record = record or {"step": step, "loss": loss_val, "lr": opt.param_groups[0].get("lr")}
                record.update(dev_accuracy=last_dev, elapsed=round(time.perf_counter() - t_loop, 3))
                bar.write(f"step {step}: loss {loss_val:.4f}, dev {task.metric} {last_dev:.4f}")
            if record is not None:
                log.write(record)
    finally:
        bar.close()
        log.close()
    train_time = time.perf_counter() - t_loop

    weights_step = steps_done
    if stopped is not None and steps_done > 0:
        broken = weights_broken(model, named, good_batch, device, config.autocast)
        if broken:
            _log(f"the weights after step {steps_done} {broken}; restoring the base model's weights")
            restore_base_weights(config, named)
            stopped += f" (the weights after step {steps_done} {broken}, so the base model's weights were kept)"
            weights_step = 0
    if config.save_weights:
        save_weights(named, out / "model.safetensors")
    final = None
    if stopped is None:
        _log(f"fine-tuned evaluation on {len(test_ex)} test examples")
        final = eval_on(test_ex)
    else:
        _log(f"stopped: {stopped}; weights from step {weights_step} kept" +
             (f" in {out / 'model.safetensors'}" if config.save_weights else ""))

    peak, peak_kind = _peak_memory_mb(device)
    results = {
        "out": str(out),
        "model": config.model,
        "task": config.task,
        "task_name": task.name,
        "metric": task.metric,
        "objective": config.objective,
        "optimizer": config.optimizer,
        "zeroth_order": zeroth_order,
        "zero_shot_test_accuracy": None if icl else zero_shot["score"],
        "icl_test_accuracy": zero_shot["score"] if icl else None,
        "icl": icl,
        "test_accuracy": final["score"] if final else None,
        "baseline_test_metrics": _metrics_only(zero_shot),
        "test_metrics": _metrics_only(final) if final else None,
        "test_examples": len(test_ex),
        "best_dev_accuracy": best_dev,
        "best_dev_step": best_step,
        "final_dev_accuracy": last_dev,
        "final_loss": loss_val if stopped is None else None,
        "steps": steps_done,
        "weights_step": weights_step,
        "train_forward_passes": counter[0],
        "trainable_parameters": n_train,
        "train_time_s": round(train_time, 3),
        "wall_time_s": round(time.perf_counter() - t_start, 3),
        "peak_memory_mb": round(peak, 1),
        "peak_memory_kind": peak_kind,
        "device": str(device),
        "stopped": stopped,
    }
    _write_json(out / "results.json", results)
    return results


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
    from zotune.models import load_model

    base, _ = load_model(config.model, dtype=config.dtype, device="cpu")
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
    spec = task_spec if task_spec is not None else (cfg.task_spec if task is None else None)
    t = get_task(task_name, spec=spec)
    budget = max_new_tokens or cfg.max_new_tokens
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
