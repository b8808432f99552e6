"""What an annotated photo set is once read, whatever its format.

Boxes are ``[x1, y1, x2, y2]`` float32 in the photo's own pixels (x right, y down, as
displayed: EXIF rotation applied), labels index the set's class list. A box is kept only if
it lies (after clipping to the photo) inside it with a positive area; everything else is a
:class:`Problem` that names the file and says what was skipped — real annotations have them,
and a run must go on where it can.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["PROBLEM_KINDS", "AnnotatedPhoto", "AnnotatedSet", "Problem"]

#: Kinds of problem, in the order reports list them.
PROBLEM_KINDS = (
    "unreadable photo",
    "corrupt annotation",
    "unknown class",
    "zero-size box",
    "box outside the photo",
    "clipped box",
    "size mismatch",
    "annotation without photo",
)


@dataclass(frozen=True)
class Problem:
    """One thing wrong in the data: ``file`` (the photo or annotation file), ``kind`` (one of
    :data:`PROBLEM_KINDS`) and ``message`` (one line for people, starting with the file)."""

    file: Path
    kind: str
    message: str

    def __str__(self) -> str:
        return self.message


@dataclass
class AnnotatedPhoto:
    """A photo and its (valid) boxes. ``rel``: its path relative to the photo root (how
    conversions name it); ``size``: ``(width, height)`` as displayed; ``annotation``: the file
    its boxes came from (``None`` for a photo without one: no objects)."""

    path: Path
    rel: str
    size: tuple[int, int]
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    annotation: Path | None = None

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, np.float32).reshape(-1, 4)
        self.labels = np.asarray(self.labels, np.int64).reshape(-1)
        if len(self.boxes) != len(self.labels):
            raise ValueError("boxes and labels differ in length")


@dataclass
class AnnotatedSet:
    """Photos with boxes, read from ``root`` in ``format`` (``coco``, ``yolo``, ``voc``).

    ``classes``: the class names labels index; ``problems``: everything skipped or fixed
    while reading (see :class:`Problem`); ``notes``: how the set was read (which class list,
    which layout), for reports."""

    root: Path
    format: str
    classes: list[str]
    photos: list[AnnotatedPhoto]
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def num_boxes(self) -> int:
        return sum(len(p.boxes) for p in self.photos)

    def boxes_per_class(self) -> dict[str, int]:
        c: Counter[int] = Counter()
        for p in self.photos:
            c.update(p.labels.tolist())
        return {name: c.get(i, 0) for i, name in enumerate(self.classes)}

    def photos_per_class(self) -> dict[str, int]:
        c: Counter[int] = Counter()
        for p in self.photos:
            c.update(set(p.labels.tolist()))
        return {name: c.get(i, 0) for i, name in enumerate(self.classes)}

    def empty_photos(self) -> list[AnnotatedPhoto]:
        return [p for p in self.photos if not len(p.boxes)]

    def problem_counts(self) -> dict[str, int]:
        c = Counter(p.kind for p in self.problems)
        return {k: c[k] for k in PROBLEM_KINDS if c.get(k)}

    def box_sizes(self) -> dict[str, Any]:
        """Widths, heights (pixels) and relative sides (box side / photo side) of every box,
        summarised, and COCO's size groups (small < 32², medium < 96², large) by area."""
        if not self.num_boxes:
            return {}
        rows = []
        for p in self.photos:
            if len(p.boxes):
                w = p.boxes[:, 2] - p.boxes[:, 0]
                h = p.boxes[:, 3] - p.boxes[:, 1]
                rel = np.sqrt(w * h / max(p.size[0] * p.size[1], 1))
                rows.append(np.stack([w, h, rel], 1))
        a = np.concatenate(rows)
        area = a[:, 0] * a[:, 1]

        def summary(v: np.ndarray) -> dict[str, float]:
            return {
                "min": float(v.min()),
                "median": float(np.median(v)),
                "max": float(v.max()),
            }

        return {
            "width": summary(a[:, 0]),
            "height": summary(a[:, 1]),
            "relative_side": summary(a[:, 2]),
            "coco_groups": {
                "small": int((area < 32**2).sum()),
                "medium": int(((area >= 32**2) & (area < 96**2)).sum()),
                "large": int((area >= 96**2).sum()),
            },
        }

    def to_dict(self) -> dict[str, Any]:
        """The inspection report as JSON-ready data."""
        return {
            "root": str(self.root),
            "format": self.format,
            "classes": self.classes,
            "photos": len(self.photos),
            "boxes": self.num_boxes,
            "boxes_per_class": self.boxes_per_class(),
            "photos_per_class": self.photos_per_class(),
            "empty_photos": [p.rel for p in self.empty_photos()],
            "box_sizes": self.box_sizes(),
            "problem_counts": self.problem_counts(),
            "problems": [
                {"file": str(p.file), "kind": p.kind, "message": p.message} for p in self.problems
            ],
            "notes": self.notes,
        }
