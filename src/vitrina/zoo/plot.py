"""The zoo as a picture: size against accuracy or speed."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from vitrina.errors import VitrinaError
from vitrina.report.plots import plot_size_scatter
from vitrina.zoo.catalogue import ZooEntry

__all__ = ["PLOT_Y", "plot_zoo"]

#: What :func:`plot_zoo` can draw against size.
PLOT_Y = ("top1", "throughput")


def plot_zoo(
    entries: Sequence[ZooEntry],
    path: str | Path,
    y: str = "top1",
    *,
    backend: str | None = None,
) -> Path:
    """Scatter of fp32 size (MB, log scale) against ImageNet top-1 (``y="top1"``) or batch-32
    throughput (``y="throughput"``, of ``backend``, default the first one measured), each
    point labelled with its name; written atomically as PNG. Entries without that value are
    left out; none at all raises :class:`VitrinaError`."""
    if y not in PLOT_Y:
        raise VitrinaError(f"plot y must be one of {', '.join(PLOT_Y)}, not {y!r}")
    points: list[tuple[str, float, float]] = []
    label = "ImageNet-1k top-1 (%)"
    for e in entries:
        if y == "top1":
            if e.top1 is not None:
                points.append((e.name, e.size_mb_fp32, e.top1))
            continue
        b = backend or next(iter(e.timings), None)
        t = e.timings.get(b) if b else None
        if t is not None:
            points.append((e.name, e.size_mb_fp32, t.throughput))
            label = f"images/s at batch {t.throughput_batch} ({b}, {t.threads} threads, CPU)"
    if not points:
        what = "an ImageNet top-1" if y == "top1" else "a throughput (measure first)"
        raise VitrinaError(f"nothing to plot: no model in the list has {what}")
    return plot_size_scatter(
        points, path, xlabel="size (MB, fp32 weights, log scale)", ylabel=label, title="zoo"
    )
