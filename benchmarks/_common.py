"""Helpers shared by the benchmark scripts (not part of the package)."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

DEFAULT_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def data_dir(sub: str, given: str | None) -> Path:
    root = Path(given) if given else (DEFAULT_DATA / sub).resolve()
    if not root.is_dir():
        sys.exit(f"error: {root}: data folder not found (pass --data DIR)")
    return root


def machine() -> str:
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.processor() or platform.machine()}, {cores} cores, {gpu}, torch {torch.__version__}"


def link_subset(files: list[Path], dest: Path) -> Path:
    """A folder of symlinks to ``files`` (class sub-folders preserved): no copying of data."""
    for f in files:
        target = dest / f.parent.name / f.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(f.resolve())
    return dest


def cpu_flags() -> str:
    """The CPU's matrix-relevant flags (every figure is quoted with them)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
    have = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            have = set(line.split(":", 1)[1].split())
            break
    return " ".join(f for f in wanted if f in have) or "none of " + ", ".join(wanted)
