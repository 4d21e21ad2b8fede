"""``zotune bench scale``: ZO training throughput at 1 and N processes on torch.distributed.

Each configuration runs in fresh processes (spawned, gloo over a file store, ``--threads`` CPU
threads each), times ``--steps`` MeZO steps after ``--warmup`` (median of rank 0's, the ranks
aligned by a barrier before each step) and reports samples per second, the bytes each rank sent per
step (counted by ``zotune.distributed``) and the scaling efficiency against one process with the
same threads:

- ``data``: the global batch (``--batch``) split over the ranks, one direction;
  efficiency = t₁ / (N·t_N) per sample.
- ``evaluation``: every rank reads the whole batch; the step's ``--directions`` n directions (or,
  with n < N, the ± forwards of one) are shared out; efficiency = t₁ / (N·t_N) per step.

One 2-core machine bounds what can be shown here: 2 processes of 1 thread against 1 process of 1
thread. ``--steps``/``--batch``/``--seq`` should make the forward dominate (a real model, a real
batch): then a step is N times fewer forwards per rank plus a few bytes of all-reduce.
"""

from __future__ import annotations

import multiprocessing
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

MODES = ("data", "evaluation")


def _worker(rank: int, world: int, store: str, out: str, cfg: dict) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(cfg["threads"])
    from zotune.bench import bench_model, make_batch
    from zotune.distributed import DataParallel, init, split_evaluations
    from zotune.models import autocast_context
    from zotune.optim import MeZO

    if world > 1:
        init("gloo", timeout_s=120, init_method=f"file://{store}")
    dev = torch.device("cpu")
    net, tok = bench_model(cfg["model"], "fp32", dev)
    ids, loss = make_batch(net, tok, cfg["batch"], cfg["seq"], None, None, dev)
    n = cfg["directions"]
    opt = MeZO(net.named_parameters(), lr=1e-7, eps=1e-3, noise="rademacher", num_directions=n)
    dp = DataParallel()
    counter = dp
    if cfg["mode"] == "evaluation" and world > 1:
        counter = split_evaluations(opt)
    rows = ids if cfg["mode"] == "evaluation" else ids[rank * len(ids) // world:(rank + 1) * len(ids) // world]

    def local():
        with autocast_context(dev, cfg["autocast"]):
            return loss(net, rows)

    closure = dp.closure([(len(rows), local)], len(ids)) if cfg["mode"] == "data" else local
    times = []
    for i in range(cfg["warmup"] + cfg["steps"]):
        if world > 1:
            torch.distributed.barrier()
        t0 = time.perf_counter()
        opt.step(closure)
        if i >= cfg["warmup"]:
            times.append(time.perf_counter() - t0)
    if rank == 0:
        steps = cfg["warmup"] + cfg["steps"]
        torch.save({"seconds": statistics.median(times), "bytes": counter.bytes_sent / steps}, f"{out}/result.pt")
    if world > 1:
        torch.distributed.destroy_process_group()


def _run(world: int, cfg: dict) -> dict:
    ctx = multiprocessing.get_context("spawn")
    # every thread pool of a process sized to --threads, waiting passively: a spinning OpenMP or numba
    # pool in one process steals the core another process computes on
    threads = str(cfg["threads"])
    os.environ.update(OMP_NUM_THREADS=threads, NUMBA_NUM_THREADS=threads, MKL_NUM_THREADS=threads,
                      OMP_WAIT_POLICY="PASSIVE")
    with tempfile.TemporaryDirectory(prefix="zotune-scale-") as tmp:
        procs = [ctx.Process(target=_worker, args=(r, world, str(Path(tmp) / "store"), tmp, cfg)) for r in range(world)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        if any(p.exitcode != 0 for p in procs):
            raise RuntimeError(f"a bench process failed (exit codes {[p.exitcode for p in procs]})")
        return torch.load(Path(tmp) / "result.pt")


def bench_scale(model: str = "smollm2", batch: int = 16, seq: int = 64, mode: str = "data", processes: int = 2,
                directions: int | None = None, threads: int = 1, steps: int = 5, warmup: int = 1,
                autocast: str | None = "bf16") -> dict:
    """Throughput of MeZO at 1 and ``processes`` processes (``mode``: data or evaluation)."""
    if mode not in MODES:
        raise ValueError(f"bench scale --mode must be one of {', '.join(MODES)}, got {mode!r}")
    if processes < 2 or steps < 1 or warmup < 0:
        raise ValueError("bench scale needs --processes >= 2, --steps >= 1 and --warmup >= 0")
    if mode == "data" and batch % processes:
        raise ValueError(f"--batch {batch} does not split over {processes} processes; use a multiple of {processes}")
    directions = directions or (processes if mode == "evaluation" else 1)
    cfg = dict(model=model, batch=batch, seq=seq, mode=mode, directions=directions, threads=threads, steps=steps,
               warmup=warmup, autocast=autocast)
    one, many = _run(1, cfg), _run(processes, cfg)
    per = "sample" if mode == "data" else "step"
    rate = (lambda r: batch / r["seconds"]) if mode == "data" else (lambda r: 1 / r["seconds"])
    return {"model": model, "mode": mode, "batch": batch, "seq": seq, "directions": directions, "threads": threads,
            "processes": processes, "steps": steps,
            "one": {"s_per_step": one["seconds"], f"{per}s_per_s": rate(one), "bytes_per_step": one["bytes"]},
            "many": {"s_per_step": many["seconds"], f"{per}s_per_s": rate(many), "bytes_per_step": many["bytes"]},
            "efficiency": one["seconds"] / (processes * many["seconds"])}
