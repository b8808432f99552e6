"""Where a training run decodes its photos: in its own process or in worker processes,
chosen by measuring the run itself.

On a CPU, a decoding process takes a core from PyTorch's threads
(:func:`vitrina.engine.torch_threads`). Whether that pays depends on the run: a LeNet on
32x32 photos waits on decoding, an EfficientNet fine-tune at 224 spends ~95% of each batch in
its step. A fixed rule is wrong for one of them (on 2 cores, one decoding process made a
Lite0 fine-tune 1.77x slower, and a detector's 1.65x). :class:`MeasuredLoader` decodes its
first epoch in this process, timing each batch's decoding (``d``) and the step the loop
spends on it (``s``), then keeps the number of decoding processes ``W`` that the cost model
says is fastest for the epochs after:

- in this process: ``d + s`` a batch;
- ``W`` processes: ``max(d / W, s * t / min(t, C - W))`` — decoding spread over ``W`` cores,
  the step on the ``C - W`` cores left (``t``: the threads it was measured with, so a net
  too small to use threads is not charged for losing them).

Processes are kept only when they win by :data:`MARGIN` (starting them costs time every
epoch). On a GPU the step does not need the CPU's cores, so the loaders there keep
:func:`vitrina.engine.default_workers`; ``--workers N`` always wins over either.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from vitrina.engine import available_cores, default_workers

__all__ = [
    "MARGIN",
    "MAX_WORKERS",
    "MeasuredLoader",
    "best_workers",
    "decoding_metrics",
    "training_loader",
]

#: Decoding processes must make an epoch at least this much faster than decoding in-process.
MARGIN = 0.9
MAX_WORKERS = 4


def best_workers(
    decode_s: float, step_s: float, cores: int, threads: int, max_workers: int = MAX_WORKERS
) -> int:
    """The number of decoding processes (0: this process) for a batch that takes
    ``decode_s`` to decode and ``step_s`` to train on with ``threads`` threads, on ``cores``
    cores (the cost model of this module)."""
    inline = decode_s + step_s
    best, best_cost = 0, inline * MARGIN
    for w in range(1, min(max_workers, cores - 1) + 1):
        left = max(1, min(threads, cores - w))
        cost = max(decode_s / w, step_s * threads / left)
        if cost < best_cost:
            best, best_cost = w, cost
    return best


class MeasuredLoader(DataLoader):
    """A :class:`~torch.utils.data.DataLoader` that measures its first epoch in this process
    and then decodes with the number of processes :func:`best_workers` chooses (see the
    module). ``num_workers`` reads the current choice; ``plan`` says what was measured."""

    #: Batches measured (after the first, which pays for warm-up) before a choice is made.
    probe_batches = 8

    def __init__(self, dataset: Dataset, **kwargs: Any) -> None:
        kwargs["num_workers"] = 0
        kwargs.pop("persistent_workers", None)
        super().__init__(dataset, **kwargs)
        self.decided = False
        self.plan = "decoding: in this process while the first epoch measures it"

    def __iter__(self) -> Iterator[Any]:
        if not self.decided:
            return self._measuring()
        if self.num_workers == 0:
            return super().__iter__()
        return self._with_workers()

    def _measuring(self) -> Iterator[Any]:
        decode, step = [], []
        it = super().__iter__()
        try:
            while True:
                t = time.perf_counter()
                try:
                    batch = next(it)
                except StopIteration:
                    return
                handed = time.perf_counter()
                yield batch
                back = time.perf_counter()
                decode.append(handed - t)
                step.append(back - handed)
        finally:
            self._decide(decode[1:], step[1:])

    def _decide(self, decode: list[float], step: list[float]) -> None:
        if len(decode) < 2:
            return  # too little seen (a run stopped at once): measure again next epoch
        d, s = statistics.median(decode), statistics.median(step)
        cores, threads = available_cores(), torch.get_num_threads()
        w = best_workers(d, s, cores, threads)
        self.decided, self.num_workers = True, w
        if w and self.prefetch_factor is None:
            self.prefetch_factor = 2  # DataLoader's default with processes
        where = "in this process" if w == 0 else f"in {w} process{'es' if w > 1 else ''}"
        self.plan = (
            f"decoding: {where} (measured {d * 1000:.0f} ms decoding and {s * 1000:.0f} ms "
            f"training a batch with {threads} thread{'s' if threads > 1 else ''} on {cores} cores)"
        )

    def _with_workers(self) -> Iterator[Any]:
        old = torch.get_num_threads()
        n = max(1, available_cores() - self.num_workers)
        if n < old:
            torch.set_num_threads(n)
        try:
            yield from super().__iter__()
        finally:
            if torch.get_num_threads() != old:
                torch.set_num_threads(old)


def training_loader(
    dataset: Dataset, *, num_workers: int | None, device: torch.device, **kwargs: Any
) -> DataLoader:
    """The loader of a training run: ``num_workers`` processes when the user gave a number,
    :func:`vitrina.engine.default_workers` on a GPU, a :class:`MeasuredLoader` on a CPU. A
    dataset of one batch or less decodes in this process."""
    batch = kwargs.get("batch_size") or 1
    small = len(dataset) <= batch  # type: ignore[arg-type]
    if num_workers is not None or device.type != "cpu" or small:
        workers = default_workers() if num_workers is None else num_workers
        kwargs.setdefault("persistent_workers", False)
        return DataLoader(dataset, num_workers=0 if small else workers, **kwargs)
    return MeasuredLoader(dataset, **kwargs)


def decoding_metrics(loader: Any) -> dict[str, str]:
    """What a run records of where its training photos were decoded: ``{"decoding": plan}``
    for a :class:`MeasuredLoader`, nothing for a plain loader."""
    plan = getattr(loader, "plan", None)
    return {"decoding": plan} if plan else {}
