"""Timing a backend the way benchmarks should: warm-up, repeated runs, the median."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

__all__ = ["Timing", "cpu_name", "machine_key", "time_call"]


@dataclass(frozen=True)
class Timing:
    seconds: float  # median seconds per call
    runs: int  # timed runs behind the median

    def per_second(self, items: int) -> float:
        return items / max(self.seconds, 1e-12)


def time_call(
    fn: Callable[[], object],
    *,
    warmup: int = 1,
    min_runs: int = 3,
    min_time: float = 0.5,
    max_time: float = 10.0,
) -> Timing:
    """Median wall time of ``fn()`` after ``warmup`` calls: runs until at least ``min_runs``
    runs and ``min_time`` seconds, but stops once ``max_time`` is spent (at least one run),
    so a slow model on a slow backend still finishes."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    spent = 0.0
    while True:
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        times.append(dt)
        spent += dt
        if (len(times) >= min_runs and spent >= min_time) or spent >= max_time:
            break
    return Timing(statistics.median(times), len(times))


@cache
def cpu_name() -> str:
    """The CPU model as /proc/cpuinfo names it (else what ``platform`` knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def machine_key() -> str:
    """CPU model, usable cores, GPU and runtime versions: a timing (or a decision based on
    one) is only reused where all of these are the same."""
    from vitrina.lazy import gpu_possible, torch_version

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = "no GPU"
    if gpu_possible():
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    return (
        f"{cpu_name()}|{cores} cores|{gpu}|torch {torch_version()}|ort "
        f"{_version('onnxruntime')}|openvino {_version('openvino')}"
    )


@cache
def _version(package: str) -> str:
    """A package's installed version without importing it ("-" when not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "-"
