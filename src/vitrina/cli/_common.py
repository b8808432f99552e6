"""What every command shares: consoles, progress bars, option types, JSON output."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)

err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)

BACKEND_HELP = (
    "Inference backend: auto (measured: the fastest that keeps accuracy), eager (fp32), "
    "fp64, bf16, onnx, int8 (after `vitrina optimize`), pruned."
)
DEVICE_HELP = "Where to run: auto (GPU if present), cpu, cuda, cuda:1..."


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


@contextmanager
def progress_bar(
    description: str, total: int | None, *, enabled: bool = True, unit: str | None = "img/s"
) -> Iterator[Any]:
    """Yield ``update(done, total=None)``; draws a bar on stderr (nothing when disabled).

    ``unit`` labels the rate column (``None``: no rate, for steps of very unequal cost)."""
    if not enabled or not err.is_terminal:  # logs and pipes get results, not bar frames
        yield lambda done, total=None: None
        return
    with Progress(
        TextColumn(f"[bold]{description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
        console=err,
        transient=True,
    ) as p:
        task = p.add_task(description, total=total, rate="")

        def update(done: int, total: int | None = None) -> None:
            t = p.tasks[0]
            rate = f"{done / t.elapsed:.0f} {unit}" if t.elapsed and unit else ""
            p.update(task, completed=done, total=total if total is not None else t.total, rate=rate)

        yield update


def photo_paths(items: Any, recursive: bool = True) -> list[Any]:
    """Files as given; folders expanded to the images inside them (sorted)."""
    from pathlib import Path

    from vitrina.data import iter_image_files
    from vitrina.errors import DataError

    found: list[Path] = []
    for p in map(Path, items):
        if p.is_dir():
            found += iter_image_files(p, recursive=recursive)[0]
        elif p.exists():
            found.append(p)
        else:
            raise DataError(f"{p}: no such photo or folder")
    return found


def refuse_existing(*paths: Any) -> None:
    """One-line error if any output file already exists: nothing is ever overwritten."""
    from pathlib import Path

    from vitrina.errors import VitrinaError

    for p in map(Path, paths):
        if p.exists():
            raise VitrinaError(f"{p}: file exists; choose another --out (nothing was written)")
