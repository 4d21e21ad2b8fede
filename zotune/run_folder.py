"""The run folder: what a run leaves on disk, written so that no crash leaves a half-written file.

Files (``docs/reliability.md`` says what each guarantees):

- ``config.yaml``        the exact config (written once the model and optimizer are built)
- ``baseline.json``      the zero-shot / ICL test evaluation before training
- ``trajectory.zot``     the base weights' hash and one record per step (``zotune.trajectory``)
- ``metrics.jsonl``      one strict-JSON object per logged step
- ``checkpoint-NNNNNNNN/`` the latest checkpoint: weights, optimizer state, loop state
- ``model.safetensors``  the trainable parameters at the end
- ``results.json``       the summary
- ``tb/``                TensorBoard events, when tensorboard is installed

Every file is written through a temporary file in the same folder and renamed (a checkpoint
through a temporary folder), so readers and a killed process never see a half-written one; the
temporaries a killed write leaves are swept by the next run into the folder. A new run is
written into a staging folder inside the run folder until its first step is done, so a folder
with a ``config.yaml`` always holds a run that can be resumed.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import signal
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from zotune.trajectory import FILE_NAME as TRAJECTORY

RUN_FILES = ("config.yaml", "baseline.json", TRAJECTORY, "metrics.jsonl", "results.json", "model.safetensors")
TB_DIR = "tb"
CHECKPOINT_PREFIX = "checkpoint-"
_CHECKPOINT_TEMP = ".checkpoint-"
_STAGING = ".staging-"
# Test hook: SIGKILL this process halfway through writing the checkpoint of this step (the
# kill/resume test uses it to hit the checkpoint write at a known instant).
KILL_IN_CHECKPOINT = "ZOTUNE_TEST_KILL_IN_CHECKPOINT"


# --------------------------------------------------------------------------- atomic files

def atomic_write(path: Path, write) -> None:
    """Write a file through a temp file in the same folder + fsync + os.replace, so readers (and
    a crash) never see a half-written file. ``write(tmp_path)`` produces the content."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes files private; results are ordinary files
        _fsync(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def write_json(path: Path, data: dict) -> None:
    atomic_write(path, lambda p: p.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8"))


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def is_stale_temp(name: str) -> bool:
    """A temporary file or folder that a killed write left behind."""
    if name.startswith((_CHECKPOINT_TEMP, _STAGING)) and name.endswith(".tmp"):
        return True
    return name.endswith(".tmp") and any(name.startswith(f".{f}.") for f in RUN_FILES)


# --------------------------------------------------------------------------- the folder

def check_out_dir(out: str | Path, overwrite: bool) -> Path:
    """Refuse an output path a run cannot use, touching nothing (called before the model loads).

    Temp files of a killed write do not count as content: they are swept by ``open_run_dir``.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"output path {out} exists and is not a folder; choose another --out")
    if out.is_dir() and not overwrite and any(not is_stale_temp(p.name) for p in out.iterdir()):
        hint = (" (it holds a zotune run: continue it with `zotune train --resume "
                f"{out}`)" if (out / "config.yaml").is_file() else "")
        raise ValueError(f"run folder {out} already exists and is not empty{hint}; "
                         "pass --overwrite to replace it, or choose another --out")
    existing = next(p for p in (out, *out.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise ValueError(f"cannot create run folder {out}: {existing} is a file; choose another --out")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write to {existing}; choose a writable --out")
    return out


def open_run_dir(out: Path, overwrite: bool) -> Path:
    """Create the run folder and return the staging folder inside it that the new run is written
    into; ``replace_old_run`` moves it into place once the run has completed its first step. So a
    folder holds a run (a ``config.yaml``) only once there is something to resume, and an old run
    (``overwrite``) survives anything that goes wrong before that (a crash, a kill, a bad batch,
    Ctrl-C during the baseline evaluation). Call it only once the model and optimizer are built.
    """
    check_out_dir(out, overwrite)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"cannot create run folder {out} ({e.strerror}); choose a writable --out") from None
    sweep_temps(out)
    staging = Path(tempfile.mkdtemp(prefix=_STAGING, suffix=".tmp", dir=out))
    os.chmod(staging, 0o777 & ~_umask())
    return staging


def replace_old_run(out: Path, staging: Path) -> None:
    """Remove an old run's own files from ``out`` (never anything else a user put there) and move
    the new run's files from ``staging`` into it, ``config.yaml`` last: a folder with a config.yaml
    holds a whole run. Open files keep working (a rename keeps the inode)."""
    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / TB_DIR, ignore_errors=True)
    for ckpt in out.glob(CHECKPOINT_PREFIX + "*"):
        shutil.rmtree(ckpt, ignore_errors=True)
    _move_in(out, staging)


def _move_in(out: Path, staging: Path) -> None:
    for p in sorted(staging.iterdir(), key=lambda p: p.name == "config.yaml"):
        os.replace(p, out / p.name)
    staging.rmdir()


def finish_cut_move(out: Path) -> None:
    """Finish a move of a staged run into ``out`` that a kill cut short (its trajectory already
    moved, its config.yaml not yet): the run had completed its first step."""
    for p in out.iterdir():
        if (p.name.startswith(_STAGING) and p.is_dir() and (p / "config.yaml").is_file()
                and not (p / TRAJECTORY).exists() and (out / TRAJECTORY).is_file()):
            _move_in(out, p)


def sweep_temps(out: Path) -> None:
    """Remove what killed writes left in ``out`` (temp files, half-made checkpoint folders, the
    staging folder of a run killed before its first step), after finishing a cut move."""
    finish_cut_move(out)
    for p in out.iterdir():
        if is_stale_temp(p.name):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def unstarted_run(out: Path) -> bool:
    """Whether ``out`` holds only the staging folder of a run killed before its first step."""
    return out.is_dir() and not (out / "config.yaml").exists() and any(
        p.name.startswith(_STAGING) for p in out.iterdir())


# --------------------------------------------------------------------------- weights

def save_weights(named_params, path: Path) -> None:
    """Save the trainable tensors with safetensors, each storage once (tied weights share one)."""
    from safetensors.torch import save_file

    tensors, seen = {}, set()
    for name, p in named_params:
        key = (p.data_ptr(), p.dtype, tuple(p.shape))
        if key in seen:
            continue
        seen.add(key)
        tensors[name] = p.detach().to("cpu").contiguous().clone()
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt", "producer": "zotune"}))


def load_weights(model: torch.nn.Module, path: str | Path) -> list[str]:
    """Copy saved tensors into the model's parameters (by name); return the names loaded.

    Tied parameters appear under several names in the model but once in the file; copying into
    the one shared tensor updates every alias.
    """
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path} (was the run saved with save_weights: false?)")
    try:
        saved = load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for a damaged file
        raise ValueError(f"{path} is not a readable safetensors file ({e}); it is damaged") from None
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


# --------------------------------------------------------------------------- checkpoints

class CheckpointError(ValueError):
    """A checkpoint that cannot be used (damaged files)."""


@dataclass(frozen=True)
class Checkpoint:
    """A complete checkpoint folder: the weights and optimizer state after ``step`` and the loop's
    state (``loop``: counters, best dev score, train time)."""

    path: Path
    step: int
    loop: dict

    @property
    def weights(self) -> Path:
        return self.path / "weights.safetensors"

    @property
    def optimizer(self) -> Path:
        return self.path / "optimizer.pt"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def save_checkpoint(out: Path, step: int, named_params, optimizer, loop: dict, weights_file: Path | None = None) -> Path:
    """Write ``checkpoint-<step>/`` atomically (a temp folder, fsync, rename) and remove older ones.

    ``weights_file``: an already written safetensors file of the same weights (the final
    ``model.safetensors``) to hard-link instead of writing the weights twice. On any error
    (a full disk) the temp folder is removed and the previous checkpoint stays.
    """
    from safetensors.torch import save_file

    tmp = Path(tempfile.mkdtemp(prefix=_CHECKPOINT_TEMP, suffix=".tmp", dir=out))
    try:
        weights = tmp / "weights.safetensors"
        if weights_file is not None:
            try:
                os.link(weights_file, weights)
            except OSError:
                shutil.copyfile(weights_file, weights)
        else:
            tensors, seen = {}, set()
            for name, p in named_params:
                key = (p.data_ptr(), p.dtype, tuple(p.shape))
                if key not in seen:
                    seen.add(key)
                    tensors[name] = p.detach().to("cpu").contiguous().clone()
            save_file(tensors, str(weights), metadata={"format": "pt", "producer": "zotune"})
        if os.environ.get(KILL_IN_CHECKPOINT) == str(step):
            os.kill(os.getpid(), signal.SIGKILL)
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        files = {}
        for f in (weights, tmp / "optimizer.pt"):
            _fsync(f)
            files[f.name] = {"bytes": f.stat().st_size, "sha256": _sha256(f)}
        (tmp / "state.json").write_text(json.dumps({"step": step, "files": files, "loop": loop}, indent=2) + "\n",
                                        encoding="utf-8")
        _fsync(tmp / "state.json")
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes folders private
        final = out / f"{CHECKPOINT_PREFIX}{step:08d}"
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in out.glob(CHECKPOINT_PREFIX + "*"):
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(out: Path, max_step: int) -> Checkpoint | None:
    """The newest complete checkpoint at or before ``max_step`` whose files match their recorded
    sizes and hashes; a damaged one raises CheckpointError (the user should know a disk damaged it)."""
    found = []
    for p in out.glob(CHECKPOINT_PREFIX + "*"):
        try:
            step = int(p.name[len(CHECKPOINT_PREFIX):])
        except ValueError:
            continue
        if step <= max_step and p.is_dir():
            found.append((step, p))
    for step, path in sorted(found, reverse=True):
        state_file = path / "state.json"
        try:
            state = json.loads(state_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise CheckpointError(f"checkpoint {path} is damaged (state.json unreadable); delete that folder to "
                                  "resume from the trajectory alone") from None
        for name, want in state.get("files", {}).items():
            f = path / name
            if not f.is_file() or f.stat().st_size != want["bytes"] or _sha256(f) != want["sha256"]:
                raise CheckpointError(f"checkpoint {path} is damaged ({name} does not match its recorded hash); "
                                      "delete that folder to resume from the trajectory alone")
        if state.get("step") != step:
            raise CheckpointError(f"checkpoint {path} says step {state.get('step')}; delete that folder to resume "
                                  "from the trajectory alone")
        return Checkpoint(path, step, state.get("loop", {}))
    return None


# --------------------------------------------------------------------------- metrics

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
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self.tb.add_scalar(k, v, record["step"])

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()


def read_metrics_until(out: Path, step: int) -> list[dict]:
    """The records of ``metrics.jsonl`` up to ``step``, rewriting the file to hold only those (a
    resumed run redoes what came after; a torn last line is dropped)."""
    path = out / "metrics.jsonl"
    if not path.is_file():
        return []
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("step"), int) and rec["step"] <= step:
            kept.append(rec)
    atomic_write(path, lambda p: p.write_text("".join(strict_json(r) + "\n" for r in kept), encoding="utf-8"))
    return kept


def strict_json(record: dict) -> str:
    """One JSON line that strict readers accept: NaN and ±inf (which ``json.dumps`` would write as
    bare ``NaN``/``Infinity`` tokens) become null."""
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
    return json.dumps(clean, allow_nan=False)
