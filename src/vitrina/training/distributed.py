"""Training on several processes: ``torchrun`` (or ``--nproc N``) with DistributedDataParallel.

``vitrina train`` and ``vitrina train-embedding`` read torchrun's environment (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``); with a world of one process nothing here runs and the
single-process path is untouched. With more:

- the process group is gloo on a CPU, nccl on GPUs (one GPU per process: ``cuda:LOCAL_RANK``);
- the classifier's ``--batch-size`` stays the *global* batch: every epoch draws the very
  permutation the single-process run draws (same generator, same seed) and deals it to the
  ranks (:class:`RankSampler`), each taking ``batch_size / N`` images a step. The
  cross-entropy is a mean over images and DDP averages the ranks' gradients, so a step's
  gradient is the single-process gradient of the same global batch (up to float summation
  order): the same weights, where the model has no batch statistics (see below);
- an embedding run's P×K batch stays *per rank*: the single-process epoch's batches are dealt
  round-robin (:class:`RankBatches`), each rank a whole P×K batch a step. A metric loss is
  over the pairs and triplets *inside* a batch, so splitting one P×K batch across ranks would
  drop every cross-rank pair; whole batches per rank keep each loss what it is on one process
  and make the global batch N×P×K (a run on N processes is not the single-process run);
- gradients are averaged by :class:`torch.nn.parallel.DistributedDataParallel` around the
  task's whole step (model, loss weights such as ArcFace's, the mutual-learning peer), with
  ``static_graph=True`` since an embedding model carries an identity classifier that a pure
  metric loss never uses;
- rank 0 alone writes the run folder, checkpoints, metrics and progress; every rank
  evaluates the full validation set (the same weights give the same figures, so early
  stopping and the best epoch agree without messages); resume loads the same resume point
  on every rank.

BatchNorm: per-rank statistics, no :class:`torch.nn.SyncBatchNorm`. gloo has no SyncBatchNorm
on a CPU (it needs CUDA), and per-rank BN with per-rank batches of 16 or more is what
torchvision's reference training does by default; a model with BN trained on N processes
therefore differs slightly from the single-process run (a model without BN, or with a frozen
backbone whose BN is in eval mode, does not).
"""

from __future__ import annotations

import math
import os
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, Sampler

from vitrina.errors import VitrinaError
from vitrina.training.loop import Callback, LoopState, StepOutput, Task

__all__ = [
    "Dist",
    "DistributedTask",
    "GlobalFigures",
    "RankBatches",
    "RankSampler",
    "current",
    "launch",
    "session",
    "shard_loader",
    "single_process",
    "strip_nproc",
]


