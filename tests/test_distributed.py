"""Data-parallel ZO on torch.distributed (issue 13, first part): 2 gloo processes on this CPU.

Each worker is a spawned process with its own tiny Llama (seeded: identical on every rank), MeZO
with the same seed, and its half of each global batch; the parent compares what they saved."""

import multiprocessing
import os
import time

import pytest
import torch

STEPS, GLOBAL = 3, 8


def _problem():
    from zotune.models import load_model
    from zotune.tasks import encode, get_task

    model, tok = load_model("tiny-llama", device="cpu")
    task = get_task("sst2")
    rows = task.load("train")[:STEPS * GLOBAL]
    batches = [rows[i:i + GLOBAL] for i in range(0, len(rows), GLOBAL)]
    return model, (lambda ex: encode(task, tok, ex, max_length=48)), batches


def _closure(model, batch):
    from zotune.tasks import loss_fn

    return lambda: loss_fn(model, batch)


def _split_worker(rank, world, store, out, spec):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    from zotune.distributed import init, split_evaluations
    from zotune.optim import build_optimizer

    init("gloo", timeout_s=20, init_method=f"file://{store}")
    model, encode, batches = _problem()
    method, n = spec
    opt = build_optimizer(method, model.named_parameters(), lr=1e-3, seed=0, num_directions=n)
    split = split_evaluations(opt)
    opt.engine.tape.recording = True
    calls, tapes = [0], []
    for rows in batches:
        closure = _closure(model, encode(rows))
        opt.step(lambda: (calls.__setitem__(0, calls[0] + 1), closure())[1])
        tapes.append(opt.engine.tape.take())
    torch.save({"weights": {n: p.detach() for n, p in model.named_parameters()}, "bytes": split.bytes_sent,
                "calls": calls[0], "tapes": tapes}, f"{out}/rank{rank}.pt")


def _worker(rank, world, store, out, die_after):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    from zotune.distributed import DataParallel, DistributedError, init, shard
    from zotune.optim import MeZO

    init("gloo", timeout_s=20, init_method=f"file://{store}")
    model, encode, batches = _problem()
    opt = MeZO(model.named_parameters(), lr=1e-3, seed=0)
    dp = DataParallel()
    try:
        for step, rows in enumerate(batches):
            if die_after is not None and rank == 1 and step == die_after:
                os._exit(3)  # a rank dies mid-run
            mine = shard(rows, rank, world)
            opt.step(dp.closure([(len(mine), _closure(model, encode(mine)))], len(rows)))
    except DistributedError as err:
        torch.save({"error": str(err), "time": time.time()}, f"{out}/rank{rank}.pt")
        return
    torch.save({"weights": {n: p.detach() for n, p in model.named_parameters()}, "bytes": dp.bytes_sent},
               f"{out}/rank{rank}.pt")


