"""One inference engine for every consumer (predict, sort, evaluate, embed, index, faces,
explain, the service, optimize's and the zoo's measurements).

The engine runs a *task* (:mod:`vitrina.engine.tasks`) over *items*
(:mod:`vitrina.engine.items`: files, images in memory, regions of photos): items are decoded
and prepared in worker processes, batched, run on a backend chosen by name
(:mod:`vitrina.engine.backends`), and the raw outputs become one result per item. A bad item
comes back as an error next to the results, never as an exception.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import queue
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vitrina.engine.backends import BACKENDS, resolve_backend
from vitrina.engine.items import Item, is_file_item, load_item
from vitrina.engine.tasks import Prepared, Task, rows_per_item
from vitrina.errors import ImageReadError, VitrinaError
from vitrina.lazy import gpu_possible, is_device, is_tensor, lazy_module, torch_loaded

if TYPE_CHECKING:
    import torch

    from vitrina.models import VitrinaModel
else:
    torch = lazy_module("torch")

__all__ = [
    "Engine",
    "EngineBatch",
    "PreparedBatch",
    "TaskBatch",
    "TaskResult",
    "available_cores",
    "batch_inputs",
    "default_workers",
    "resolve_device",
    "torch_threads",
]


class CpuDevice(str):
    """The CPU, named without importing torch: ``"cpu"`` with the ``type`` and ``index`` of a
    ``torch.device`` (torch takes it wherever it takes a device name)."""

    type = "cpu"
    index = None

    def __new__(cls) -> CpuDevice:
        return super().__new__(cls, "cpu")

    def __repr__(self) -> str:
        return "device(type='cpu')"


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """The device ``device`` names (``auto``: a CUDA GPU if torch sees one, else the CPU).

    Where torch is not imported yet and the CPU is meant (asked for, or ``auto`` on a
    machine without a GPU driver), the answer is a :class:`CpuDevice`, so that a run on
    a runtime of its own (OpenVINO, ONNX Runtime) never imports torch."""
    if isinstance(device, CpuDevice) or is_device(device):
        return device  # type: ignore[return-value]
    if not torch_loaded() and (device == "cpu" or (device == "auto" and not gpu_possible())):
        return CpuDevice()  # type: ignore[return-value]
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
    if not torch_loaded():  # nothing of torch runs in this process yet: nothing to limit
        yield n
        return
    old = torch.get_num_threads()
    if n < old:
        torch.set_num_threads(n)
    try:
        yield min(n, old)
    finally:
        if torch.get_num_threads() != old:
            torch.set_num_threads(old)


@dataclass
class TaskResult:
    """The engine's answer for one item: ``value`` (the task's result) or ``error``.

    ``error`` is one line naming the item and the problem; ``reason`` is the problem alone
    (``"truncated or corrupt image data"``), for reports that name the item themselves."""

    index: int
    item: Item
    value: Any = None
    error: str | None = None
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class TaskBatch:
    """One batch of results: ``values[j]`` belongs to item ``indices[j]`` (positions in the
    input list); ``errors`` are ``(index, message, reason)`` for items that could not be read
    or prepared."""

    indices: list[int]
    values: list[Any]
    errors: list[tuple[int, str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.indices) + len(self.errors)


@dataclass
class PreparedBatch:
    """A batch of prepared items (see :meth:`Engine.prepared_batches`): ``prepared[j]`` is item
    ``indices[j]``; ``errors`` as in :class:`TaskBatch`."""

    indices: list[int]
    prepared: list[Prepared]
    errors: list[tuple[int, str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.indices) + len(self.errors)


@dataclass
class EngineBatch:
    """Deprecated (``Engine.run(paths, output=...)``): ``outputs[i]`` belongs to
    ``indices[i]``; ``errors`` are ``(index, message)``."""

    indices: list[int]
    outputs: torch.Tensor
    errors: list[tuple[int, str]]


class _Preparation:
    """Decode an item and run the task's preparation on it (picklable: runs in workers)."""

    def __init__(self, task: Task, pre: Any) -> None:
        self.mode = task.image_mode(pre)
        self.side = task.decode_side(pre)
        self.prepare = task.preparer(pre)

    def __call__(self, item: Item) -> Prepared:
        return self.prepare(load_item(item, mode=self.mode, min_side=self.side), item)


