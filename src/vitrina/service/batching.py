"""Dynamic batching: requests that arrive together run as one batch on the inference engine.

Each request prepares its item (decode, transform) in a thread of its own, then queues it;
one worker thread per :class:`DynamicBatcher` takes up to ``max_batch`` queued items and runs
them with one call. It waits at most ``window_ms`` after the first item for more to join, and
does not wait at all when no other request is on its way (a lone client pays no window), so
throughput grows with concurrency while a single request's latency stays that of one forward
pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import anyio.to_thread

__all__ = ["BatcherClosedError", "DynamicBatcher"]

T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger("vitrina.service")


class BatcherClosedError(RuntimeError):
    """The batcher was closed (the service is shutting down)."""


@dataclass
class _Job:
    item: Any
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop


class DynamicBatcher(Generic[T, R]):
    """Run ``run(items) -> results`` (one result per item, same order) on batches of items
    submitted from asyncio code.

    Args:
        run: called in the batcher's worker thread with 1..``max_batch`` items.
        max_batch: most items per call.
        window_ms: longest wait after the first item of a batch for more to arrive.
        on_batch: called after each batch with (items, seconds the call took).
        name: names the worker thread.
    """

    def __init__(
        self,
        run: Callable[[list[T]], Sequence[R]],
        *,
        max_batch: int = 32,
        window_ms: float = 5.0,
        on_batch: Callable[[int, float], None] | None = None,
        name: str = "batch",
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if window_ms < 0:
            raise ValueError(f"window_ms must be >= 0, got {window_ms}")
        self._run = run
        self.max_batch = int(max_batch)
        self.window = float(window_ms) / 1000.0
        self._on_batch = on_batch
        self._name = name
        self._cond = threading.Condition()
        self._pending: deque[_Job] = deque()
        self._coming = 0  # requests preparing an item right now (see run())
        self._closed = False
        self._thread: threading.Thread | None = None

    async def submit(self, item: T) -> R:
        """Queue a prepared item and wait for its result (the exception ``run`` raised, if any)."""
        return await self._enqueue(item, expected=False)

    async def run(
        self, prepare: Callable[[], T], *, limiter: anyio.CapacityLimiter | None = None
    ) -> R:
        """``prepare()`` in a worker thread (``limiter`` bounds how many at once), then
        :meth:`submit` its item. While it prepares, the batch being formed waits for it."""
        with self._cond:
            self._check_open()
            self._coming += 1
        try:
            item = await anyio.to_thread.run_sync(prepare, limiter=limiter)
        except BaseException:
            with self._cond:
                self._coming -= 1
                self._cond.notify()
            raise
        return await self._enqueue(item, expected=True)

    def close(self, timeout: float = 10.0) -> None:
        """Finish the queued batches, then stop the worker; later submits raise."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    # ------------------------------------------------------------------ internals

    def _check_open(self) -> None:
        if self._closed:
            raise BatcherClosedError(f"{self._name}: the service is shutting down")

    async def _enqueue(self, item: T, *, expected: bool) -> R:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        with self._cond:
            if expected:
                self._coming -= 1
            self._check_open()
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name=f"vitrina-{self._name}", daemon=True
                )
                self._thread.start()
            self._pending.append(_Job(item, future, loop))
            self._cond.notify()
        return await future

    def _next_batch(self) -> list[_Job] | None:
        with self._cond:
            while not self._pending and not self._closed:
                self._cond.wait()
            if not self._pending:
                return None  # closed and drained
            deadline = time.monotonic() + self.window
            while len(self._pending) < self.max_batch and self._coming > 0 and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            n = min(self.max_batch, len(self._pending))
            jobs = [self._pending.popleft() for _ in range(n)]
        # A client that went away cancelled its future: skip its work.
        return [j for j in jobs if not j.future.cancelled()]

    def _loop(self) -> None:
        while (jobs := self._next_batch()) is not None:
            if jobs:
                self._run_batch(jobs)

    def _run_batch(self, jobs: list[_Job]) -> None:
        start = time.perf_counter()
        try:
            results = list(self._run([j.item for j in jobs]))
            if len(results) != len(jobs):
                raise RuntimeError(f"{self._name}: {len(jobs)} items gave {len(results)} results")
        except Exception as exc:
            log.exception("%s: batch of %d failed", self._name, len(jobs))
            for j in jobs:
                _complete(j, None, exc)
            return
        seconds = time.perf_counter() - start
        for j, r in zip(jobs, results, strict=True):
            _complete(j, r, None)
        if self._on_batch is not None:
            self._on_batch(len(jobs), seconds)


def _complete(job: _Job, result: Any, exc: BaseException | None) -> None:
    def settle() -> None:
        if job.future.done():  # cancelled meanwhile
            return
        if exc is not None:
            job.future.set_exception(exc)
        else:
            job.future.set_result(result)

    with contextlib.suppress(RuntimeError):  # a closed event loop: nobody waits for it
        job.loop.call_soon_threadsafe(settle)