@dataclass(frozen=True)
class Dist:
    """Where this process stands: ``rank`` of ``world_size`` (``local_rank`` on its machine)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def main_only(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn`` on rank 0, a no-op elsewhere (writes to the run folder)."""
        if self.is_main:
            return fn
        return lambda *a, **k: None

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as tdist

            tdist.barrier()

    def agree(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (a choice made by measuring, e.g. ``precision
        auto``, must be one choice)."""
        if not self.enabled:
            return value
        import torch.distributed as tdist

        box = [value]
        tdist.broadcast_object_list(box, src=0)
        return box[0]


def current() -> Dist:
    """This process's place, from torchrun's environment (one process when there is none)."""
    try:
        return Dist(
            int(os.environ.get("RANK", "0")),
            int(os.environ.get("WORLD_SIZE", "1")),
            int(os.environ.get("LOCAL_RANK", "0")),
        )
    except ValueError as e:
        raise VitrinaError(f"torchrun environment: {e}") from None


def single_process(command: str) -> None:
    """Refuse to run ``command`` (one that trains on one process only) under torchrun: with
    ``WORLD_SIZE`` > 1 every process would train the same model and write the same run
    folder. Called before any work, on every rank (each exits with the same line)."""
    dist = current()
    if dist.enabled:
        raise VitrinaError(
            f"{command} trains on one process, but torchrun started {dist.world_size} "
            "(WORLD_SIZE): each would train and write the same run folder; run it as one "
            "process (without torchrun), or use vitrina train / train-embedding, which train "
            "on several processes (--nproc N or torchrun)"
        )


@contextmanager
def session(device: torch.device) -> Iterator[tuple[Dist, torch.device]]:
    """Join torchrun's process group for the length of a training run: ``(dist, device)``,
    the device being ``cuda:LOCAL_RANK`` on GPUs. Without torchrun: ``(Dist(), device)``."""
    dist = current()
    if not dist.enabled:
        yield dist, device
        return
    import torch.distributed as tdist

    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    started = not tdist.is_initialized()
    if started:
        tdist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield dist, device
    finally:
        if started and tdist.is_initialized():
            tdist.destroy_process_group()


class RankSampler(Sampler[int]):
    """The single-process order, dealt to the ranks.

    Each epoch draws ``torch.randperm(n, generator=generator)`` exactly as
    ``DataLoader(shuffle=True, generator=generator)``'s ``RandomSampler`` does (the identity
    order without ``shuffle``), pads it to a multiple of ``world_size`` with its first indices
    (every rank takes the same number of steps, as DDP requires), and yields positions
    ``rank, rank + world_size, ...``. With per-rank batches of ``B / world_size`` the ranks'
    k-th batches together are the single-process k-th batch of ``B``."""

    def __init__(
        self,
        n: int,
        rank: int,
        world_size: int,
        *,
        shuffle: bool = True,
        generator: torch.Generator | None = None,
    ) -> None:
        self.n, self.rank, self.world_size = n, rank, world_size
        self.shuffle, self.generator = shuffle, generator

    def __len__(self) -> int:
        return math.ceil(self.n / self.world_size)

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            order = torch.randperm(self.n, generator=self.generator).tolist()
        else:
            order = list(range(self.n))
        order += order[: len(self) * self.world_size - self.n]
        return iter(order[self.rank :: self.world_size])


class RankBatches(Sampler[list[int]]):
    """Whole batches of another batch sampler (P×K, Siamese pairs), dealt round-robin: rank
    ``r`` gets batches ``r, r + N, ...`` of the epoch; every rank the same number
    (``len(batches) // N``, at least one: a short epoch repeats its first batches)."""

    def __init__(self, batches: Sampler[list[int]], rank: int, world_size: int) -> None:
        self.batches, self.rank, self.world_size = batches, rank, world_size

    def __len__(self) -> int:
        return max(1, len(self.batches) // self.world_size)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[list[int]]:
        epoch = list(self.batches)
        need = len(self) * self.world_size
        while len(epoch) < need:
            epoch += epoch[: need - len(epoch)]
        return iter(epoch[self.rank : need : self.world_size])


def shard_loader(loader: DataLoader, dist: Dist) -> DataLoader:
    """``loader`` for this rank: a batch sampler of its own (P×K) dealt whole
    (:class:`RankBatches`); otherwise the global batch split (:class:`RankSampler`), which
    must divide by the number of processes."""
    if not dist.enabled:
        return loader
    common: dict[str, Any] = dict(
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        generator=loader.generator,
        pin_memory=loader.pin_memory,
        worker_init_fn=loader.worker_init_fn,
    )
    if loader.batch_sampler is not None and not isinstance(loader.batch_sampler, BatchSampler):
        batches = RankBatches(loader.batch_sampler, dist.rank, dist.world_size)
        return DataLoader(loader.dataset, batch_sampler=batches, **common)
    batch = int(loader.batch_size or 1)
    if batch % dist.world_size:
        raise VitrinaError(
            f"--batch-size {batch} is the global batch and must divide by the "
            f"{dist.world_size} processes (each takes an equal share a step)"
        )
    sampler = RankSampler(
        len(loader.dataset),  # type: ignore[arg-type]
        dist.rank,
        dist.world_size,
        shuffle=isinstance(loader.sampler, RandomSampler),
        generator=loader.generator,
    )
    return DataLoader(
        loader.dataset, batch_size=batch // dist.world_size, sampler=sampler, **common
    )


class _Step(nn.Module):
    """A task's training step as a module's ``forward``, over every module with trained
    weights (``parts``), so that DDP sees the whole step and all its parameters."""

    def __init__(self, task: Task, model: nn.Module, parts: nn.Module) -> None:
        super().__init__()
        self.parts = parts
        self._run = (task, model)  # a tuple: not registered twice as submodules

    def forward(self, batch: Any) -> tuple[torch.Tensor, int, int | None]:
        task, model = self._run
        out = task.step(model, batch)
        return out.loss, out.n, out.correct


class DistributedTask:
    """A :class:`~vitrina.training.loop.Task` whose steps average their gradients over the
    ranks (DDP around the step); train mode and evaluation are the wrapped task's."""

    def __init__(self, task: Task, model: nn.Module, parts: nn.Module, device: torch.device):
        from torch.nn.parallel import DistributedDataParallel

        self.task = task
        ids = [device.index] if device.type == "cuda" else None
        self.ddp = DistributedDataParallel(
            _Step(task, model, parts), device_ids=ids, static_graph=True
        )

    def set_train_mode(self, model: nn.Module) -> None:
        self.task.set_train_mode(model)

    def step(self, model: nn.Module, batch: Any) -> StepOutput:
        loss, n, correct = self.ddp(batch)
        return StepOutput(loss, n, correct)

    def evaluate(self, model: nn.Module, loader: Any) -> dict[str, float]:
        return self.task.evaluate(model, loader)

    def __getattr__(self, name: str) -> Any:  # the task's own figures (last_eval, ...)
        return getattr(self.task, name)


def check_optimizer(optimizer: torch.optim.Optimizer, dist: Dist) -> None:
    """L-BFGS's line search compares loss values; each rank sees only its share of the
    batch, so the ranks would search apart."""
    if dist.enabled and isinstance(optimizer, torch.optim.LBFGS):
        raise VitrinaError(
            "--optimizer lbfgs is full-batch (the probe's default with --augment none) and "
            "does not run on several processes: pass --optimizer adamw or sgd"
        )


def strip_nproc(argv: Sequence[str]) -> list[str]:
    """``argv`` without ``--nproc N`` / ``--nproc=N`` (what each launched process runs)."""
    out: list[str] = []
    skip = False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            out.append(a)
    return out


def launch(argv: Sequence[str], nproc: int) -> None:
    """Run ``vitrina ARGV`` on ``nproc`` processes of this machine, as
    ``torchrun --standalone --nproc-per-node NPROC -m vitrina ARGV`` does (torch's elastic
    launcher, a free local port); returns when all finished, raises :class:`VitrinaError`
    naming the process that failed."""
    if nproc < 1:
        raise VitrinaError(f"--nproc {nproc}: need 1 or more processes")
    if current().enabled:
        raise VitrinaError("--nproc inside torchrun: torchrun already started the processes")
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if "OMP_NUM_THREADS" not in os.environ:  # torchrun's rule: no oversubscribed cores
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc))
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=str(uuid.uuid4()),
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        max_restarts=0,
        monitor_interval=0.2,
    )
    try:
        elastic_launch(config, sys.executable)("-m", "vitrina", *argv)
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        raise VitrinaError(
            f"process {rank} of {nproc} stopped (exit code {failure.exitcode}); the run folder "
            "keeps its last finished epoch: run the same command with --resume to go on"
        ) from None


class GlobalFigures(Callback):
    """The epoch's training figures over every rank (loss, accuracy, images/s of the whole
    world), not rank 0's share: must come first among the callbacks, on every rank."""

    def __init__(self, device: torch.device) -> None:
        self.device = device  # nccl reduces GPU tensors only

    def on_epoch_end(self, state: LoopState, record: dict[str, Any]) -> None:
        import time

        import torch.distributed as tdist

        elapsed = max(time.perf_counter() - state.epoch_start, 1e-9)
        figures = [state.loss_sum, float(state.seen), float(state.correct)]
        sums = torch.tensor(figures, dtype=torch.float64, device=self.device)
        tdist.all_reduce(sums)
        loss_sum, seen, correct = sums.tolist()
        record["train_loss"] = loss_sum / max(seen, 1)
        record["images_per_s"] = seen / elapsed
        if "train_accuracy" in record:
            record["train_accuracy"] = correct / max(seen, 1)