def _describe_error(exc: VitrinaError, item: Item) -> tuple[str, str]:
    from vitrina.engine.items import item_name

    if isinstance(exc, ImageReadError):
        return str(exc), exc.reason
    reason = str(exc)
    return f"{item_name(item)}: {reason}", reason


class _Items:
    """Items -> ``(index, Prepared | None, (message, reason) | None)``; never raises for a bad
    item (a batch run records it and goes on)."""

    def __init__(self, items: Sequence[Item], preparation: _Preparation) -> None:
        self.items = items
        self.preparation = preparation

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[int, Prepared | None, tuple[str, str] | None]:
        try:
            return i, self.preparation(self.items[i]), None
        except VitrinaError as exc:
            return i, None, _describe_error(exc, self.items[i])


def _as_rows(rows: list[Any]) -> list[Any]:
    return rows


def batch_inputs(
    task: Task, pre: Any, items: Iterable[Item], *, limit: int | None = None
) -> tuple[torch.Tensor, list[int]]:
    """The prepared inputs of the readable items as one ``(N, C, H, W)`` batch, in this thread,
    for exports checked on real photos and int8 calibration; unreadable items are skipped.
    Returns ``(batch, indices of the items used)``; stops after ``limit`` items."""
    prep = _Preparation(task, pre)
    inputs, used = [], []
    for i, item in enumerate(items):
        try:
            p = prep(item)
        except VitrinaError:
            continue
        if len(p):
            inputs.append(p.inputs)
            used.append(i)
        if limit is not None and len(used) >= limit:
            break
    if not inputs:
        return torch.empty(0), []
    return torch.as_tensor(concat(inputs)), used


def concat(arrays: Sequence[Any]) -> Any:
    """Prepared inputs as one batch: a numpy array while every part is one, else a tensor."""
    if all(isinstance(a, np.ndarray) for a in arrays):
        return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
    return torch.cat([torch.as_tensor(a) for a in arrays])


