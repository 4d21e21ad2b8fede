"""Trajectory files: a run as its base model plus, per step, a seed and the closure's scalars.

A zeroth-order step is a pure function of the weights, the step's seeds and the values its
closure returned (``zotune.tape``), so these few bytes per step rebuild the fine-tuned weights from
the base model bit for bit (``zotune replay``), and let a killed run resume exactly where it was
(``zotune train --resume``).

Format (``trajectory.zot``, little-endian), a sequence of framed records::

    magic b"ZOTRAJ1\\n"
    frame := u32 length | payload | u32 crc32(payload)
    header payload := b"H" + UTF-8 JSON (format, versions, config, base-weights hash, parameters)
    step payload   := b"S" + i64 step | u64 seed | u8 flags | u16 closure calls | u16 n | n × f32 values

``flags`` bit 0 marks a skipped step (a non-finite loss: weights and state unchanged). Records
are appended and flushed (and fsynced) once per step. A frame whose checksum fails is a *torn
tail* when nothing valid follows it (a crash mid-append: cut on resume, with a warning) and
*corruption* otherwise (refused: the steps after it cannot be trusted).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

MAGIC = b"ZOTRAJ1\n"
FORMAT = 1
FILE_NAME = "trajectory.zot"
SKIPPED = 1
_FRAME = struct.Struct("<I")
_STEP = struct.Struct("<qQBHH")


class TrajectoryError(ValueError):
    """A trajectory file that cannot be used: not one, corrupt, or made for other weights/config."""


@dataclass(frozen=True)
class StepRecord:
    """One step of a run: its index (1-based), its draws' seed, whether it was skipped, how many
    times it called the closure, and the values the closure returned (what replay plays back)."""

    step: int
    seed: int
    values: tuple[float, ...]
    calls: int = 0
    skipped: bool = False

    def payload(self) -> bytes:
        head = _STEP.pack(self.step, self.seed & (2**64 - 1), SKIPPED if self.skipped else 0, self.calls,
                          len(self.values))
        return b"S" + head + struct.pack(f"<{len(self.values)}f", *self.values)

    @classmethod
    def from_payload(cls, payload: bytes) -> "StepRecord":
        step, seed, flags, calls, n = _STEP.unpack_from(payload, 1)
        values = struct.unpack_from(f"<{n}f", payload, 1 + _STEP.size)
        if len(payload) != 1 + _STEP.size + 4 * n:
            raise ValueError("step record of the wrong length")
        return cls(step, seed, tuple(values), calls, bool(flags & SKIPPED))


@dataclass
class Trajectory:
    """A read trajectory: its header, its valid step records, and what was cut from its tail."""

    path: Path
    header: dict
    records: list[StepRecord] = field(default_factory=list)
    valid_bytes: int = 0
    torn_bytes: int = 0
    ends: list[int] = field(default_factory=list)  # byte offset after the header, then after each record

    @property
    def last_step(self) -> int:
        return self.records[-1].step if self.records else 0

    def bytes_through(self, step: int) -> int:
        """Length of the file holding the header and the records of steps 1..``step``."""
        return self.ends[min(step, len(self.records))]


def _frame(payload: bytes) -> bytes:
    return _FRAME.pack(len(payload)) + payload + _FRAME.pack(zlib.crc32(payload))


def weights_hash(named_params) -> str:
    """SHA-256 of the trainable tensors (names, dtypes, shapes and bytes, in order): the identity of
    the base weights a trajectory starts from."""
    h = hashlib.sha256()
    for name, p in named_params:
        t = p.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def make_header(config: dict, base_hash: str, named_params, device: str) -> dict:
    """What a replay or resume needs to check before it trusts the records."""
    import zotune
    from zotune.rng import GENERATOR

    return {
        "format": FORMAT,
        "zotune": zotune.__version__,
        "torch": torch.__version__,
        "noise_generator": GENERATOR,
        "device_type": device,
        "config": config,
        "base_weights_sha256": base_hash,
        "parameters": [[name, list(p.shape), str(p.dtype).removeprefix("torch.")] for name, p in named_params],
    }


class TrajectoryWriter:
    """Appends records to a trajectory file; each append is flushed and fsynced, so a step is on
    disk before the next begins."""

    def __init__(self, path: Path, header: dict | None = None, keep_bytes: int | None = None):
        """Start a new file with ``header``, or (``keep_bytes``) reopen an existing one cut to its
        first ``keep_bytes`` bytes (its valid records: a torn tail is dropped)."""
        self.path = Path(path)
        if header is not None:
            self.file = open(self.path, "wb")
            self.file.write(MAGIC + _frame(b"H" + json.dumps(header, sort_keys=True).encode()))
        else:
            self.file = open(self.path, "r+b")
            self.file.truncate(keep_bytes)
            self.file.seek(keep_bytes)
        self._sync()

    def append(self, record: StepRecord) -> None:
        self.file.write(_frame(record.payload()))
        self._sync()

    def cut(self, keep_bytes: int) -> None:
        """Drop everything after the first ``keep_bytes`` bytes (records past a checkpoint that a
        non-replayable method redoes)."""
        self.file.truncate(keep_bytes)
        self.file.seek(keep_bytes)
        self._sync()

    def _sync(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())

    def close(self) -> None:
        self.file.close()


def trajectory_path(run_or_file: str | Path) -> Path:
    p = Path(run_or_file)
    return p / FILE_NAME if p.is_dir() else p


def read_trajectory(run_or_file: str | Path) -> Trajectory:
    """Read and check a trajectory (a run folder or the file). A torn last record is cut (reported
    in ``torn_bytes``); a corrupt record with valid data after it raises TrajectoryError."""
    path = trajectory_path(run_or_file)
    if not path.is_file():
        raise TrajectoryError(f"no trajectory at {path}: the run was made by a zotune without trajectories, or "
                              "this is not a run folder")
    data = path.read_bytes()
    if not data.startswith(MAGIC):
        raise TrajectoryError(f"{path} is not a zotune trajectory file (wrong magic bytes)")
    frames, pos, records_lengths = [], len(MAGIC), []
    torn = 0
    while pos < len(data):
        payload, end = _read_frame(data, pos)
        if payload is None:
            largest = max(records_lengths, default=64)
            if end > len(data) or not _valid_frame_after(data, pos + 1) and len(data) - pos <= 2 * largest + 16:
                torn = len(data) - pos  # a torn (or damaged) last record: nothing valid after it
                break
            raise TrajectoryError(f"{path} is corrupt at byte {pos} (record {len(frames)}): a checksum fails and "
                                  "valid records follow. Steps after it cannot be trusted; resume or replay from "
                                  "a copy of the file, or start a new run")
        frames.append((payload, pos))
        records_lengths.append(end - pos)
        pos = end
    if not frames or frames[0][0][:1] != b"H":
        raise TrajectoryError(f"{path} has no valid header record; it cannot be used (start a new run)")
    header = json.loads(frames[0][0][1:].decode())
    if header.get("format") != FORMAT:
        raise TrajectoryError(f"{path} has trajectory format {header.get('format')}, this zotune reads {FORMAT}")
    traj = Trajectory(path, header, valid_bytes=len(data) - torn, torn_bytes=torn,
                      ends=[at + 8 + len(payload) for payload, at in frames])
    for payload, at in frames[1:]:
        try:
            rec = StepRecord.from_payload(payload) if payload[:1] == b"S" else None
        except (struct.error, ValueError):
            rec = None
        if rec is None or rec.step != traj.last_step + 1:
            raise TrajectoryError(f"{path}: the record at byte {at} is not step {traj.last_step + 1}; the file is "
                                  "corrupt (start a new run, or replay with --steps {traj.last_step})")
        traj.records.append(rec)
    return traj


def _read_frame(data: bytes, pos: int) -> tuple[bytes | None, int]:
    """(payload, end) of the frame at ``pos``; payload None if it is cut short or its checksum fails."""
    if pos + 4 > len(data):
        return None, pos + 4
    (n,) = _FRAME.unpack_from(data, pos)
    end = pos + 4 + n + 4
    if end > len(data):
        return None, end
    payload = data[pos + 4: pos + 4 + n]
    (crc,) = _FRAME.unpack_from(data, pos + 4 + n)
    return (payload if zlib.crc32(payload) == crc else None), end


def _valid_frame_after(data: bytes, start: int) -> bool:
    """Whether a valid frame starts anywhere after ``start`` (so a bad frame is not the tail)."""
    for pos in range(start, len(data) - 8):
        payload, end = _read_frame(data, pos)
        if payload is not None and end <= len(data) and payload[:1] in (b"S", b"H") and len(payload) >= 1 + _STEP.size:
            return True
    return False


# --------------------------------------------------------------------------- playback

def play(opt, record: StepRecord) -> float | None:
    """Redo one recorded step on ``opt`` (a ZO optimizer over the model's weights) without a
    forward pass: the closure's recorded values are played back, so the update is bit-identical.
    Returns the step's loss as the live step returned it (None for a skipped step)."""
    if record.seed != opt.step_seed() & (2**64 - 1):
        raise TrajectoryError(f"step {record.step} was drawn with seed {record.seed}, this optimizer would draw "
                              f"{opt.step_seed() & (2**64 - 1)}: the trajectory belongs to another seed or method")
    if record.skipped:
        opt.skip_step()
        return None
    tape = opt.engine.tape
    tape.play(record.values)
    try:
        loss = opt.step(_no_forward)
    finally:
        tape.stop()
    return float(loss)


def _no_forward():
    raise RuntimeError("a replayed step called its closure: the method read a value the tape did not hold")


def check_replayable(opt, name: str) -> None:
    """Refuse, with the reason, an optimizer whose steps cannot be rebuilt from scalars."""
    from zotune.optim.base import ZOOptimizer

    if not isinstance(opt, ZOOptimizer):
        raise TrajectoryError(f"{name} is a first-order optimizer: its steps need gradient tensors, not the few "
                              "scalars a trajectory keeps, so it cannot be replayed (its run folder's "
                              "model.safetensors holds the weights)")
    if not opt.replayable:
        raise TrajectoryError(f"{name} has a first-order part whose update needs gradient tensors, so its runs "
                              "cannot be replayed from a trajectory (resume works from checkpoints)")
