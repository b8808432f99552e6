"""``vitrina detect predict``: boxes of photos as JSON or CSV, annotated copies, and crops.

Boxes are in each photo's own pixels ``[x1, y1, x2, y2]`` (x right, y down, right/bottom
exclusive), with the class name and score. ``crops``: each box saved as a photo in
``OUT/<label>/<photo>-<k>.<ext>``, so detection feeds everything of part one (sort the crops
with a classifier, embed them, search them in a product index). Nothing is overwritten: files
that exist get a ``-1``, ``-2``... name; output files are written atomically.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from vitrina.data.annotations.crops import crop_box, safe_folder_name
from vitrina.detect.detectors import PhotoDetector
from vitrina.detect.task import Detections
from vitrina.engine import TaskResult, item_name
from vitrina.errors import VitrinaError
from vitrina.io import atomic_write_text, read_image, save_new_image
from vitrina.report.boxes import class_color, draw_boxes

__all__ = [
    "CSV_FIELDS",
    "DetectionResults",
    "PhotoBoxes",
    "PredictSummary",
    "annotate_photo",
    "crop_boxes",
    "detect",
    "photo_boxes",
    "predict_photos",
    "write_boxes",
]

CSV_FIELDS = ("photo", "width", "height", "label", "score", "x1", "y1", "x2", "y2")


_BOX_COLUMNS = ("photo", "label", "score", "x1", "y1", "x2", "y2", "error")
_HTML_COLUMNS = ("photo", "boxes", "error")
_SHOWN = 30


@dataclass
class PhotoBoxes:
    """One photo's answer: its detections (``None`` with ``error`` when unreadable).

    ``classes``: the detector's class names (set by :func:`predict_photos`, for the notebook
    table and :meth:`to_pandas`); ``item``: the photo as passed, for the thumbnail."""

    photo: str
    detections: Detections | None
    error: str | None = None
    annotated: Path | None = None
    crops: list[Path] = field(default_factory=list)
    classes: list[str] = field(default_factory=list, repr=False)
    item: Any = field(default=None, repr=False, compare=False)

    def _records(self) -> list[dict[str, Any]]:
        if self.detections is None or not len(self.detections):
            return [{"photo": self.photo, "error": self.error}]
        return [
            {"photo": self.photo, "label": b["label"], "score": b["score"], "error": None}
            | dict(zip(("x1", "y1", "x2", "y2"), b["box"], strict=True))
            for b in self.detections.records(self.classes)
        ]

    def _row(self) -> list[Any]:
        from vitrina.engine import load_item
        from vitrina.report.notebook import THUMB_SIDE, Error

        if self.error or self.detections is None:
            return [self.photo, None, Error(self.error or "")]
        try:  # boxes drawn on the photo, then shrunk (lines stay visible)
            photo = load_item(self.item if self.item is not None else self.photo)
        except VitrinaError as e:
            return [self.photo, None, Error(str(e))]
        drawn = annotate_photo(photo, self.detections, self.classes)
        drawn.thumbnail((3 * THUMB_SIDE, 3 * THUMB_SIDE))
        return [self.photo, drawn, None]

    def _repr_html_(self) -> str:
        from vitrina.report.notebook import html_table

        n = len(self.detections) if self.detections is not None else 0
        return html_table(f"{n} boxes in {self.photo}", _HTML_COLUMNS, [self._row()], side=3 * 96)

    def to_pandas(self) -> Any:
        """One row per box: photo, label, score, x1, y1, x2, y2 (a photo without boxes: one
        row with its error, if any)."""
        from vitrina.report.notebook import dataframe

        return dataframe(self._records(), _BOX_COLUMNS)

    def record(self, classes: Sequence[str]) -> dict[str, Any]:
        d = self.detections
        return {
            "photo": self.photo,
            "width": d.size[0] if d is not None else None,
            "height": d.size[1] if d is not None else None,
            "boxes": d.records(classes) if d is not None else [],
            "error": self.error,
        }


@dataclass
class PredictSummary:
    """What a prediction run did."""

    photos: int = 0
    boxes: int = 0
    per_class: Counter = field(default_factory=Counter)
    failed: list[str] = field(default_factory=list)
    annotated: int = 0
    crops: int = 0


def annotate_photo(photo: Image.Image, found: Detections, classes: Sequence[str]) -> Image.Image:
    """A copy of the photo with each box outlined in its class colour, labelled with the
    class and score."""
    texts = [
        f"{classes[k] if 0 <= k < len(classes) else k} {s:.2f}"
        for k, s in zip(found.labels.tolist(), found.scores.tolist(), strict=True)
    ]
    colors = [class_color(int(k)) for k in found.labels.tolist()]
    return draw_boxes(photo, found.boxes, texts, colors)


def crop_boxes(
    photo: Image.Image,
    found: Detections,
    classes: Sequence[str],
    out: Path,
    stem: str,
    suffix: str,
) -> list[Path]:
    """Each box of ``found`` as its own photo in ``out/<label>/<stem>-<k><suffix>``."""
    paths = []
    for k, (box, label) in enumerate(zip(found.boxes, found.labels.tolist(), strict=True)):
        rect = crop_box(photo.size, box)
        if rect is None:
            continue
        name = classes[label] if 0 <= label < len(classes) else str(label)
        target = out / safe_folder_name(name) / f"{stem}-{k}{suffix}"
        paths.append(save_new_image(photo.crop(rect), target, quality=95))
    return paths


def predict_photos(
    detector: PhotoDetector,
    photos: Iterable[Any],
    *,
    min_score: float | None = None,
    annotate: str | Path | None = None,
    crops: str | Path | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> Iterator[PhotoBoxes]:
    """The boxes of each photo (in order), scoring at least ``min_score`` (default: the
    detector's ``default_min_score``). ``annotate``: a folder for copies with the boxes
    drawn; ``crops``: a folder for each box as a photo (see the module docstring).
    Unreadable photos come back with their ``error`` (one line) and the run goes on."""
    floor = detector.default_min_score if min_score is None else float(min_score)
    ann_dir = Path(annotate) if annotate is not None else None
    crop_dir = Path(crops) if crops is not None else None
    for r in detector.detect(photos, min_score=floor, on_progress=on_progress):
        yield _finish(r, detector.classes, ann_dir, crop_dir)


def photo_boxes(
    r: TaskResult,
    classes: Sequence[str],
    *,
    annotate: str | Path | None = None,
    crops: str | Path | None = None,
) -> PhotoBoxes:
    """One detector result -> :class:`PhotoBoxes`, its annotated copy and crops written: what
    :func:`predict_photos` does for each photo (:mod:`vitrina.scale` hands it results found
    on Ray)."""
    ann_dir = Path(annotate) if annotate is not None else None
    crop_dir = Path(crops) if crops is not None else None
    return _finish(r, classes, ann_dir, crop_dir)


class DetectionResults(list[PhotoBoxes]):
    """:func:`detect`'s answer for several photos, in order: a list that shows each photo with
    its boxes drawn in a notebook, and one pandas table (a row per box) with
    :meth:`to_pandas`."""

    def _repr_html_(self) -> str:
        from vitrina.report.notebook import html_table

        boxes = sum(len(p.detections) for p in self if p.detections is not None)
        rows = [p._row() for p in self[:_SHOWN]]
        return html_table(
            f"{len(self)} photos, {boxes} boxes",
            _HTML_COLUMNS,
            rows,
            side=3 * 96,
            more=len(self) - len(rows),
        )

    def to_pandas(self) -> Any:
        """One row per box of every photo (see :meth:`PhotoBoxes.to_pandas`)."""
        from vitrina.report.notebook import dataframe

        return dataframe([rec for p in self for rec in p._records()], _BOX_COLUMNS)


def detect(
    photos: Any,
    detector: PhotoDetector | str | Path,
    *,
    min_score: float | None = None,
    **options: Any,
) -> PhotoBoxes | DetectionResults:
    """The boxes in photos as they come -- paths, PIL images, numpy arrays, torch tensors: one
    photo gives one :class:`PhotoBoxes`, a list gives :class:`DetectionResults`.

    ``detector``: a loaded detector, a run folder of ``vitrina detect train`` or a name of
    :data:`~vitrina.detect.DETECTORS` (``options`` go to :func:`load_detector`)."""
    from vitrina.detect.detectors import load_detector
    from vitrina.engine import as_items

    if isinstance(detector, str | Path):
        detector = load_detector(detector, **options)
    items, single = as_items(photos)
    out = DetectionResults(predict_photos(detector, items, min_score=min_score))
    return out[0] if single else out


def _finish(
    r: TaskResult, classes: Sequence[str], ann_dir: Path | None, crop_dir: Path | None
) -> PhotoBoxes:
    name = str(r.item) if isinstance(r.item, str | Path) else item_name(r.item)
    if not r.ok:
        return PhotoBoxes(name, None, r.error, classes=list(classes), item=r.item)
    found: Detections = r.value
    pb = PhotoBoxes(name, found, classes=list(classes), item=r.item)
    if (ann_dir is None and crop_dir is None) or not isinstance(r.item, str | Path):
        return pb
    path = Path(r.item)
    try:
        photo = read_image(path)
    except VitrinaError as e:  # replaced or removed since it was detected
        pb.error = str(e)
        return pb
    if ann_dir is not None:
        pb.annotated = save_new_image(
            annotate_photo(photo, found, classes), ann_dir / f"{path.stem}.jpg"
        )
    if crop_dir is not None and len(found):
        suffix = ".jpg" if path.suffix.lower() in (".jpg", ".jpeg") else ".png"
        pb.crops = crop_boxes(photo, found, classes, crop_dir, path.stem, suffix)
    return pb


def write_boxes(
    results: Iterable[PhotoBoxes],
    classes: Sequence[str],
    out: str | Path | None,
    *,
    fmt: str | None = None,
    meta: dict[str, Any] | None = None,
) -> tuple[PredictSummary, str]:
    """Collect ``results`` into JSON (``{"detector", "classes", "photos": [...]}``) or CSV (one
    row per box: ``photo, width, height, label, score, x1, y1, x2, y2``); written atomically to
    ``out`` (format from ``fmt`` or its suffix) or returned as text when ``out`` is None."""
    fmt = fmt or (Path(out).suffix.lstrip(".").lower() if out is not None else "json")
    if fmt not in ("json", "csv"):
        raise VitrinaError(f"{out}: write boxes as .json or .csv")
    summary = PredictSummary()
    records = []
    for pb in results:
        summary.photos += 1
        if pb.error:
            summary.failed.append(pb.error)
        if pb.detections is not None:
            summary.boxes += len(pb.detections)
            summary.per_class.update(
                classes[k] if 0 <= k < len(classes) else str(k)
                for k in pb.detections.labels.tolist()
            )
        summary.annotated += pb.annotated is not None
        summary.crops += len(pb.crops)
        records.append(pb.record(classes))
    if fmt == "json":
        text = json.dumps({**(meta or {}), "classes": list(classes), "photos": records}, indent=1)
        text += "\n"
    else:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(CSV_FIELDS)
        for rec in records:
            for b in rec["boxes"]:
                w.writerow(
                    [rec["photo"], rec["width"], rec["height"], b["label"], b["score"], *b["box"]]
                )
        text = buf.getvalue()
    if out is not None:
        atomic_write_text(Path(out), text)
    return summary, text