class Engine:
    """Batched inference of a :class:`VitrinaModel`: tasks over items.

    Args:
        model: any vitrina model (its ``preprocess`` defines the input transform).
        backend: ``auto`` (measured: the fastest backend within tolerance), ``eager``,
            ``bf16``, ``onnx``, ``int8``, ``pruned`` (see ``BACKENDS``).
        device: ``auto``, ``cpu``, ``cuda``...
        batch_size: items per forward pass.
        num_workers: decode processes; ``None`` picks :func:`default_workers` (every core for
            tasks whose preparation is heavy), 0 decodes inline.
        calib: images for int8 calibration (a folder or a list of files), where the model
            is not a run folder with an int8 variant.
        threads: intra-op threads for runtimes with their own pool (ONNX Runtime); default
            every core this process may use.

    Example::

        >>> from vitrina.engine import Engine, Logits
        >>> engine = Engine(model, backend="auto")  # doctest: +SKIP
        >>> for r in engine.run(Logits(top_k=3), ["a.jpg", "b.png"]):  # doctest: +SKIP
        ...     print(r.item, r.value.top if r.ok else r.error)
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
        threads: int | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.device = resolve_device(device)
        if backend != "auto":
            backend = resolve_backend(backend, self.device)
        self.requested_backend = backend
        self.model = model
        self.batch_size = batch_size
        self.num_workers = num_workers
        # Runtimes with their own (non-spinning) pool get every core; torch backends get the
        # cores the decode workers leave free (see torch_threads).
        options = {"calib": calib} if calib is not None else {}
        n_threads = available_cores() if threads is None else threads
        self.backend = BACKENDS.get(backend)(model, self.device, n_threads, **options)
        self._preparations: dict[Task, _Preparation] = {}

    @property
    def backend_name(self) -> str:
        """The backend running: for ``auto``, the one it chose (``auto`` before the first batch)."""
        return getattr(self.backend, "resolved", self.backend.name)

    @property
    def transform(self) -> Callable[[Any], torch.Tensor]:
        """The model's eval transform (PIL image -> normalised tensor)."""
        from vitrina.data.transforms import eval_transform

        return eval_transform(self.model.preprocess)

    def describe(self) -> str:
        describe = getattr(self.backend, "describe", None)
        return describe() if describe else self.backend_name

    # ------------------------------------------------------------------ the task API
    def _preparation(self, task: Task) -> _Preparation:
        prep = self._preparations.get(task)
        if prep is None:
            prep = self._preparations[task] = _Preparation(task, self.model.preprocess)
        return prep

    def prepare(self, task: Task, item: Item) -> Prepared:
        """Decode and prepare one item in this thread (what a decode worker does).

        Raises:
            VitrinaError: the item cannot be read or prepared (one line naming it).
        """
        try:
            return self._preparation(task)(item)
        except ImageReadError:
            raise
        except VitrinaError as exc:
            message, _ = _describe_error(exc, item)
            raise type(exc)(message) from None

    def forward(self, task: Task, x: Any) -> Any:
        """The backend's raw outputs for a prepared ``(B, C, H, W)`` batch (for timing and
        measurements; results come from :meth:`run` or :meth:`run_prepared`).

        ``x`` is a numpy array or a tensor. Runtimes of their own (OpenVINO, ONNX Runtime)
        read an array as it is and answer in numpy, which a task that takes arrays
        (:attr:`Task.takes_arrays`) finishes in numpy; PyTorch backends get a tensor."""
        self.backend.check_output(task.output)
        if isinstance(x, np.ndarray) and not getattr(self.backend, "takes_arrays", False):
            x = torch.from_numpy(x)
        y = self.backend(x, output=task.output)
        if isinstance(y, np.ndarray) and not task.takes_arrays:
            y = torch.from_numpy(y)
        return y

    def run_prepared(self, task: Task, prepared: Sequence[Prepared]) -> list[Any]:
        """One forward pass over prepared items (e.g. requests batched by a service): one
        result per item, in order."""
        return self._run_prepared(task, prepared)[0]

    def _run_prepared(
        self, task: Task, prepared: Sequence[Prepared]
    ) -> tuple[list[Any], list[int]]:
        """Results of one forward pass, and the positions of items whose outputs are not
        finite (a model that cannot describe an input, e.g. SIFT finding no keypoint in a
        flat photo, answers NaN for it: the item is a bad item, not a result)."""
        if not prepared:
            return [], []
        counts = [len(p) for p in prepared]
        inputs = [p.inputs for p in prepared if len(p)]
        outputs = self.forward(task, concat(inputs)) if inputs else np.empty((0,), np.float32)
        values = task.finish(outputs, counts, [p.meta for p in prepared])
        return values, _nonfinite_items(outputs, counts)

    def decoding(self, task: Task, n_items: int, requested: int | None = None) -> tuple[str, int]:
        """How items of ``task`` are decoded: ``("inline", 0)``, ``("threads", n)`` or
        ``("processes", n)``.

        Light preparation (decode + resize + normalise: libjpeg, Pillow and numpy release the
        GIL) runs in decode *threads*, one per core, feeding a bounded queue two batches
        deep: they start in no time, pass tensors without pickling, and share the cores
        with the model by demand — while the queue is full they sleep and the model's
        own threads (ONNX Runtime, OpenVINO: every core, not spinning) get the CPU; while
        the model waits for input they have it. Heavy preparation (face detection and
        alignment in Python-held dlib code) runs in worker *processes*, every core."""
        if n_items <= self.batch_size:
            return "inline", 0  # start-up would cost more than it saves
        n = requested if requested is not None else self.num_workers
        if task.heavy_preparation:
            return ("processes", available_cores() if n is None else n) if n != 0 else ("inline", 0)
        if n == 0:
            return "inline", 0
        return "threads", available_cores() if n is None else n

    def _workers(self, task: Task, items: Sequence[Item], requested: int | None) -> int:
        # Items in memory would be pickled to worker processes and back.
        mode, n = self.decoding(task, len(items), requested)
        if mode != "processes" or not all(is_file_item(i) for i in items):
            return 0
        return n

    def prepared_batches(
        self,
        task: Task,
        items: Iterable[Item],
        *,
        on_progress: Callable[[int], None] | None = None,
        num_workers: int | None = None,
    ) -> Iterator[PreparedBatch]:
        """Items decoded and prepared by the decode workers, batch by batch, not yet run: for
        running one decoded batch through several engines (e.g. comparing backends).
        ``num_workers`` overrides the engine's setting for this call."""
        items = list(items)
        if not items:
            return
        mode, n = self.decoding(task, len(items), num_workers)
        if mode == "threads":
            yield from self._threaded_batches(task, items, n, on_progress)
            return
        workers = self._workers(task, items, num_workers)
        dataset = _Items(items, self._preparation(task))
        if workers:  # worker processes: torch's DataLoader runs and feeds them
            from torch.utils.data import DataLoader

            batches: Iterable[list[Any]] = DataLoader(
                dataset,
                batch_size=self.batch_size,
                shuffle=False,
                num_workers=workers,
                collate_fn=_as_rows,
                prefetch_factor=4,
                persistent_workers=False,
            )
        else:  # inline, in this thread
            batches = (
                [dataset[i] for i in range(start, min(start + self.batch_size, len(items)))]
                for start in range(0, len(items), self.batch_size)
            )
        for rows in batches:
            yield PreparedBatch(
                [i for i, p, _ in rows if p is not None],
                [p for _, p, _ in rows if p is not None],
                [(i, e[0], e[1]) for i, p, e in rows if p is None and e is not None],
            )
            if on_progress:
                on_progress(len(rows))

    def run_batches(
        self,
        task: Task,
        items: Iterable[Item],
        *,
        on_progress: Callable[[int], None] | None = None,
        num_workers: int | None = None,
    ) -> Iterator[TaskBatch]:
        """Results batch by batch, in input order. ``on_progress(n)`` is called with the number
        of items consumed (done or failed) after each batch; ``num_workers`` overrides the
        engine's setting for this call.

        While decode worker *processes* run (heavy preparation), torch gets the cores they
        leave free (:func:`torch_threads`): OpenMP threads that spin-wait beside busy workers
        cost more than they compute. Decode *threads* share the cores by demand instead
        (see :meth:`decoding`). An item whose outputs are not finite is a bad item (see
        :data:`NONFINITE_REASON`)."""
        items = list(items)
        with torch_threads(self._workers(task, items, num_workers)):
            batches = self.prepared_batches(task, items, num_workers=num_workers)
            mode, workers = self.decoding(task, len(items), num_workers)
            if mode == "inline":
                for b in batches:
                    values, failed = self._run_prepared(task, b.prepared)
                    yield self._finite_batch(b, values, failed, items)
                    if on_progress:
                        on_progress(len(b))
                return
            conditions = {"decode": mode, "workers": workers, "cores": available_cores()}
            for b, values, failed in self._overlapped(task, batches, conditions):
                yield self._finite_batch(b, values, failed, items)
                if on_progress:
                    on_progress(len(b))

    def _finite_batch(
        self, b: PreparedBatch, values: list[Any], failed: list[int], items: Sequence[Item]
    ) -> TaskBatch:
        """``b``'s results with the items whose outputs are not finite moved to its errors."""
        if not failed:
            return TaskBatch(b.indices, values, b.errors)
        from vitrina.engine.items import item_name

        reason = getattr(self.model, "nonfinite_reason", None) or NONFINITE_REASON
        errors = list(b.errors)
        for j in failed:
            i = b.indices[j]
            errors.append((i, f"{item_name(items[i])}: {reason}", reason))
        dropped = set(failed)
        keep = [j for j in range(len(values)) if j not in dropped]
        return TaskBatch([b.indices[j] for j in keep], [values[j] for j in keep], errors)

    def _threaded_batches(
        self,
        task: Task,
        items: list[Item],
        workers: int,
        on_progress: Callable[[int], None] | None,
    ) -> Iterator[PreparedBatch]:
        """Prepared batches from ``workers`` decode threads, two batches ahead, in order."""
        dataset = _Items(items, self._preparation(task))
        starts = iter(range(0, len(items), self.batch_size))
        ahead: deque[list[Future]] = deque()
        pool = ThreadPoolExecutor(workers, thread_name_prefix="vitrina-decode")

        def submit() -> None:
            start = next(starts, None)
            if start is not None:
                stop = min(start + self.batch_size, len(items))
                ahead.append([pool.submit(dataset.__getitem__, i) for i in range(start, stop)])

        try:
            for _ in range(_DECODE_AHEAD + 1):
                submit()
            while ahead:
                rows = [f.result() for f in ahead.popleft()]
                submit()
                yield PreparedBatch(
                    [i for i, p, _ in rows if p is not None],
                    [p for _, p, _ in rows if p is not None],
                    [(i, e[0], e[1]) for i, p, e in rows if p is None and e is not None],
                )
                if on_progress:
                    on_progress(len(rows))
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _overlapped(
        self, task: Task, batches: Iterator[PreparedBatch], conditions: dict[str, Any]
    ) -> Iterator[tuple[PreparedBatch, list[Any], list[int]]]:
        """Run the model in a thread of its own, one batch ahead of the consumer: while the
        caller handles batch k (copies files, writes vectors), the model computes batch
        k+1 and the decoders prepare the ones after it.

        The backend is told it runs in a pipeline (``auto`` then times its candidates on
        the running pipeline, see :meth:`vitrina.engine.auto.AutoBackend.observe`): each
        batch's cost is the model stage's cycle, waiting for decoded input included."""
        results: queue.Queue = queue.Queue(maxsize=1)
        stop = threading.Event()
        observe = getattr(self.backend, "observe", None)
        start_pipeline = getattr(self.backend, "start_pipeline", None)
        if start_pipeline is not None:
            start_pipeline(task.output, {**conditions, "task": task.name})

        def put(item: Any) -> bool:
            while not stop.is_set():
                try:
                    results.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def model_stage() -> None:
            try:
                t0 = time.perf_counter()
                for b in batches:
                    values, failed = self._run_prepared(task, b.prepared)
                    if observe is not None and b.prepared:
                        n = sum(len(p) for p in b.prepared)
                        observe(task.output, n, time.perf_counter() - t0)
                    if not put((b, values, failed)):
                        return
                    t0 = time.perf_counter()
                put(_DONE)
            except BaseException as exc:  # handed to the consumer, raised there
                put(_Failure(exc))
            finally:
                batches.close()  # stops the decoders (a no-op once they are done)

        runner = threading.Thread(target=model_stage, name="vitrina-model", daemon=True)

        def at_exit() -> None:
            # The interpreter exits with this run unfinished (its results left unconsumed,
            # e.g. ``next(engine.run(...))`` in a notebook): stop the model stage before
            # finalisation, or the thread is torn down inside a torch call and the process
            # aborts ("terminate called without an active exception").
            stop.set()
            runner.join(timeout=60)

        atexit.register(at_exit)
        runner.start()
        try:
            while True:
                item = results.get()
                if item is _DONE:
                    return
                if isinstance(item, _Failure):
                    raise item.exc
                yield item
        finally:
            stop.set()
            runner.join()
            atexit.unregister(at_exit)

    def run(
        self,
        task: Task | Sequence[str | Path],
        items: Iterable[Item] | None = None,
        *,
        on_progress: Callable[[int], None] | None = None,
        num_workers: int | None = None,
        output: str | None = None,
        on_batch: Callable[[int], None] | None = None,
    ) -> Iterator[Any]:
        """One :class:`TaskResult` per item, in input order, streamed batch by batch.

        ``run(paths, output="logits"|"embed")`` (the engine before tasks) still works and
        yields :class:`EngineBatch`; it is deprecated: use ``run(Logits(), paths)`` or
        ``run(Embedding(normalize=False), paths)``.
        """
        if not isinstance(task, Task):
            warnings.warn(
                "Engine.run(paths, output=...) is deprecated: run a task, e.g. "
                "engine.run(Logits(), paths) or engine.run(Embedding(normalize=False), paths)",
                DeprecationWarning,
                stacklevel=2,
            )
            return self._run_outputs(task, output or "logits", on_batch)
        if items is None:
            raise TypeError("Engine.run(task, items): items missing")
        return self._run_results(task, items, on_progress, num_workers)

    def _run_results(
        self,
        task: Task,
        items: Iterable[Item],
        on_progress: Callable[[int], None] | None,
        num_workers: int | None,
    ) -> Iterator[TaskResult]:
        items = list(items)
        batches = self.run_batches(task, items, on_progress=on_progress, num_workers=num_workers)
        for b in batches:
            results = {
                i: TaskResult(i, items[i], v) for i, v in zip(b.indices, b.values, strict=True)
            }
            for i, message, reason in b.errors:
                results[i] = TaskResult(i, items[i], None, message, reason)
            for i in sorted(results):
                yield results[i]

    def _run_outputs(
        self, paths: Sequence[str | Path], output: str, on_batch: Callable[[int], None] | None
    ) -> Iterator[EngineBatch]:
        from vitrina.engine.tasks import Embedding

        task: Task = _RawOutputs() if output == "logits" else Embedding(normalize=False)
        for b in self.run_batches(task, [Path(p) for p in paths], on_progress=on_batch):
            outputs = (
                torch.stack([torch.as_tensor(v) for v in b.values]) if b.values else torch.empty(0)
            )
            yield EngineBatch(b.indices, outputs, [(i, m) for i, m, _ in b.errors])

    def run_tensor(self, x: torch.Tensor, *, output: str = "logits") -> torch.Tensor:
        """Deprecated: run an already-normalized (B, C, H, W) tensor. Use :meth:`forward`
        (raw outputs) or :meth:`run_prepared` (results)."""
        warnings.warn(
            "Engine.run_tensor is deprecated: use engine.run_prepared(task, prepared) for "
            "results or engine.forward(task, x) for raw outputs",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.backend(x, output=output)


#: Why an item whose outputs are NaN or infinite is a bad item (a model may say more in its
#: ``nonfinite_reason`` attribute, e.g. "no SIFT keypoints").
NONFINITE_REASON = "the model's output is not finite (NaN or inf) for this image"


def _nonfinite_items(outputs: Any, counts: Sequence[int]) -> list[int]:
    """Positions of the items with a non-finite output row (array outputs only)."""
    if is_tensor(outputs):
        if not outputs.is_floating_point():
            return []
        finite = torch.isfinite(outputs.reshape(len(outputs), -1)).all(1) if len(outputs) else None
        rows = finite.cpu().numpy() if finite is not None else None
    elif isinstance(outputs, np.ndarray) and np.issubdtype(outputs.dtype, np.floating):
        rows = np.isfinite(outputs.reshape(len(outputs), -1)).all(1) if len(outputs) else None
    else:
        return []
    if rows is None or bool(rows.all()):
        return []
    bad, start = [], 0
    for j, n in enumerate(counts):
        if n and not bool(rows[start : start + n].all()):
            bad.append(j)
        start += n
    return bad


_DECODE_AHEAD = 2  # batches decoded ahead of the model (bounds memory and idle decoding)
_DONE = object()


@dataclass
class _Failure:
    exc: BaseException


class _RawOutputs(Task):
    """Logits rows as they come (for the deprecated ``run(paths, output="logits")``)."""

    name = "raw-logits"
    output = "logits"

    def finish(self, outputs: Any, counts: Sequence[int], metas: Sequence[Any]) -> list[Any]:
        return [chunk[0] for chunk in rows_per_item(outputs.float(), counts)]
