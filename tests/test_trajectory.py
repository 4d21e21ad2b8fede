"""Trajectories: replay rebuilds every ZO method's weights bit for bit; resume survives damage.

Runs go through the CLI in-process on the tiny random Llama (a few ms per step). The kill -9
tests with real subprocesses are in tests/test_kill_resume.py.
"""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

import zotune.train as train_mod
from zotune.cli import main
from zotune.optim import OPTIMIZERS, optimizer_class
from zotune.trajectory import FILE_NAME, MAGIC, TrajectoryError, read_trajectory

TINY = ["--model", "tiny-llama", "--batch-size", "4", "--eval-examples", "8", "--test-examples", "8",
        "--max-length", "48", "--no-progress", "--eval-every", "0"]
ZO_METHODS = sorted(n for n, (_, _, zo) in OPTIMIZERS.items() if zo)


def _train(out, *args):
    return main(["train", *TINY, "--out", str(out), *args])


def _same_weights(a, b) -> bool:
    wa, wb = load_file(str(a)), load_file(str(b))
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def _lr_args(method):
    return [] if method in ("adanaged",) else ["--lr", "1e-3"]


def _interrupted(run):
    """Make a finished run look like one killed after its last step record (no checkpoint)."""
    for name in ("results.json", "model.safetensors"):
        (run / name).unlink()
    for ckpt in run.glob("checkpoint-*"):
        shutil.rmtree(ckpt)


@pytest.mark.parametrize("method", ZO_METHODS)
def test_replay_rebuilds_the_saved_weights_of_every_zo_method(tmp_path, capsys, method):
    run = tmp_path / "run"
    assert _train(run, "--optimizer", method, *_lr_args(method), "--steps", "20") == 0
    traj = read_trajectory(run)
    assert traj.last_step == 20 and traj.torn_bytes == 0
    rebuilt = tmp_path / "rebuilt"
    code = main(["replay", "--trajectory", str(run), "--out", str(rebuilt)])
    if not optimizer_class(method).replayable:  # hybrid-zo's first-order half needs gradient tensors; textbook-mezo
        # draws the published noise, not the engine's
        assert code == 2 and "cannot be replayed" in capsys.readouterr().err and not rebuilt.exists()
        return
    assert code == 0
    assert _same_weights(run / "model.safetensors", rebuilt / "model.safetensors")
    base = load_file(str(rebuilt / "model.safetensors"))
    moved = tmp_path / "moved"
    assert main(["replay", "--trajectory", str(run), "--steps", "0", "--out", str(moved)]) == 0
    assert not _same_weights(moved / "model.safetensors", rebuilt / "model.safetensors"), "20 steps changed nothing"
    assert base  # the replayed folder is a run folder eval accepts
    assert main(["eval", "--run", str(rebuilt), "--json"]) == 0


def test_first_order_runs_are_not_replayable(tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(run, "--optimizer", "sgd", "--lr", "1e-3", "--steps", "2") == 0
    assert main(["replay", "--trajectory", str(run), "--out", str(tmp_path / "r")]) == 2
    assert "first-order" in capsys.readouterr().err


def test_mezo_trajectory_is_38_bytes_per_step(tmp_path):
    """The record of a MeZO step: frame (8) + kind (1) + step, seed, flags, calls, n (21) + 2 losses (8)."""
    run = tmp_path / "run"
    assert _train(run, "--optimizer", "mezo", "--lr", "1e-3", "--steps", "10") == 0
    traj = read_trajectory(run)
    assert traj.ends[10] - traj.ends[0] == 10 * 38
    assert all(len(r.values) == 2 and r.calls == 2 for r in traj.records)


def test_resume_redoes_the_step_of_a_torn_last_record(tmp_path, capsys):
    ref = tmp_path / "ref"
    assert _train(ref, "--optimizer", "zo-sgd-momentum", "--lr", "1e-3", "--steps", "6") == 0
    run = tmp_path / "run"
    shutil.copytree(ref, run)
    _interrupted(run)
    data = bytearray((run / FILE_NAME).read_bytes())
    data[-6] ^= 0x40  # a flipped byte in the last record (a value of step 6)
    (run / FILE_NAME).write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "last record was cut short or damaged" in err and "step 6 is redone" in err
    assert _same_weights(ref / "model.safetensors", run / "model.safetensors")
    assert (run / FILE_NAME).read_bytes() == (ref / FILE_NAME).read_bytes()


def test_a_half_written_last_record_is_cut(tmp_path, capsys):
    ref = tmp_path / "ref"
    assert _train(ref, "--optimizer", "mezo", "--lr", "1e-3", "--steps", "5") == 0
    run = tmp_path / "run"
    shutil.copytree(ref, run)
    _interrupted(run)
    data = (run / FILE_NAME).read_bytes()
    (run / FILE_NAME).write_bytes(data[:-20])  # killed in the middle of appending step 5
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert _same_weights(ref / "model.safetensors", run / "model.safetensors")


def test_a_damaged_middle_record_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(run, "--optimizer", "mezo", "--lr", "1e-3", "--steps", "6") == 0
    _interrupted(run)
    traj = read_trajectory(run)
    data = bytearray((run / FILE_NAME).read_bytes())
    data[traj.ends[2] + 10] ^= 0x01  # inside the record of step 3
    (run / FILE_NAME).write_bytes(bytes(data))
    with pytest.raises(TrajectoryError, match="corrupt"):
        read_trajectory(run)
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "corrupt" in err and "Traceback" not in err
    assert main(["replay", "--trajectory", str(run), "--out", str(tmp_path / "r")]) == 2
    assert not (tmp_path / "r").exists()


def test_not_a_trajectory(tmp_path, capsys):
    fake = tmp_path / "trajectory.zot"
    fake.write_bytes(b"hello")
    assert main(["replay", "--trajectory", str(fake), "--out", str(tmp_path / "r")]) == 2
    assert "not a zotune trajectory" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["train", "--resume", str(empty)]) == 2
    assert "not a zotune run folder" in capsys.readouterr().err
    (tmp_path / "header-only.zot").write_bytes(MAGIC)
    assert main(["replay", "--trajectory", str(tmp_path / "header-only.zot"), "--out", str(tmp_path / "r")]) == 2
    assert "no valid header" in capsys.readouterr().err


