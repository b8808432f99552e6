"""Sort photos by person: ``OUT/<person>/``, ``OUT/unknown/``, ``OUT/no-face/``, ``OUT/unreadable/``.

A photo goes into the folder of every known person in it (two people: both folders), and into
``unknown/`` as well when someone in it is not in the gallery, so they can be reviewed and
enrolled. The same safety as :func:`vitrina.classify.sort_folder`: copies (or moves: copy, sync,
verify, then delete — a photo with several destinations is copied to all but the last and
moved to the last) under names that never overwrite, journalled in ``manifest.csv`` as it
happens; running the same command again finishes an interrupted job without duplicates.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from vitrina.data import iter_image_files
from vitrina.errors import DiskFullError, VitrinaError
from vitrina.faces.gallery import UNKNOWN, Gallery, Identification
from vitrina.faces.types import PhotoFaces
from vitrina.io import (
    ManifestJournal,
    check_movable,
    make_output_dir,
    place_file,
    remove_stale_temps,
)
from vitrina.report.pictures import Bins, check_writable, write_bins

__all__ = ["FaceSortItem", "FaceSortSummary", "folders_for", "sort_faces"]

NO_FACE = "no-face"
UNREADABLE = "unreadable"
MANIFEST = "manifest.csv"
FIELDS = ["source", "destination", "people", "distances", "faces", "status", "error"]
METHODS = ("copy", "move")


@dataclass
class FaceSortItem:
    source: Path
    destinations: list[Path]
    people: list[str]  # one name (or "unknown") per face, left to right
    distances: list[float]
    status: str  # sorted | unknown | no-face | unreadable | error
    error: str = ""
    faces: int = 0

    def rows(self, destinations: list[Path] | None = None) -> list[dict[str, str]]:
        """Its manifest rows: one per destination (one with no destination when none)."""
        dests = self.destinations if destinations is None else destinations
        return [
            {
                "source": str(self.source),
                "destination": str(dest or ""),
                "people": ";".join(self.people),
                "distances": ";".join(f"{d:.4f}" for d in self.distances),
                "faces": str(self.faces),
                "status": self.status,
                "error": self.error,
            }
            for dest in dests or [None]
        ]


@dataclass
class FaceSortSummary:
    out_dir: Path
    method: str
    items: list[FaceSortItem] = field(default_factory=list)
    skipped_done: int = 0
    threshold_source: str = ""
    repaired: list[str] = field(default_factory=list)  # what the manifest journal repaired
    pictures: list[Path] = field(default_factory=list)  # the --report page

    @property
    def counts(self) -> dict[str, int]:
        c: Counter[str] = Counter()
        for it in self.items:
            for d in it.destinations:
                c[d.parent.name] += 1
        return dict(sorted(c.items()))

    @property
    def problems(self) -> list[str]:
        """One line per photo that was not (completely) placed."""
        return [f"not placed: {it.error}" for it in self.items if it.status == "error"]

    @property
    def manifest(self) -> Path:
        return self.out_dir / MANIFEST


def folders_for(pf: PhotoFaces, ids: list[Identification]) -> list[str]:
    """The folders a photo belongs in (see the module docstring)."""
    if pf.error:
        return [UNREADABLE]
    if not pf.faces:
        return [NO_FACE]
    known = sorted({i.name for i in ids if i.name != UNKNOWN})
    return known + ([UNKNOWN] if any(i.name == UNKNOWN for i in ids) else [])


def _status(pf: PhotoFaces, folders: list[str]) -> str:
    if pf.error:
        return UNREADABLE
    if not pf.faces:
        return NO_FACE
    return "sorted" if folders[0] != UNKNOWN else UNKNOWN


def sort_faces(
    photos: str | Path,
    gallery: str | Path | Gallery,
    out_dir: str | Path,
    *,
    method: str = "copy",
    recursive: bool = False,
    on_progress: Callable[[int, int], None] | None = None,
    report: str | Path | None = None,
) -> FaceSortSummary:
    """Sort the photos of the folder ``photos`` by the people of ``gallery`` into ``out_dir``.

    ``report``: also write an HTML page of every folder of ``out_dir`` as ``manifest.csv``
    records it (earlier runs included): in a person's folder the least sure match (the
    largest distance) first, in ``unknown/`` the nearest miss first; ``unknown/``,
    ``no-face/`` and ``unreadable/`` set apart."""
    if report is not None:
        check_writable(report)
    summary = _sort_faces(photos, gallery, out_dir, method, recursive, on_progress)
    if report is not None:
        bins = _manifest_bins(summary.manifest)
        summary.pictures = write_bins(
            bins,
            report=report,
            title=f"{summary.out_dir}: {sum(bins.counts.values())} photos by person",
            bin_names=(UNKNOWN, NO_FACE, UNREADABLE),
            notes=[
                "least sure first: in a person's folder the largest face distance, in "
                f"unknown/ the smallest ({summary.threshold_source})"
            ],
            order="least sure match first",
        )
    return summary


def _manifest_bins(manifest: Path) -> Bins:
    """The rows of a face sort's manifest, ranked for the report (see :func:`sort_faces`)."""
    import csv

    bins = Bins()
    if not manifest.is_file():
        return bins
    with open(manifest, encoding="utf-8", errors="surrogateescape", newline="") as f:
        for row in csv.DictReader(f):
            dest = row.get("destination") or ""
            if not dest or row.get("status") == "error":
                continue
            folder = Path(dest).parent.name
            people = [p for p in (row.get("people") or "").split(";") if p]
            try:
                dist = [float(d) for d in (row.get("distances") or "").split(";") if d]
            except ValueError:
                continue
            pairs = list(zip(people, dist, strict=False)) if len(people) == len(dist) else []
            name = Path(row["source"]).name
            mine = [d for p, d in pairs if p == folder]
            if folder == UNKNOWN and pairs:
                rank: float | None = min(d for p, d in pairs if p == UNKNOWN)
                caption = f"{name}\nnearest {rank:.2f}"
            elif mine:
                rank = -min(mine)
                caption = f"{name}\ndistance {min(mine):.2f}"
            else:
                rank = None
                caption = f"{name}\n{row.get('error') or row.get('status') or ''}"
            bins.add(folder, dest, rank, caption)
    return bins


