"""Sort a folder of photos into ``OUT/<class>/``, ``OUT/unsure/`` and ``OUT/unreadable/``.

Nothing the user owns is lost: files are copied (or moved: copy, sync, verify, then delete)
under names that never overwrite, and every placed file is journalled in ``manifest.csv``
as it happens. Running the same command again finishes an interrupted job without
duplicating anything.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from vitrina.classify.classifier import Classifier, Prediction, load
from vitrina.data import check_class_name, iter_image_files
from vitrina.errors import DataError, DiskFullError, VitrinaError
from vitrina.io import place_file, remove_stale_temps

__all__ = ["METHODS", "SortItem", "SortSummary", "sort_folder"]

METHODS = ("copy", "move", "link")
UNSURE = "unsure"
UNREADABLE = "unreadable"
MANIFEST = "manifest.csv"
FIELDS = ["source", "destination", "label", "confidence", "top3", "status", "error"]


@dataclass
class SortItem:
    source: Path
    destination: Path | None
    label: str | None
    confidence: float
    top3: str
    status: str  # sorted | unsure | unreadable | planned | error
    error: str = ""

    def row(self) -> dict[str, str]:
        return {
            "source": str(self.source),
            "destination": str(self.destination or ""),
            "label": self.label or "",
            "confidence": f"{self.confidence:.4f}",
            "top3": self.top3,
            "status": self.status,
            "error": self.error,
        }


@dataclass
class SortSummary:
    out_dir: Path
    method: str
    dry_run: bool
    items: list[SortItem] = field(default_factory=list)
    skipped_done: int = 0  # already sorted by an earlier run
    skipped_non_image: int = 0
    backend: str = ""  # the backend that ran (what ``auto`` chose, with its measurements)

    @property
    def counts(self) -> dict[str, int]:
        c: Counter[str] = Counter()
        for it in self.items:
            if it.destination is not None:
                c[it.destination.parent.name] += 1
        return dict(sorted(c.items()))

    @property
    def unreadable(self) -> list[SortItem]:
        return [it for it in self.items if it.status == UNREADABLE]

    @property
    def manifest(self) -> Path:
        return self.out_dir / MANIFEST


def _read_manifest(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        # A run killed mid-write may leave a partial last line; it is simply not trusted.
        return [r for r in csv.DictReader(f) if r.get("status") and r.get("source")]


def _check_classes(classes: list[str]) -> None:
    for c in classes:
        check_class_name(c)
        if c in (UNSURE, UNREADABLE):
            raise DataError(f"class name {c!r} collides with the {c}/ bin; rename that class")


def _top3(p: Prediction) -> str:
    return ";".join(f"{lbl}:{prob:.4f}" for lbl, prob in p.top[:3])


def sort_folder(
    photos_dir: str | Path,
    model: str | Path | Classifier,
    out_dir: str | Path,
    *,
    min_confidence: float = 0.5,
    method: str = "copy",
    dry_run: bool = False,
    recursive: bool = False,
    backend: str = "auto",
    device: str = "auto",
    batch_size: int = 16,
    num_workers: int | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> SortSummary:
    """Put each photo of ``photos_dir`` into ``out_dir/<predicted class>/``.

    A photo whose top probability is below ``min_confidence`` goes to ``unsure/``; one that
    cannot be decoded goes to ``unreadable/``. ``method`` is ``copy``, ``move`` or ``link``.
    ``on_progress(done, total)`` is called as photos are placed.
    """
    if method not in METHODS:
        raise VitrinaError(f"method {method!r} is not one of {', '.join(METHODS)}")
    if not 0.0 <= min_confidence <= 1.0:
        raise VitrinaError(f"--min-confidence {min_confidence} must be between 0 and 1")
    clf = model if isinstance(model, Classifier) else load(model)
    _check_classes(clf.classes)
    photos_dir, out_dir = Path(photos_dir), Path(out_dir)
    images, _, non_images = iter_image_files(photos_dir, recursive=recursive)
    out_abs = out_dir.resolve()
    images = [p for p in images if not p.resolve().is_relative_to(out_abs)]
    summary = SortSummary(out_dir, method, dry_run, skipped_non_image=len(non_images))

    done_rows = _read_manifest(out_dir / MANIFEST)
    journalled = {(r["source"], r["destination"]) for r in done_rows}
    if method in ("copy", "link"):
        # Already placed by an earlier run and still there: nothing to do for these.
        placed = {
            r["source"] for r in done_rows if r["destination"] and Path(r["destination"]).exists()
        }
        todo = [p for p in images if str(p) not in placed]
        summary.skipped_done = len(images) - len(todo)
        images = todo
    if not images:
        return summary

    total = len(images)
    preds = clf.iter_predict(
        images,
        top_k=3,
        backend=backend,
        device=device,
        batch_size=batch_size,
        num_workers=num_workers,
    )
    if dry_run:
        for k, p in enumerate(preds, 1):
            folder = _folder_for(p, min_confidence)
            summary.items.append(
                SortItem(
                    p.path,
                    out_dir / folder / p.path.name,
                    p.label,
                    p.confidence,
                    _top3(p),
                    "planned",
                    p.error or "",
                )
            )
            if on_progress:
                on_progress(k, total)
        summary.backend = clf.last_engine.describe() if clf.last_engine else ""
        return summary

    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out_dir)
    manifest = out_dir / MANIFEST
    new_file = not manifest.exists() or manifest.stat().st_size == 0
    with open(manifest, "a", newline="", encoding="utf-8") as mf:
        writer = csv.DictWriter(mf, fieldnames=FIELDS)
        if new_file:
            writer.writeheader()
        try:
            for k, p in enumerate(preds, 1):
                folder = _folder_for(p, min_confidence)
                status = UNREADABLE if p.error else (UNSURE if folder == UNSURE else "sorted")
                item = SortItem(
                    p.path, None, p.label, p.confidence, _top3(p), status, p.error or ""
                )
                try:
                    dest, _ = place_file(p.path, out_dir / folder, method=method)
                    item.destination = dest
                except DiskFullError:
                    raise
                except (VitrinaError, OSError) as e:
                    item.status, item.error = "error", str(e).splitlines()[0]
                summary.items.append(item)
                if (str(item.source), str(item.destination or "")) not in journalled:
                    writer.writerow(item.row())
                    mf.flush()
                if on_progress:
                    on_progress(k, total)
        except DiskFullError as e:
            placed_n = sum(1 for it in summary.items if it.destination is not None)
            raise DiskFullError(
                f"{e}; stopped after placing {placed_n} of {total} photos, nothing half-moved "
                "(free space and run the same command again to finish)"
            ) from None
        finally:
            mf.flush()
            os.fsync(mf.fileno())
    summary.backend = clf.last_engine.describe() if clf.last_engine else ""
    return summary


def _folder_for(p: Prediction, min_confidence: float) -> str:
    if p.error or p.label is None:
        return UNREADABLE
    return p.label if p.confidence >= min_confidence else UNSURE