def _spawn(tmp_path, die_after=None, target=None, arg=None):
    ctx = multiprocessing.get_context("spawn")
    target, arg = (target, arg) if target else (_worker, die_after)
    procs = [ctx.Process(target=target, args=(r, 2, tmp_path / "store", tmp_path, arg)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert all(p.exitcode is not None for p in procs), "a worker hung"
    return procs


def test_two_ranks_equal_one_process_with_the_same_micro_batches(tmp_path):
    """Bit-identical weights: the ranks' float64 all-reduce adds n₀L₀ + n₁L₁ as one process adds its
    two micro-batches (``mean_of``); with 2 ranks the order cannot differ. MeZO sends 8 bytes per
    forward: 16 per step, ≤ 64."""
    from zotune.distributed import mean_of, shard
    from zotune.optim import MeZO

    procs = _spawn(tmp_path)
    assert [p.exitcode for p in procs] == [0, 0]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    model, encode, batches = _problem()
    opt = MeZO(model.named_parameters(), lr=1e-3, seed=0)
    for rows in batches:
        parts = [(len(shard(rows, r, 2)), _closure(model, encode(shard(rows, r, 2)))) for r in range(2)]
        opt.step(lambda: mean_of([(n, f()) for n, f in parts]))
    single = {n: p.detach() for n, p in model.named_parameters()}
    start, _, _ = _problem()
    moved = max((single[n] - p.detach()).abs().max().item() for n, p in start.named_parameters())
    assert moved > 0
    for r in ranks:
        assert all(torch.equal(r["weights"][n], single[n]) for n in single)
        assert r["bytes"] == STEPS * 2 * 8 and r["bytes"] / STEPS <= 64


def test_a_dead_rank_stops_the_other_with_a_clear_message(tmp_path):
    t0 = time.time()
    procs = _spawn(tmp_path, die_after=1)
    assert procs[1].exitcode == 3
    got = torch.load(tmp_path / "rank0.pt")
    assert "error" in got, "rank 0 finished as if nothing happened"
    assert "another rank stopped answering" in got["error"] and "last checkpoint is valid" in got["error"]
    assert got["time"] - t0 < 60


@pytest.mark.parametrize("method,n,forwards", [("mezo", 1, 2), ("mezo", 2, 4), ("mezo-gv", 1, 4)])
def test_evaluations_split_over_two_ranks_equal_one_process(tmp_path, method, n, forwards):
    """MeZO n = 1: perturbation-parallel (+ε on rank 0, −ε on rank 1); n = 2: direction-parallel (one
    direction per rank, both signs); MeZO-GV: the pool's two scores, then the guiding vector's ± pair,
    one of each per rank. Weights bit-identical to one process evaluating the same directions; each
    rank runs half the forwards and sends 8 bytes per forward of the step; rank 0's tape holds every
    loss, in the order one process records them."""
    from zotune.optim import build_optimizer

    procs = _spawn(tmp_path, target=_split_worker, arg=(method, n))
    assert [p.exitcode for p in procs] == [0, 0]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    model, encode, batches = _problem()
    opt = build_optimizer(method, model.named_parameters(), lr=1e-3, seed=0, num_directions=n)
    opt.engine.tape.recording = True
    tapes = []
    for rows in batches:
        opt.step(_closure(model, encode(rows)))
        tapes.append(opt.engine.tape.take())
    single = {name: p.detach() for name, p in model.named_parameters()}
    for r in ranks:
        assert all(torch.equal(r["weights"][name], single[name]) for name in single)
        assert r["calls"] == STEPS * forwards // 2 and r["bytes"] == STEPS * 8 * forwards
    assert ranks[0]["tapes"] == tapes


def test_shard_refuses_an_uneven_split():
    from zotune.distributed import shard

    assert shard(list(range(8)), 1, 2) == [4, 5, 6, 7]
    with pytest.raises(ValueError, match="does not split evenly over 3 ranks"):
        shard(list(range(8)), 0, 3)


def test_bench_scale_reports_throughput_bytes_and_efficiency(capsys):
    """The numbers are this machine's; the test checks the report, not a speed."""
    import json

    from zotune.cli import main

    assert main(["bench", "scale", "--model", "tiny-llama", "--batch", "4", "--seq", "8", "--steps", "1",
                 "--warmup", "0"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["mode"] == "data" and res["processes"] == 2
    assert res["one"]["bytes_per_step"] == 0 and res["many"]["bytes_per_step"] == 16
    assert res["one"]["samples_per_s"] > 0 and res["efficiency"] > 0
    assert main(["bench", "scale", "--model", "tiny-llama", "--batch", "5"]) == 2


def test_the_torchrun_example_runs_on_two_cpu_processes(tmp_path):
    """``torchrun --nproc-per-node 2 examples/torchrun_mezo.py`` (the loop a user writes; evaluation-
    parallel here, data-parallel is what ``zotune train`` under torchrun is tested with below) trains
    and reports the bytes rank 0 sent per step."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    for extra, sent in ((["--parallel", "evaluation", "--directions", "2"], 32),):
        run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                              "--standalone", str(root / "examples" / "torchrun_mezo.py"), "--model",
                              "tiny-llama", "--steps", "2", "--lr", "1e-3", *extra],
                             capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
        assert run.returncode == 0, run.stderr[-2000:]
        assert "step 2: loss" in run.stdout and f"bytes sent per step by rank 0: {sent}" in run.stdout


# --------------------------------------------------------------------------- zotune train under torchrun

TRAIN = ["--model", "tiny-llama", "--task", "sst2", "--batch-size", "8", "--eval-every", "2", "--eval-examples",
         "16", "--test-examples", "20", "--lr", "1e-3", "--eps", "1e-2", "--save-every", "2", "--no-progress"]
QUIET_THREADS = {"OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}


def _zotune(cwd, *args, ranks=None, timeout=300):
    """``zotune train ...`` in one process, or under ``torchrun --nproc-per-node ranks``."""
    import subprocess
    import sys

    launch = ([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(ranks), "--standalone"]
              if ranks else [sys.executable])
    return subprocess.run([*launch, "-m", "zotune", "train", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, **QUIET_THREADS}, timeout=timeout)


def _weights(run):
    from safetensors.torch import load_file

    return load_file(run / "model.safetensors")


def _losses(run):
    from zotune.trajectory import read_trajectory

    return [r.values for r in read_trajectory(run).records]


@pytest.mark.parametrize("ranks,split,single", [
    (2, ["--evaluation-ranks", "1"], ["--grad-accum", "2"]),  # data-parallel: a half batch per rank
    (2, ["--evaluation-ranks", "2", "--opt", "num_directions=2"], ["--opt", "num_directions=2"]),  # one direction each
    (4, ["--evaluation-ranks", "2", "--opt", "num_directions=2"], ["--grad-accum", "2", "--opt", "num_directions=2"]),
])
def test_zotune_train_under_torchrun_equals_one_process(tmp_path, ranks, split, single):
    """The README's torchrun lines: weights, trajectory losses and test accuracy equal one process
    reading the same micro-batches (bit for bit: the float64 sums add in the same order); rank 0
    alone writes, and the run folder holds what a one-process run's does; MeZO sends ≤ 64 bytes a
    step (16 for the losses, 8 for the stop flag, per rank; 32 more per step when 2 directions are
    shared out)."""
    import json

    (tmp_path / "many").mkdir()
    (tmp_path / "one").mkdir()
    got = _zotune(tmp_path / "many", *TRAIN, "--steps", "3", "--out", "run", *split, ranks=ranks)
    assert got.returncode == 0, got.stderr[-3000:]
    want = _zotune(tmp_path / "one", *TRAIN, "--steps", "3", "--out", "run", *single)
    assert want.returncode == 0, want.stderr[-3000:]
    many, one = tmp_path / "many" / "run", tmp_path / "one" / "run"
    a, b = _weights(many), _weights(one)
    assert all(torch.equal(a[k], b[k]) for k in b)
    assert _losses(many) == _losses(one)
    assert sorted(p.name for p in (tmp_path / "many").iterdir()) == ["run"]  # nobody wrote elsewhere
    assert sorted(p.name for p in many.iterdir()) == sorted(p.name for p in one.iterdir())
    res, ref = json.loads((many / "results.json").read_text()), json.loads((one / "results.json").read_text())
    assert res["ranks"] == ranks and res["evaluation_ranks"] == int(split[1])
    assert res["test_accuracy"] == ref["test_accuracy"] and res["final_loss"] == ref["final_loss"]
    directions = 2 if "num_directions=2" in split else 1
    per_step = (8 * 2 if ranks // int(split[1]) > 1 else 0) + (16 * directions if int(split[1]) > 1 else 0) + 8
    assert res["bytes_per_step"] == round((3 * per_step + 8) / 3, 1)  # + the flag asked after the last step
    if directions == 1:
        assert res["bytes_per_step"] <= 64
    assert got.stdout.count("fine-tuned test accuracy") == 1  # rank 0 reports for all


def test_a_signal_to_one_rank_stops_every_rank_after_the_same_step(tmp_path):
    """SIGTERM to rank 1 alone: the ranks agree on it at the next step, rank 0 checkpoints, and a
    torchrun resume ends bit-identical to an uninterrupted run (one process with the same
    micro-batches, which the test above shows equal to 2 ranks)."""
    import signal
    import subprocess
    import sys

    args = [*TRAIN, "--steps", "24", "--eval-every", "12", "--save-every", "8"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone", "-m", "zotune",
           "train", *args, "--out", "cut"]
    run = subprocess.Popen(cmd, cwd=tmp_path, env={**os.environ, **QUIET_THREADS}, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "cut" / "metrics.jsonl"
    deadline = time.time() + 120
    while not (metrics.is_file() and metrics.stat().st_size) and time.time() < deadline and run.poll() is None:
        time.sleep(0.1)
    import psutil

    workers = [p for p in psutil.Process(run.pid).children(recursive=True) if "zotune" in " ".join(p.cmdline())]
    rank1 = next(p for p in workers if p.environ().get("RANK") == "1")
    rank1.send_signal(signal.SIGTERM)
    out, err = run.communicate(timeout=120)
    assert "SIGTERM: stopped after step" in err, err[-3000:]
    from zotune.trajectory import read_trajectory

    stopped_at = read_trajectory(tmp_path / "cut").last_step
    assert 0 < stopped_at < 24 and (tmp_path / "cut" / f"checkpoint-{stopped_at:08d}").is_dir()
    resumed = _zotune(tmp_path, "--resume", "cut", "--no-progress", ranks=2)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    whole = _zotune(tmp_path, *args, "--out", "whole", "--grad-accum", "2")
    assert whole.returncode == 0, whole.stderr[-3000:]
    a, b = _weights(tmp_path / "cut"), _weights(tmp_path / "whole")
    assert all(torch.equal(a[k], b[k]) for k in b)


@pytest.mark.parametrize("flags,message", [
    (["--optimizer", "adamw"], "first-order"),
    (["--optimizer", "forward-grad"], "reads derivatives from its closure"),
    (["--batch-size", "6", "--grad-accum", "2"], "does not split over 2 data-parallel ranks"),
])
def test_runs_that_cannot_be_shared_out_are_refused_before_loading(tmp_path, monkeypatch, flags, message):
    from zotune.config import TrainConfig, merge
    from zotune.train import join_ranks

    monkeypatch.setenv("WORLD_SIZE", "2")
    config = merge(TrainConfig(model="tiny-llama", lr=1e-3), {k.lstrip("-").replace("-", "_"): v
                                                                for k, v in zip(flags[::2], flags[1::2])})
    with pytest.raises(ValueError, match=message):
        join_ranks(config)


def test_the_cli_leaves_the_process_group_on_every_exit(tmp_path, monkeypatch):
    """A process that joined a group leaves it before exiting, clean exit or error: gloo's threads
    torn down by interpreter exit instead can abort a rank (-6) after a finished run."""
    import torch.distributed as dist

    from zotune.cli import main
    from zotune.distributed import init, leave

    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    init("gloo", timeout_s=20, init_method=f"file://{tmp_path / 'store'}")
    try:
        assert dist.is_initialized()
        assert main(["train", "--optimizer", "no-such-method"]) != 0
        assert not dist.is_initialized()
    finally:
        leave()
