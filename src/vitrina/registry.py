"""One registry shape for everything chosen by name (models, backends, losses, CAM methods).

A decorator registers; a duplicate name raises; ``names(pattern)`` filters with shell
wildcards; an unknown name raises :class:`UnknownNameError` with the closest valid names.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from vitrina.errors import UnknownNameError

T = TypeVar("T")

__all__ = ["Registry", "suggest"]


def suggest(name: str, candidates: list[str] | tuple[str, ...], n: int = 5) -> str:
    """Return ``" (did you mean: a, b?)"`` for the closest candidates, or ``""``."""
    close = difflib.get_close_matches(name, candidates, n=n, cutoff=0.6)
    if not close:
        low = name.lower()
        close = [c for c in candidates if low and low in c.lower()][:n]
    return f" (did you mean: {', '.join(close)}?)" if close else ""


class Registry(Generic[T]):
    """Name -> object mapping filled by the :meth:`register` decorator."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str | None = None) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            key = name or getattr(obj, "__name__", None)
            if not key:
                raise ValueError(f"cannot register an unnamed {self.kind}")
            if key in self._items:
                raise ValueError(f"{self.kind} {key!r} is already registered")
            self._items[key] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}{suggest(name, list(self._items))}"
            ) from None

    def names(self, pattern: str | None = None) -> list[str]:
        keys = sorted(self._items)
        if pattern:
            keys = [k for k in keys if fnmatch.fnmatch(k, pattern)]
        return keys

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def __len__(self) -> int:
        return len(self._items)