def test_replay_onto_another_base_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(run, "--optimizer", "mezo", "--lr", "1e-3", "--steps", "2") == 0
    capsys.readouterr()
    assert main(["replay", "--trajectory", str(run), "--base", "tiny-opt", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "is not the base model" in err and "--base" in err
    assert not (tmp_path / "r").exists()


def test_resume_with_another_config_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(run, "--optimizer", "mezo", "--lr", "1e-3", "--steps", "4") == 0
    _interrupted(run)
    before = (run / FILE_NAME).read_bytes()
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--lr", "1e-2"]) == 2
    err = capsys.readouterr().err
    assert "lr=0.001" in err and "only steps, save_every, max_skips, evaluation_ranks, rank_timeout_s may change" in err
    text = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(text.replace("seed: 0", "seed: 1"))
    assert main(["train", "--resume", str(run)]) == 2
    assert "differs from the config its trajectory was recorded with (fields seed)" in capsys.readouterr().err
    assert (run / FILE_NAME).read_bytes() == before  # nothing touched


def test_resume_of_a_finished_run_needs_more_steps_and_then_equals_a_longer_run(tmp_path, capsys):
    args = ("--optimizer", "zo-adam", "--lr", "1e-3", "--save-every", "3")
    long = tmp_path / "long"
    assert _train(long, *args, "--steps", "8") == 0
    run = tmp_path / "run"
    assert _train(run, *args, "--steps", "5") == 0
    capsys.readouterr()
    assert main(["train", "--resume", str(run)]) == 2
    assert "already finished its 5 steps" in capsys.readouterr().err
    assert main(["train", "--resume", str(run), "--steps", "8", "--no-progress"]) == 0
    assert _same_weights(long / "model.safetensors", run / "model.safetensors")
    assert json.loads((run / "results.json").read_text())["steps"] == 8


def test_a_damaged_checkpoint_is_named(tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(run, "--optimizer", "mezo", "--lr", "1e-3", "--steps", "6", "--save-every", "2") == 0
    (run / "results.json").unlink()
    ckpt = next(run.glob("checkpoint-*"))
    weights = ckpt / "weights.safetensors"
    weights.unlink()  # the final checkpoint hard-links model.safetensors: damage a copy only
    data = bytearray((run / "model.safetensors").read_bytes())
    data[-3] ^= 0xFF
    weights.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--steps", "8"]) == 2
    err = capsys.readouterr().err
    assert str(ckpt) in err and "damaged" in err and "delete that folder" in err


def test_a_full_disk_while_checkpointing_stops_resumably(tmp_path, capsys, monkeypatch):
    args = ("--optimizer", "zo-sgd-momentum", "--lr", "1e-3", "--steps", "6", "--save-every", "2")
    ref = tmp_path / "ref"
    assert _train(ref, *args) == 0
    import safetensors.torch

    real, calls = safetensors.torch.save_file, [0]

    def full_disk(*a, **k):
        calls[0] += 1
        if calls[0] == 2:  # the second checkpoint (step 4)
            raise OSError(28, "No space left on device")
        return real(*a, **k)

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    run = tmp_path / "run"
    capsys.readouterr()
    assert _train(run, *args) == 1
    err = capsys.readouterr().err
    assert "No space left on device" in err and "--resume" in err and "Traceback" not in err
    assert [p.name for p in run.glob("checkpoint-*")] == ["checkpoint-00000002"]  # the previous one stays
    assert not list(run.glob(".checkpoint-*")) and not (run / "results.json").exists()
    monkeypatch.setattr(safetensors.torch, "save_file", real)
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert _same_weights(ref / "model.safetensors", run / "model.safetensors")


def test_a_skipped_step_is_recorded_and_replayed(tmp_path, capsys, monkeypatch):
    real_loss, calls = train_mod.loss_fn, [0]

    def loss_fn(model, batch):  # the 5th and 6th forward (MeZO's step 3) see NaN
        calls[0] += 1
        return real_loss(model, batch) * (float("nan") if calls[0] in (5, 6) else 1.0)

    monkeypatch.setattr(train_mod, "loss_fn", loss_fn)
    run = tmp_path / "run"
    assert _train(run, "--optimizer", "mezo", "--lr", "1e-3", "--steps", "6") == 0
    res = json.loads((run / "results.json").read_text())
    assert res["skipped_steps"] == 1 and res["steps"] == 6 and res["stopped"] is None
    assert [r.skipped for r in read_trajectory(run).records] == [False, False, True, False, False, False]
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert any(x.get("skipped") and x["step"] == 3 for x in lines)
    rebuilt = tmp_path / "rebuilt"
    assert main(["replay", "--trajectory", str(run), "--out", str(rebuilt)]) == 0
    assert _same_weights(run / "model.safetensors", rebuilt / "model.safetensors")


def test_resume_refuses_a_run_stopped_on_non_finite_losses(tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(run, "--optimizer", "mezo", "--lr", "1e10", "--steps", "8", "--max-skips", "2") == 1
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--steps", "9"]) == 2
    assert "cannot continue" in capsys.readouterr().err


def test_resume_flags_are_checked(tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(run, "--optimizer", "mezo", "--lr", "1e-3", "--steps", "2") == 0
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--overwrite"]) == 2
    assert "drop --config/--overwrite" in capsys.readouterr().err
    assert main(["train", "--resume", str(run), "--steps", "1"]) == 2
    assert "already finished" in capsys.readouterr().err


def test_a_refused_update_in_mid_step_keeps_exactly_the_last_recorded_step(tmp_path, capsys, monkeypatch):
    """A write refused after other parameters of the step were written leaves a mix of two steps
    in memory; the run rebuilds the last recorded step from its checkpoint and trajectory."""
    from zotune.engine import Engine, NonFiniteUpdateError

    args = ("--optimizer", "mezo", "--lr", "1e-2", "--save-every", "2")
    ref = tmp_path / "ref"
    assert _train(ref, *args, "--steps", "3") == 0
    real, writes = Engine.write_along, [0]

    def refuse_in_step_4(self, e, *a, **k):
        if self.clock().index == 3:  # 0-based: the fourth step
            writes[0] += 1
            if writes[0] == 3:  # two parameters of the step are already written
                raise NonFiniteUpdateError("refused (test)")
        return real(self, e, *a, **k)

    monkeypatch.setattr(Engine, "write_along", refuse_in_step_4)
    run = tmp_path / "run"
    assert _train(run, *args, "--steps", "6") == 1
    assert "rebuilt from the checkpoint and the trajectory" in capsys.readouterr().err
    res = json.loads((run / "results.json").read_text())
    assert res["weights_step"] == 3 and res["stopped"].startswith("non-finite update at step 4")
    assert _same_weights(ref / "model.safetensors", run / "model.safetensors")


def test_replay_steps_beyond_the_trajectory_are_refused(tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(run, "--optimizer", "mezo", "--lr", "1e-3", "--steps", "2") == 0
    capsys.readouterr()
    assert main(["replay", "--trajectory", str(run), "--steps", "3", "--out", str(tmp_path / "r")]) == 2
    assert "--steps must be between 0 and 2" in capsys.readouterr().err and not (tmp_path / "r").exists()


@pytest.mark.parametrize("method", sorted(OPTIMIZERS))
def test_resume_from_a_checkpoint_restores_every_methods_state(tmp_path, method):
    """A run continued from its final checkpoint (weights + optimizer state: momentum, moments,
    radii, counters) ends where a run of the full length ends, bit for bit, for every optimizer."""
    lr = [] if method == "adanaged" else ["--lr", "1e-3"]
    full = tmp_path / "full"
    assert _train(full, "--optimizer", method, *lr, "--steps", "5") == 0
    run = tmp_path / "run"
    assert _train(run, "--optimizer", method, *lr, "--steps", "3") == 0
    assert main(["train", "--resume", str(run), "--steps", "5", "--no-progress"]) == 0
    assert _same_weights(full / "model.safetensors", run / "model.safetensors")
