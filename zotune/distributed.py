"""Scale-out on ``torch.distributed``: ranks agree on scalars, never on weights.

Every rank holds the whole model (or its own device's part of it) and the same optimizer with the
same seed, so every rank draws the same directions from the same seeds. What they must agree on
is the closure's value at each perturbed point; once they do, each applies the same update and the
weights stay identical without ever being sent.

Data-parallel (``DataParallel``): each rank reads its shard of the global batch at every perturbed
point; the closure's value is Σ_r Σ_i n_i·L_i / N over all ranks' micro-batches (sizes n_i, losses
L_i, N examples in all), one all-reduce of one float64 per closure call: 8 bytes sent per rank per
forward, 16 per MeZO step. The sums are taken in float64 in the same order as one process summing
the same micro-batches (``weighted_sum``; ``--grad-accum`` uses it too), so with 2 ranks the weights
are bit-identical to one process running the same micro-batches; with more ranks the all-reduce may
add in another order (a last-bit difference that ΔL/2ε then magnifies). Against one process reading
the global batch unsplit, padding per shard and the mean of means differ in the last bits of fp32:
measured 2.4e-6 of the weights' norm after 3 MeZO steps at ε = 1e-3 (``docs/integrations.md``).

A rank that dies or hangs makes the others' next all-reduce fail (gloo: at once on a closed
connection; otherwise after ``timeout_s``); they stop with ``DistributedError`` naming the cause.
Evaluation-parallel (``split_evaluations(opt)``): the ranks read the same batch and share out a
step's independent forward passes, then sum the losses over ranks (one all-reduce of the step's
losses, 8 bytes each: 16·n bytes per rank for n-SPSA). With at least as many directions as ranks
each rank evaluates whole directions, both signs (direction-parallel); with fewer, the +ε and −ε
forwards of one direction go to different ranks (perturbation-parallel, as DistZO2, arXiv
2507.03211). Every rank then holds every loss, bit for bit the values one process would compute, and
applies the same update; rank 0's tape holds them all, so one process can replay the run. It serves
every forward that goes through ``Engine.evaluations`` (``spsa``, ``one_sided_spsa``, ``two_point``,
``one_sided``: MeZO, the ZO-SGD family, ZO-Adam, the samplers' presets, FZOO, ZO-Muon, MeZO-GV's and
MeZO-Greedy's pools); single forwards read through ``loss_at`` alone (ZO-SGD-Cons's candidates,
MeZO-Greedy's L(θ)) run on every rank.

The ``torchrun`` launch of ``zotune train`` (rank 0 writing the run folder) and the data ×
evaluation grid are not here yet (issue 13).
"""

from __future__ import annotations

import datetime
import os
from typing import Callable

import torch
import torch.distributed as dist

from zotune.errors import TrainingFailure


class DistributedError(TrainingFailure):
    """Another rank died, hung past the timeout, or the group could not be formed."""


def weighted_sum(parts: list[tuple[int, torch.Tensor]]) -> torch.Tensor:
    """Σ n·L over (size n, loss L) pairs, in float64, in the order given: the exact arithmetic a
    split batch is combined with, in one process (``--grad-accum``) and across ranks. Nothing is
    detached or moved: a closure's value may carry autograd or forward-AD (HybridZO, ForwardGrad)."""
    total = None
    for n, loss in parts:
        term = loss.reshape(()).to(torch.float64) * float(n)
        total = term if total is None else total + term
    return total


def mean_of(parts: list[tuple[int, torch.Tensor]]) -> torch.Tensor:
    """The examples' mean loss over the split batch (fp32): ``weighted_sum`` / N."""
    return (weighted_sum(parts) / sum(n for n, _ in parts)).float()


def init(backend: str | None = None, timeout_s: float = 300.0, init_method: str | None = None) -> tuple[int, int]:
    """Join the process group torchrun (or ``init_method``) describes; (rank, world size).
    Backend: gloo for CPU tensors, NCCL when CUDA is available, unless given."""
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":  # NCCL's all-reduce runs on the current device: this rank's own
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    where = {} if init_method is None else dict(init_method=init_method, rank=int(os.environ.get("RANK", 0)),
                                                world_size=int(os.environ.get("WORLD_SIZE", 1)))
    try:
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s), **where)
    except (RuntimeError, ValueError) as err:
        raise DistributedError(f"could not form the process group ({err}); launch with torchrun, which sets "
                               "RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT") from None
    return dist.get_rank(), dist.get_world_size()


def shard(items: list, rank: int, world: int) -> list:
    """Rank ``rank``'s contiguous share of ``items`` (the global batch); the sizes must divide."""
    if len(items) % world:
        raise ValueError(f"a global batch of {len(items)} does not split evenly over {world} ranks; use a batch "
                         f"size divisible by {world}")
    size = len(items) // world
    return items[rank * size:(rank + 1) * size]


class DataParallel:
    """Closures whose value is the global batch's mean loss, from this rank's micro-batches.

    ``closure(parts, global_size)``: ``parts`` are (n_i, closure_i) for this rank's micro-batches
    (each closure_i the mean loss of n_i examples). ``bytes_sent`` counts what this rank sent.
    """

    def __init__(self, group=None):
        self.group = group
        self.bytes_sent = 0
        self.rank = dist.get_rank(group) if dist.is_initialized() else 0

    def closure(self, parts: list[tuple[int, Callable[[], torch.Tensor]]], global_size: int):
        def value():
            local = weighted_sum([(n, f()) for n, f in parts])
            total = self.all_reduce(local)
            return (total / global_size).float()

        return value

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Σ over ranks of the float64 tensor ``x`` (8 bytes per element sent)."""
        buf = x.detach().to("cpu").clone()
        if dist.is_initialized() and dist.get_world_size(self.group) > 1:
            if dist.get_backend(self.group) == "nccl":
                buf = buf.cuda()
            try:
                dist.all_reduce(buf, group=self.group)
            except (RuntimeError, dist.DistBackendError) as err:
                raise DistributedError(
                    f"rank {self.rank}: another rank stopped answering during a step ({str(err).splitlines()[0]}); "
                    "this run stops on every rank, and its last checkpoint is valid") from None
            self.bytes_sent += buf.numel() * buf.element_size()
        return buf.cpu()


class Split:
    """Which of a step's evaluations this rank runs, and the all-reduce that shares their losses."""

    def __init__(self, group=None):
        self.group = group
        self.rank = dist.get_rank(group)
        self.world = dist.get_world_size(group)
        self.reducer = DataParallel(group)

    def mine(self, i: int, count: int, paired: bool) -> bool:
        """Whether evaluation ``i`` of ``count`` is this rank's: whole ± pairs round-robin when there
        are at least as many pairs as ranks, else single evaluations round-robin."""
        if paired and count // 2 >= self.world:
            return (i // 2) % self.world == self.rank
        return i % self.world == self.rank

    def share(self, local: torch.Tensor) -> torch.Tensor:
        """Σ over ranks of the float64 vector ``local`` (zeros where another rank computed)."""
        return self.reducer.all_reduce(local)

    @property
    def bytes_sent(self) -> int:
        return self.reducer.bytes_sent


def split_evaluations(opt, group=None) -> Split:
    """Make ``opt`` share out each step's forward passes over the ranks of ``group``."""
    opt.engine.split = Split(group)
    return opt.engine.split
