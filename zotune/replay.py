"""``zotune replay``: rebuild a run's weights from its base model and its trajectory alone.

No forward pass is run: each recorded step is played back (``zotune.trajectory.play``), so the
result is bit-identical to the weights the run saved, on the same device type, for every
zeroth-order method. Methods with state (momentum, Adam moments, AdaNAGED's radii) rebuild it as
they go. First-order baselines (and HybridZO's first-order half) need gradient tensors, not
scalars, and are refused.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import torch

from zotune.config import from_dict, save_config
from zotune.run_folder import atomic_write, check_out_dir, open_run_dir, save_weights, write_json
from zotune.trajectory import TrajectoryError, check_replayable, play, read_trajectory, weights_hash


def replay(trajectory: str | Path, out: str | Path, base: str | None = None, steps: int | None = None,
           device: str | None = None, overwrite: bool = False) -> dict:
    """Write ``out/model.safetensors`` (and a config.yaml, so ``zotune eval --run out`` works): the
    weights after ``steps`` (default: all) recorded steps, rebuilt from ``base`` (default: the
    run's model)."""
    from zotune.models import resolve_device
    from zotune.optim import build_optimizer
    from zotune.train import load_run_model, optimizer_hparams, select_trainable

    traj = read_trajectory(trajectory)
    if traj.torn_bytes:
        print(f"zotune: warning: {traj.path}'s last record is cut short ({traj.torn_bytes} bytes, a crash while "
              "writing it); it is not used", file=sys.stderr)
    header = traj.header
    config = from_dict(header["config"], where=f"{traj.path} header")
    if steps is None:
        steps = traj.last_step
    if steps < 0 or steps > traj.last_step:
        raise ValueError(f"--steps must be between 0 and {traj.last_step}, the steps {traj.path} holds (got {steps})")
    out = check_out_dir(out, overwrite)
    dev = resolve_device(device or header["device_type"])
    if dev.type != header["device_type"]:
        raise TrajectoryError(f"{traj.path} was recorded on {header['device_type']}; the noise drawn on {dev.type} "
                              f"differs, so replay it with --device {header['device_type']}")
    model_name = base or config.model
    model, _ = load_run_model(config, str(dev), model=model_name)
    named = select_trainable(model, config.trainable)
    if weights_hash(named) != header["base_weights_sha256"]:
        raise TrajectoryError(f"{model_name} is not the base model {traj.path} was recorded from (its trainable "
                              f"weights hash differently; the run started from {config.model}). Give that model "
                              "with --base")
    opt = build_optimizer(config.optimizer, named, **optimizer_hparams(config))
    check_replayable(opt, config.optimizer)
    opt.engine.probe_layout(lambda: model(input_ids=torch.zeros(1, 2, dtype=torch.long, device=dev)))
    for record in traj.records[:steps]:
        play(opt, record)
    open_run_dir(out, overwrite)
    save_weights(named, out / "model.safetensors")
    atomic_write(out / "config.yaml", lambda p: save_config(dataclasses.replace(config, out=str(out), model=model_name,
                                                                                 steps=max(steps, 1)), p))
    summary = {"out": str(out), "trajectory": str(traj.path), "base": model_name, "steps": steps,
               "optimizer": config.optimizer, "trajectory_bytes": traj.path.stat().st_size}
    write_json(out / "replay.json", summary)
    return summary
