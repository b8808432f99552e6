"""Injected write failures for the stateful tests: the n-th ``os.replace`` / ``os.fsync`` /
``os.unlink`` of one operation raises, as a full or failing disk would.

Every durable step of vitrina's writers goes through one of these (atomic writes: fsync then
replace; the index's faiss file: fsync, replace to the pending name, commit, replace; a moved
photo: fsync, link, unlink), so "fail the n-th call" walks the failure through every write
step of an operation in turn.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

__all__ = ["FAULT_CALLS", "Fault", "InjectedFault", "inject"]

FAULT_CALLS = ("replace", "fsync", "unlink", "link")


class InjectedFault(OSError):
    """The error the test injected (an OSError, like the real thing: EIO)."""

    def __init__(self, where: str, code: int = errno.EIO) -> None:
        super().__init__(code, f"injected failure at {where}")


@dataclass
class Fault:
    call: str  # one of FAULT_CALLS
    nth: int  # 1-based: the n-th such call of the operation fails
    code: int = errno.EIO  # errno.ENOSPC: a full disk
    fired: bool = False


@contextmanager
def inject(fault: Fault | None) -> Iterator[Fault | None]:
    """Within the block, the ``fault.nth`` call of ``os.<fault.call>`` raises once."""
    if fault is None:
        yield None
        return
    real = getattr(os, fault.call)
    count = 0

    def failing(*args, **kwargs):
        nonlocal count
        count += 1
        if count == fault.nth and not fault.fired:
            fault.fired = True
            raise InjectedFault(f"os.{fault.call} call {count}", fault.code)
        return real(*args, **kwargs)

    setattr(os, fault.call, failing)
    try:
        yield fault
    finally:
        setattr(os, fault.call, real)