def _sort_faces(
    photos: str | Path,
    gallery: str | Path | Gallery,
    out_dir: str | Path,
    method: str,
    recursive: bool,
    on_progress: Callable[[int, int], None] | None,
) -> FaceSortSummary:
    if method not in METHODS:
        raise VitrinaError(f"method {method!r} is not one of {', '.join(METHODS)}")
    g = gallery if isinstance(gallery, Gallery) else Gallery(gallery)
    out_dir = Path(out_dir)
    images, _, _ = iter_image_files(Path(photos), recursive=recursive)
    out_abs = out_dir.resolve()
    images = [p for p in images if not p.resolve().is_relative_to(out_abs)]
    summary = FaceSortSummary(out_dir, method, threshold_source=g.threshold_source)
    if not images and not (out_dir / MANIFEST).exists():
        return summary
    if method == "move":
        check_movable(images)
    make_output_dir(out_dir)
    with ManifestJournal.open(out_dir / MANIFEST, FIELDS) as journal:
        summary.repaired = journal.repair.lines(journal.path)
        if method == "copy":
            todo = [p for p in images if not journal.placed(p)]
            summary.skipped_done = len(images) - len(todo)
            images = todo
        if not images:
            return summary
        remove_stale_temps(out_dir)
        total = len(images)
        try:
            for k, pf in enumerate(g.pipeline().process(images), 1):
                ids = g.identify(pf) if pf.faces else []
                folders = folders_for(pf, ids)
                item = FaceSortItem(
                    pf.path,
                    [],
                    [i.name for i in ids],
                    [round(float(i.distance), 4) for i in ids if i.distance is not None],
                    _status(pf, folders),
                    pf.error or "",
                    len(pf.faces),
                )

                def intend(final: Path, item: FaceSortItem = item) -> None:
                    journal.intend(item.rows([*item.destinations, final]))

                try:
                    for n, folder in enumerate(folders):
                        last = n == len(folders) - 1
                        how = method if last else "copy"
                        dest, _ = place_file(
                            pf.path, out_dir / folder, method=how, before_delete=intend
                        )
                        item.destinations.append(dest)
                except DiskFullError:
                    raise  # nothing recorded: the re-run places this photo again, whole
                except (VitrinaError, OSError) as e:
                    item.status, item.error = "error", str(e).splitlines()[0]
                summary.items.append(item)
                journal.record(item.rows())
                if on_progress:
                    on_progress(k, total)
        except DiskFullError as e:
            where = f" on {e.disk}" if e.disk else ""
            raise DiskFullError(
                f"{e}; stopped after {len(summary.items)} of {total} photos, nothing "
                f"half-moved: free space{where} and run the same command again to finish",
                path=e.path,
                disk=e.disk,
            ) from None
    return summary
