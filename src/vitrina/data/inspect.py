"""``vitrina data inspect``: what a class-folder tree holds before anyone trains on it."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from vitrina.data.folder import scan_folder
from vitrina.errors import ImageReadError
from vitrina.io import file_digest, image_size

__all__ = ["FolderReport", "inspect_folder"]


@dataclass
class FolderReport:
    root: Path
    classes: dict[str, int]
    unreadable: list[tuple[Path, str]] = field(default_factory=list)
    duplicates: list[list[Path]] = field(default_factory=list)  # groups of identical files
    skipped_hidden: int = 0
    skipped_non_image: int = 0
    loose_images: int = 0
    widths: list[int] = field(default_factory=list)
    heights: list[int] = field(default_factory=list)
    samples: dict[str, list[Path]] = field(default_factory=dict)  # a few photos per class
    pictures: dict[str, Path] = field(default_factory=dict)  # what inspect_folder(out=) drew

    @property
    def total(self) -> int:
        return sum(self.classes.values())

    def size_stats(self) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for name, vals in (("width", self.widths), ("height", self.heights)):
            if vals:
                out[name] = {
                    "min": min(vals),
                    "median": statistics.median(vals),
                    "max": max(vals),
                }
        return out

    def to_dict(self) -> dict:
        return {
            "root": str(self.root),
            "classes": self.classes,
            "total": self.total,
            "unreadable": [{"path": str(p), "error": e} for p, e in self.unreadable],
            "duplicates": [[str(p) for p in g] for g in self.duplicates],
            "skipped_hidden": self.skipped_hidden,
            "skipped_non_image": self.skipped_non_image,
            "loose_images": self.loose_images,
            "size": self.size_stats(),
        }


SAMPLES_PER_CLASS = 8


def inspect_folder(
    root: str | Path,
    *,
    on_progress: Callable[[int, int], None] | None = None,
    out: str | Path | None = None,
) -> FolderReport:
    """Count per class, find unreadable files and exact duplicates (by content hash), and
    gather image sizes from headers. Reads each file once for the hash; decodes headers only.

    With ``out``, also draws into that folder ``samples.png`` (a row of photos per class,
    spread over the class), ``duplicates.png`` (each group side by side), ``sizes.png`` (the
    size distribution) and ``index.html`` showing them (``report.pictures`` lists them)."""
    if out is not None:
        from vitrina.report.pictures import check_writable

        check_writable(out, option="--out", folder=True)
    scan = scan_folder(root)
    report = FolderReport(
        scan.root,
        scan.counts(),
        skipped_hidden=scan.skipped_hidden,
        skipped_non_image=len(scan.skipped_non_image),
        loose_images=scan.loose_images,
    )
    by_hash: dict[str, list[Path]] = {}
    n = len(scan.samples)
    for k, s in enumerate(scan.samples):
        try:
            w, h = image_size(s.path)
            report.widths.append(w)
            report.heights.append(h)
            by_hash.setdefault(file_digest(s.path), []).append(s.path)
        except ImageReadError as e:
            report.unreadable.append((s.path, e.reason))
        if on_progress:
            on_progress(k + 1, n)
    report.duplicates = [g for g in by_hash.values() if len(g) > 1]
    bad = {p for p, _ in report.unreadable}
    for ci, name in enumerate(scan.classes):
        paths = [s.path for s in scan.samples if s.label == ci and s.path not in bad]
        step = max(1, len(paths) // SAMPLES_PER_CLASS)
        report.samples[name] = paths[::step][:SAMPLES_PER_CLASS]
    if out is not None:
        from vitrina.report.pictures import write_inspection_pictures

        report.pictures = write_inspection_pictures(
            out,
            samples=report.samples,
            counts=report.classes,
            duplicates=report.duplicates,
            widths=report.widths,
            heights=report.heights,
            unreadable=report.unreadable,
            title=f"{report.root}: {report.total} photos in {len(report.classes)} classes",
        )
    return report
