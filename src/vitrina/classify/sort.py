"""Sort a folder of photos into ``OUT/<class>/``, ``OUT/unsure/`` and ``OUT/unreadable/``.

Nothing the user owns is lost: files are copied (or moved: copy, sync, verify, then delete)
under names that never overwrite, and every placement is journalled in ``manifest.csv`` by
:class:`vitrina.io.ManifestJournal` (whole rows only; a move's row is intended and synced
before its source is deleted). Running the same command again finishes an interrupted job
without duplicating or losing anything. Memory does not grow with the number of photos when
``keep_items=False`` (items go to ``on_item`` as they are placed).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from vitrina.classify.classifier import Classifier, Prediction, load
from vitrina.data import check_class_name, iter_image_files
from vitrina.errors import DataError, DiskFullError, VitrinaError
from vitrina.io import (
    ManifestJournal,
    check_movable,
    make_output_dir,
    remove_stale_temps,
)
from vitrina.io.placing import Outcome, PlacementQueue
from vitrina.report.pictures import Bins, check_writable, write_bins

__all__ = ["METHODS", "SortItem", "SortSummary", "sort_folder"]

METHODS = ("copy", "move", "link")
#: Threads placing photos at once (their disk waits overlap; answers stay in order).
PLACERS = 4
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
    """What a sort did. ``items`` holds every placement unless the sort ran with
    ``keep_items=False``; ``counts``, ``unreadable`` and ``errors`` are always complete."""

    out_dir: Path
    method: str
    dry_run: bool
    items: list[SortItem] = field(default_factory=list)
    skipped_done: int = 0  # already sorted by an earlier run
    skipped_non_image: int = 0
    backend: str = ""  # the backend that ran (what ``auto`` chose, with its measurements)
    repaired: list[str] = field(default_factory=list)  # what the manifest journal repaired
    counts: dict[str, int] = field(default_factory=dict)  # photos per folder
    unreadable: list[SortItem] = field(default_factory=list)
    errors: list[SortItem] = field(default_factory=list)  # not placed: the error says why
    pictures: list[Path] = field(default_factory=list)  # the --report page and --sheet PNG
    #: photos in sub-folders, counted only when a sort without ``recursive`` found none
    #: directly in the folder (the user most likely meant ``--recursive``)
    in_subfolders: int = 0

    def add(self, item: SortItem, *, keep: bool = True) -> None:
        if keep:
            self.items.append(item)
        if item.destination is not None:
            folder = item.destination.parent.name
            self.counts[folder] = self.counts.get(folder, 0) + 1
            self.counts = dict(sorted(self.counts.items()))
        if item.status == UNREADABLE or (item.status == "planned" and item.error):
            self.unreadable.append(item)
        if item.status == "error":
            self.errors.append(item)

    @property
    def placed(self) -> int:
        return sum(self.counts.values())

    @property
    def problems(self) -> list[str]:
        """One line per photo that was not placed (empty: everything asked was done)."""
        return [f"not placed: {it.error}" for it in self.errors]

    @property
    def manifest(self) -> Path:
        return self.out_dir / MANIFEST


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
    on_item: Callable[[SortItem], None] | None = None,
    keep_items: bool = True,
    predict: Callable[[list[Path]], Iterable[Prediction]] | None = None,
    report: str | Path | None = None,
    sheet: str | Path | None = None,
    placers: int | None = None,
) -> SortSummary:
    """Put each photo of ``photos_dir`` into ``out_dir/<predicted class>/``.

    A photo whose top probability is below ``min_confidence`` goes to ``unsure/``; one that
    cannot be decoded goes to ``unreadable/``. ``method`` is ``copy``, ``move`` or ``link``.
    ``on_progress(done, total)`` is called as photos are placed, ``on_item(item)`` with each
    placement (or plan, for ``dry_run``); ``keep_items=False`` keeps only counts and problems
    in the summary, so memory stays flat over any number of photos.

    ``predict``: where the predictions come from, one per photo it is given, in any order
    (default: the classifier's engine in this process; :mod:`vitrina.scale` passes Ray's).
    Placement, the journal and resuming are the same either way.
    ``placers``: threads placing photos at once (default :data:`PLACERS`; 0: one at a time
    in this thread). Each photo gets the same name, journal line and progress either way.
    ``report`` (an HTML page) and ``sheet`` (a PNG contact sheet) show every folder of
    ``out_dir`` as ``manifest.csv`` records it (earlier runs included), the least confident
    photos first, with ``unsure/`` and ``unreadable/`` set apart; after a ``dry_run``, the
    photos where they would go.
    """
    for target, option in ((report, "--report"), (sheet, "--sheet")):
        if target:
            check_writable(target, option=option)
    plans = Bins() if dry_run and (report or sheet) else None

    def collect(item: SortItem) -> None:
        if plans is not None and item.destination is not None:
            _add_to_bins(plans, item.row(), show=item.source)
        if on_item:
            on_item(item)

    summary = _sort_folder(
        photos_dir,
        model,
        out_dir,
        min_confidence=min_confidence,
        method=method,
        dry_run=dry_run,
        recursive=recursive,
        backend=backend,
        device=device,
        batch_size=batch_size,
        num_workers=num_workers,
        on_progress=on_progress,
        on_item=collect if plans is not None else on_item,
        keep_items=keep_items,
        predict=predict,
        placers=placers,
    )
    if report or sheet:
        bins = plans if plans is not None else _manifest_bins(summary.manifest)
        verb = "would be placed" if dry_run else "sorted"
        summary.pictures = write_bins(
            bins,
            report=report,
            sheet=sheet,
            title=f"{summary.out_dir}: {sum(bins.counts.values())} photos {verb}",
            bin_names=(UNSURE, UNREADABLE),
            notes=[
                f"least confident first in each folder; unsure/ holds photos below "
                f"--min-confidence {min_confidence:g}, unreadable/ the ones that could not be "
                "decoded"
            ],
        )
    return summary


def _add_to_bins(bins: Bins, row: dict[str, str], show: Path | str | None = None) -> None:
    """One manifest row (or plan) into the report's bins: its folder, the photo to show (the
    placed copy, or the source for a plan), ranked by confidence (unreadable: unranked)."""
    folder = Path(row["destination"]).parent.name
    unreadable = row["status"] == UNREADABLE or (row["status"] == "planned" and row["error"])
    name = Path(row["source"]).name
    if unreadable:
        caption = f"{name}\n{row['error'] or 'unreadable'}"
    else:
        caption = f"{name}\n{row['label']} {float(row['confidence']):.2f}"
    rank = None if unreadable else float(row["confidence"])
    bins.add(folder, show or row["destination"], rank, caption)


def _manifest_bins(manifest: Path) -> Bins:
    """Every placement ``manifest.csv`` records, streamed (memory bounded by the bins)."""
    import csv

    bins = Bins()
    if not manifest.is_file():
        return bins
    with open(manifest, encoding="utf-8", errors="surrogateescape", newline="") as f:
        for row in csv.DictReader(f):
            if row.get("destination") and row.get("status") in ("sorted", UNSURE, UNREADABLE):
                try:
                    _add_to_bins(bins, row)
                except (KeyError, ValueError):  # a damaged row: the journal reports those
                    continue
    return bins


def _sort_folder(
    photos_dir: Path | str,
    model: str | Path | Classifier,
    out_dir: Path | str,
    *,
    min_confidence: float,
    method: str,
    dry_run: bool,
    recursive: bool,
    backend: str,
    device: str,
    batch_size: int,
    num_workers: int | None,
    on_progress: Callable[[int, int], None] | None,
    on_item: Callable[[SortItem], None] | None,
    keep_items: bool,
    predict: Callable[[list[Path]], Iterable[Prediction]] | None,
    placers: int | None = None,
) -> SortSummary:
    if method not in METHODS:
        raise VitrinaError(f"method {method!r} is not one of {', '.join(METHODS)}")
    if not 0.0 <= min_confidence <= 1.0:
        raise VitrinaError(f"--min-confidence {min_confidence} must be between 0 and 1")
    clf = model if isinstance(model, Classifier) else load(model, deferred=True)
    _check_classes(clf.classes)
    photos_dir, out_dir = Path(photos_dir), Path(out_dir)
    images, _, non_images = iter_image_files(photos_dir, recursive=recursive)
    images = _outside(images, out_dir)
    summary = SortSummary(out_dir, method, dry_run, skipped_non_image=len(non_images))
    if not images and not recursive:
        below = iter_image_files(photos_dir, recursive=True)[0]
        summary.in_subfolders = len(_outside(below, out_dir))

    def predictions(todo: list[Path]) -> Iterable[Prediction]:
        if predict is not None:
            return predict(todo)
        return clf.iter_predict(
            todo,
            top_k=3,
            backend=backend,
            device=device,
            batch_size=batch_size,
            num_workers=num_workers,
        )

    def emit(item: SortItem, k: int, total: int) -> None:
        summary.add(item, keep=keep_items)
        if on_item:
            on_item(item)
        if on_progress:
            on_progress(k, total)

    if dry_run:
        done = ManifestJournal.read(out_dir / MANIFEST, FIELDS)
        images = _skip_placed(images, done, method, summary)
        for k, p in enumerate(predictions(images), 1):
            folder = _folder_for(p, min_confidence)
            dest = out_dir / folder / p.path.name
            item = SortItem(p.path, dest, p.label, p.confidence, _top3(p), "planned", p.error or "")
            emit(item, k, len(images))
        summary.backend = clf.last_engine.describe() if clf.last_engine else ""
        return summary

    if not images and not (out_dir / MANIFEST).exists():
        return summary
    if method == "move":
        check_movable(images)
    make_output_dir(out_dir)
    with ManifestJournal.open(out_dir / MANIFEST, FIELDS) as journal:
        summary.repaired = journal.repair.lines(journal.path)
        images = _skip_placed(images, journal, method, summary)
        if not images:
            return summary
        remove_stale_temps(out_dir)
        total = len(images)

        def intend(tag: tuple[SortItem, int], final: Path) -> None:
            item = tag[0]
            journal.intend([SortItem(**{**vars(item), "destination": final}).row()])

        def finish(done: tuple[tuple[SortItem, int], Outcome]) -> None:
            (item, k), outcome = done
            if isinstance(outcome, DiskFullError):
                raise outcome
            if isinstance(outcome, VitrinaError | OSError):
                item.status, item.error = "error", str(outcome).splitlines()[0]
            elif isinstance(outcome, BaseException):
                raise outcome
            else:
                item.destination = outcome[0]
            journal.record([item.row()])
            emit(item, k, total)

        try:
            # Placements overlap their disk waits on a few threads; answers come back in
            # order, so the journal and the progress read as the plain loop's (placers=0).
            with PlacementQueue[tuple[SortItem, int]](
                method, threads=PLACERS if placers is None else placers, before_delete=intend
            ) as queue:
                for k, p in enumerate(predictions(images), 1):
                    folder = _folder_for(p, min_confidence)
                    status = UNREADABLE if p.error else (UNSURE if folder == UNSURE else "sorted")
                    item = SortItem(
                        p.path, None, p.label, p.confidence, _top3(p), status, p.error or ""
                    )
                    for done in queue.submit((item, k), p.path, out_dir / folder):
                        finish(done)
                for done in queue.drain():
                    finish(done)
        except DiskFullError as e:
            where = f" on {e.disk}" if e.disk else ""
            raise DiskFullError(
                f"{e}; stopped after placing {summary.placed} of {total} photos, nothing "
                f"half-moved: free space{where} and run the same command again to finish",
                path=e.path,
                disk=e.disk,
            ) from None
    summary.backend = clf.last_engine.describe() if clf.last_engine else ""
    return summary


def _outside(images: list[Path], out_dir: Path) -> list[Path]:
    """The photos that do not lie in ``out_dir`` (a sort run again inside its own photo
    folder must not sort its output). Each folder is resolved once, not each of its photos:
    50,000 photos in one folder cost one ``realpath``, not 50,000."""
    out_abs = out_dir.resolve()
    inside: dict[Path, bool] = {}
    kept = []
    for p in images:
        parent = p.parent
        if parent not in inside:
            inside[parent] = parent.resolve().is_relative_to(out_abs)
        if not inside[parent]:
            kept.append(p)
    return kept


def _skip_placed(
    images: list[Path], journal: ManifestJournal, method: str, summary: SortSummary
) -> list[Path]:
    """Copies and links that an earlier run placed (and that are still there) are done; a
    moved photo is no longer in the folder, and a half-moved one is placed again."""
    if method == "move":
        return images
    todo = [p for p in images if not journal.placed(p)]
    summary.skipped_done = len(images) - len(todo)
    return todo


def _folder_for(p: Prediction, min_confidence: float) -> str:
    if p.error or p.label is None:
        return UNREADABLE
    return p.label if p.confidence >= min_confidence else UNSURE
