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

``zotune train`` under ``torchrun`` (``Layout``): the world is D data groups × E evaluation
ranks (``--evaluation-ranks E``; rank = d·E + e). The E ranks of a data group read the same shard
of the batch and share out the step's forward passes; the D ranks with the same e read different
shards of the batch and evaluate the same forward passes, summing their losses. E = 1 is pure
data-parallel, E = world pure evaluation-parallel. Ranks also agree each step on whether a signal
asked them to stop (8 bytes), and share out dev and test evaluations. Rank 0 alone writes the run
folder; the others write nothing.
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


def leave() -> None:
    """Leave the process group, if this process joined one: its communication threads are joined
    here, not torn down by interpreter exit (where gloo's can abort the process, exit code -6, after
    a run that finished)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


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
            local = weighted_sum([(n, f()) for n, f in parts]) if parts else torch.zeros((), dtype=torch.float64)
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


def launched() -> bool:
    """Whether this process is one of several that torchrun started (WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_writer() -> bool:
    """Whether this process writes files and logs: rank 0, or the only process."""
    if dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def even_share(items: list, rank: int, world: int) -> list:
    """Rank ``rank``'s contiguous share of ``items``, sizes differing by at most one (some may be
    empty): for sets that need not split evenly (evaluation examples, MeZO-SVRG's anchor)."""
    lo, hi = len(items) * rank // world, len(items) * (rank + 1) // world
    return items[lo:hi]


class Layout:
    """How the ranks of a torchrun-launched run share each step: D data groups × E evaluation ranks.

    Rank r is data group d = r // E and evaluation rank e = r % E. Every rank of data group d reads
    shard d of the step's batch; the ranks sharing e form a data-parallel group that sums each
    forward's loss (``data``), and the ranks of a data group share out the step's forward passes
    (``split``, when E > 1). Bytes each rank sent are counted per kind.
    """

    def __init__(self, evaluation_ranks: int = 1):
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        if evaluation_ranks < 1 or self.world % evaluation_ranks:
            raise ValueError(f"--evaluation-ranks {evaluation_ranks} does not divide the {self.world} ranks; use "
                             f"a divisor of {self.world} (1: data-parallel only, {self.world}: evaluation-parallel only)")
        e_count = evaluation_ranks
        d_count = self.world // e_count
        self.data_ranks, self.evaluation_ranks = d_count, e_count
        self.data_rank, evaluation_rank = divmod(self.rank, e_count)
        # every rank creates every group, in the same order (torch.distributed requires it)
        data_groups = ([dist.new_group([d * e_count + e for d in range(d_count)]) for e in range(e_count)]
                       if 1 < e_count < self.world else None)
        split_groups = ([dist.new_group([d * e_count + e for e in range(e_count)]) for d in range(d_count)]
                        if 1 < e_count < self.world else None)
        self.data = DataParallel(data_groups[evaluation_rank] if data_groups else None)
        if e_count == 1:
            self.split = None
        else:
            self.split = Split(split_groups[self.data_rank] if split_groups else None)
        self.control = DataParallel()  # stop flags (every step)
        self.first_step = 0  # the step this process started from (a resume's), for bytes per step
        self.sharing = DataParallel()  # evaluation totals (dev and test, not per step)

    def describe(self) -> str:
        kinds = []
        if self.data_ranks > 1:
            kinds.append(f"{self.data_ranks} data-parallel")
        if self.evaluation_ranks > 1:
            kinds.append(f"{self.evaluation_ranks} evaluation-parallel")
        return f"{self.world} ranks ({' × '.join(kinds)})"

    def batch_share(self, indices: list[int]) -> list[int]:
        """This rank's shard of the step's batch (the same for the E ranks of its data group)."""
        return shard(indices, self.data_rank, self.data_ranks)

    def anchor_share(self, indices: list[int]) -> list[int]:
        """This rank's part of MeZO-SVRG's anchor batch (any size: parts may differ by one)."""
        return even_share(indices, self.data_rank, self.data_ranks)

    def closure(self, parts: list[tuple[int, Callable[[], torch.Tensor]]], global_size: int):
        """The step's closure: the global batch's mean loss from this rank's micro-batches (the
        whole batch's when there is one data group: nothing to sum over ranks)."""
        if self.data_ranks == 1:
            return lambda: mean_of([(n, f()) for n, f in parts])
        return self.data.closure(parts, global_size)

    def stop_agreed(self, asked: bool) -> bool:
        """True on every rank when a signal reached any rank, so all stop after the same step."""
        return bool(self.control.all_reduce(torch.tensor(float(asked), dtype=torch.float64)) > 0)

    @property
    def step_bytes(self) -> int:
        """Bytes this rank sent for its steps: losses and stop flags (evaluations not counted)."""
        return self.data.bytes_sent + (self.split.bytes_sent if self.split else 0) + self.control.bytes_sent

    def evaluate(self, fn: Callable[[list], dict], examples: list) -> dict:
        """``fn(examples)`` (an evaluation returning ``n`` and per-example means) run on this rank's
        share of ``examples`` and combined over every rank: the same means as one process up to
        the summation order. With fewer examples than ranks every rank evaluates them all."""
        if len(examples) < self.world:
            return fn(examples)
        part = fn(even_share(examples, self.rank, self.world))
        keys = sorted(k for k, v in part.items() if isinstance(v, float) and k != "score")
        totals = torch.tensor([part["n"], *(part[k] * part["n"] for k in keys)], dtype=torch.float64)
        totals = self.sharing.all_reduce(totals)
        n = int(totals[0])
        means = {k: float(v) / n for k, v in zip(keys, totals[1:].tolist())}
        return {**part, **means, "n": n, "score": means[part["metric"]]}

    def from_rank0(self, flag: bool) -> bool:
        """Rank 0's ``flag``, on every rank (what rank 0 alone can know: its files)."""
        mine = float(flag) if self.rank == 0 else 0.0
        return bool(self.sharing.all_reduce(torch.tensor(mine, dtype=torch.float64)) > 0)


def join(evaluation_ranks: int = 1, timeout_s: float = 300.0) -> Layout | None:
    """The layout of a torchrun-launched run (joining its process group), or None in one process."""
    if not launched():
        return None
    init(timeout_s=timeout_s)
    return Layout(evaluation_ranks)
