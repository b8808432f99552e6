"""Many :func:`~vitrina.io.files.place_file` calls at once, answered in the order asked.

Placing a photo safely is mostly waiting for the disk: the copy is synced, verified and its
folder synced before it counts (``place_file``). One after another, those waits were the
slowest part of ``vitrina sort`` (3 s of every 1,000 photos on a 2-core machine, while the
model waited for the loop to come back). A few threads overlap the waits; the caller still
gets every answer in the order it asked, so its journal and progress read as before.

What stays as it was, one placement at a time:

* photos whose names could claim the same file (``a.jpg``, another ``a.jpg``, ``a-1.jpg``
  into one folder) are placed in the order asked, so each gets the name the plain loop gives;
* ``move``: its ``before_delete`` hook writes the caller's journal, which is not shared
  between threads, so moves run in the caller's thread.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Generic, TypeVar

from vitrina.io.files import place_file

__all__ = ["PlacementQueue"]

T = TypeVar("T")

#: Outcome of one placement: ``(final_path, already_there)`` or the exception it raised.
Outcome = tuple[Path, bool] | BaseException

_VARIANT = re.compile(r"-\d+$")  # unique_path's "stem-N": names of one family share a key


def _name_key(folder: Path, name: str) -> tuple[str, str]:
    p = Path(name)
    return str(folder), _VARIANT.sub("", p.stem).lower() + p.suffix.lower()


class PlacementQueue(Generic[T]):
    """Place files on ``threads`` threads; :meth:`submit` and :meth:`drain` hand back
    ``(tag, outcome)`` in submission order, ``outcome`` being ``place_file``'s result or
    the exception it raised (the caller decides what stops the run).

    At most ``depth`` placements are in flight; :meth:`submit` waits for the oldest beyond
    that. ``threads=0`` (and ``method="move"``) places in the caller's thread: the plain
    loop, which the threaded one is tested against.
    """

    def __init__(
        self,
        method: str,
        *,
        threads: int = 4,
        depth: int = 64,
        before_delete: Callable[[T, Path], None] | None = None,
    ) -> None:
        self.method = method
        self.before_delete = before_delete
        self.threads = 0 if method == "move" else max(0, threads)
        self.depth = max(1, depth)
        self._pool = (
            ThreadPoolExecutor(self.threads, thread_name_prefix="vitrina-place")
            if self.threads
            else None
        )
        # (tag, the placement or its outcome, its name family: None when placed inline)
        self._pending: deque[
            tuple[T, Future[tuple[Path, bool]] | Outcome, tuple[str, str] | None]
        ] = deque()
        self._last_of: dict[tuple[str, str], Future[tuple[Path, bool]]] = {}

    def __enter__(self) -> PlacementQueue[T]:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Wait for placements in flight (nothing is left half-placed), then stop."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def _place(self, tag: T, src: Path, folder: Path) -> tuple[Path, bool]:
        hook = None
        if self.before_delete is not None:
            before = self.before_delete
            hook = lambda final: before(tag, final)  # noqa: E731
        return place_file(src, folder, method=self.method, before_delete=hook)

    def submit(self, tag: T, src: Path, folder: Path) -> Iterator[tuple[T, Outcome]]:
        """Start placing ``src`` into ``folder``; yields the placements finished by now, in
        order (consume it before the next call)."""
        if self._pool is None:
            try:
                outcome: Outcome = self._place(tag, src, folder)
            except Exception as e:
                outcome = e
            self._pending.append((tag, outcome, None))
        else:
            key = _name_key(folder, src.name)
            previous = self._last_of.get(key)
            if previous is not None and not previous.done():
                previous.exception()  # wait: the same name family goes in order
            fut = self._pool.submit(self._place, tag, src, folder)
            self._last_of[key] = fut
            self._pending.append((tag, fut, key))
        yield from self._ready(block=len(self._pending) > self.depth)

    def drain(self) -> Iterator[tuple[T, Outcome]]:
        """Every placement not handed back yet, in order, waiting for each."""
        while self._pending:
            yield from self._ready(block=True, one=True)

    def _ready(self, *, block: bool, one: bool = False) -> Iterator[tuple[T, Outcome]]:
        while self._pending:
            tag, fut, key = self._pending[0]
            if isinstance(fut, Future):
                if not fut.done() and not block:
                    return
                exc = fut.exception()  # waits when blocking
                outcome: Outcome = exc if exc is not None else fut.result()
                if key is not None and self._last_of.get(key) is fut:
                    del self._last_of[key]
            else:
                outcome = fut
            self._pending.popleft()
            yield tag, outcome
            if one:
                return
            block = False  # after the one waited for, only what is done already
