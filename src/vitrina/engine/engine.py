"""One inference engine for every consumer (predict, sort, evaluate, index, faces).

Files are decoded and transformed in worker processes, batched, and run on a backend;
unreadable files come back as errors next to the results, never as exceptions.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from vitrina.data.dataset import ImageFiles, collate_skip_bad
from vitrina.data.transforms import eval_transform
from vitrina.engine.backends import BACKENDS, resolve_backend
from vitrina.models import VitrinaModel

__all__ = [
    "Engine",
    "EngineBatch",
    "available_cores",
    "default_workers",
    "resolve_device",
    "torch_threads",
]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        from vitrina.errors import VitrinaError

        raise VitrinaError(f"device {device!r} requested but no CUDA GPU is available")
    return dev


def available_cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def default_workers() -> int:
    """Decode workers: one per spare core, at least one, at most four."""
    return max(1, min(4, available_cores() // 2))


@contextlib.contextmanager
def torch_threads(decode_workers: int, max_threads: int | None = None) -> Iterator[int]:
    """Give torch the cores the decode workers leave free, for the duration of a run.

    Oversubscribed OpenMP threads spin against the workers (and against anything else on a
    shared machine): on 2 cores, LeNet trains ~30x slower with 2 threads beside a decoder
    than with 1. ``max_threads`` caps it further (tiny models gain nothing from threads).
    """
    n = max(1, available_cores() - decode_workers)
    if max_threads is not None:
        n = max(1, min(n, max_threads))
    old = torch.get_num_threads()
    if n < old:
        torch.set_num_threads(n)
    try:
        yield min(n, old)
    finally:
        if torch.get_num_threads() != old:
            torch.set_num_threads(old)


@dataclass
class EngineBatch:
    """``outputs[i]`` belongs to ``indices[i]`` (positions in the input list); ``errors`` are
    ``(index, message)`` for inputs that could not be read."""

    indices: list[int]
    outputs: torch.Tensor
    errors: list[tuple[int, str]]


class Engine:
    """Batched inference of a :class:`VitrinaModel` over image files.

    Args:
        model: any vitrina model (its ``preprocess`` defines the transform).
        backend: ``auto`` (measured: the fastest backend within tolerance), ``eager``,
            ``bf16``, ``onnx``, ``int8`` (see ``BACKENDS``).
        device: ``auto``, ``cpu``, ``cuda``...
        batch_size: images per forward pass.
        num_workers: decode processes; ``None`` picks :func:`default_workers`, 0 decodes inline.
        calib: images for int8 calibration (a folder or a list of files), where the model
            is not a run folder with an int8 variant.
    """

    def __init__(
        self,
        model: VitrinaModel,
        *,
        backend: str = "auto",
        device: str | torch.device = "auto",
        batch_size: int = 16,
        num_workers: int | None = None,
        calib: str | Path | Sequence[str | Path] | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.device = resolve_device(device)
        if backend != "auto":
            backend = resolve_backend(backend, self.device)
        self.requested_backend = backend
        self.model = model
        self.batch_size = batch_size
        self.num_workers = default_workers() if num_workers is None else num_workers
        # Runtimes with their own (non-spinning) pool get every core; torch backends get the
        # cores the decode workers leave free (see torch_threads).
        options = {"calib": calib} if calib is not None else {}
        self.backend = BACKENDS.get(backend)(model, self.device, available_cores(), **options)
        self.transform = eval_transform(model.preprocess)

    @property
    def backend_name(self) -> str:
        """The backend running: for ``auto``, the one it chose (``auto`` before the first batch)."""
        return getattr(self.backend, "resolved", self.backend.name)

    def describe(self) -> str:
        describe = getattr(self.backend, "describe", None)
        return describe() if describe else self.backend_name

    def run(
        self,
        paths: Sequence[str | Path],
        *,
        output: str = "logits",
        on_batch: Callable[[int], None] | None = None,
    ) -> Iterator[EngineBatch]:
        """Yield results batch by batch, in input order. ``on_batch(n)`` is called with the
        number of inputs consumed (read or failed) after each batch."""
        h, w = self.model.preprocess.input_size
        short = math.floor(min(h, w) / self.model.preprocess.crop_pct)
        ds = ImageFiles(paths, transform=self.transform, min_side=short)
        # Worker start-up costs more than it saves on a handful of files.
        workers = self.num_workers if len(ds) > self.batch_size else 0
        loader = DataLoader(
            ds,
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=workers,
            collate_fn=collate_skip_bad,
            pin_memory=self.device.type == "cuda",
            prefetch_factor=4 if workers else None,
            persistent_workers=False,
        )
        for batch in loader:
            out = self.backend(batch.images, output=output) if len(batch.index) else torch.empty(0)
            yield EngineBatch(batch.index.tolist(), out, batch.errors)
            if on_batch:
                on_batch(len(batch.index) + len(batch.errors))

    def run_tensor(self, x: torch.Tensor, *, output: str = "logits") -> torch.Tensor:
        """Run an already-normalized (B, C, H, W) tensor."""
        return self.backend(x, output=output)
