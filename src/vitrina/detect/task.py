"""Detection as an engine task: photos in, boxes in each photo's own pixels out.

The engine's decode workers letterbox each photo into the detector's input
(:class:`~vitrina.engine.Letterbox`, its :class:`~vitrina.engine.Placement` kept as the
item's ``meta``); the backend computes the ``boxes`` output (torchvision's score threshold and
non-maximum suppression included, so every backend returns final boxes); :meth:`finish` maps
each image's boxes back to its photo (:meth:`Placement.to_photo`, clipped to the photo) and
keeps those scoring at least ``min_score``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from vitrina.data.transforms import InputSpec
from vitrina.engine import BOXES, TASKS, Letterbox, Task

__all__ = ["LETTERBOX_FILL", "DetectionTask", "Detections"]

#: Grey of the letterbox padding (training pads with the same value).
LETTERBOX_FILL = 114


@dataclass(frozen=True)
class Detections:
    """The boxes found in one photo, best score first.

    ``boxes``: ``(N, 4)`` float32 ``[x1, y1, x2, y2]`` in the photo's own pixels (x right,
    y down; right/bottom exclusive), clipped to it; ``scores``: ``(N,)``; ``labels``: ``(N,)``
    class indices; ``size``: the photo's ``(width, height)``."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    size: tuple[int, int] = (0, 0)
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "boxes", np.asarray(self.boxes, np.float32).reshape(-1, 4))
        object.__setattr__(self, "scores", np.asarray(self.scores, np.float32).reshape(-1))
        object.__setattr__(self, "labels", np.asarray(self.labels, np.int64).reshape(-1))
        order = np.argsort(-self.scores, kind="stable")
        if len(order) and (order != np.arange(len(order))).any():
            for name in ("boxes", "scores", "labels"):
                object.__setattr__(self, name, getattr(self, name)[order])

    def __len__(self) -> int:
        return len(self.scores)

    @classmethod
    def empty(cls, size: tuple[int, int] = (0, 0)) -> Detections:
        return cls(np.zeros((0, 4)), np.zeros(0), np.zeros(0), size)

    @classmethod
    def from_rows(cls, rows: np.ndarray, size: tuple[int, int]) -> Detections:
        """From ``(N, 6)`` rows ``[x1, y1, x2, y2, score, label]``."""
        rows = np.asarray(rows, np.float32).reshape(-1, 6)
        return cls(rows[:, :4], rows[:, 4], np.rint(rows[:, 5]).astype(np.int64), size)

    def above(self, min_score: float) -> Detections:
        """Only the boxes scoring at least ``min_score``."""
        keep = self.scores >= min_score
        return Detections(self.boxes[keep], self.scores[keep], self.labels[keep], self.size)

    def records(self, classes: Sequence[str] | None) -> list[dict[str, Any]]:
        """One dict per box: ``label`` (name), ``class_index``, ``score``, ``box`` (x1, y1, x2,
        y2 rounded to 0.1 px)."""
        out = []
        for box, score, label in zip(self.boxes, self.scores, self.labels, strict=True):
            name = (
                classes[label] if classes is not None and 0 <= label < len(classes) else str(label)
            )
            out.append(
                {
                    "label": name,
                    "class_index": int(label),
                    "score": round(float(score), 5),
                    "box": [round(float(v), 1) for v in box],
                }
            )
        return out


@TASKS.register("detection")
@dataclass(frozen=True)
class DetectionTask(Task):
    """Boxes of each photo (each result a :class:`Detections`); ``min_score``: drop weaker
    boxes (the detector's own threshold applies first)."""

    min_score: float = 0.0
    name: ClassVar[str] = "detection"
    output: ClassVar[str] = BOXES

    def image_mode(self, pre: InputSpec) -> str:
        return "RGB"

    def decode_side(self, pre: InputSpec) -> int | None:
        return None  # boxes are reported in the photo's full-resolution pixels

    def preparer(self, pre: InputSpec) -> Letterbox:
        return Letterbox(pre, fill=LETTERBOX_FILL)

    def finish(self, outputs: Any, counts: Sequence[int], metas: Sequence[Any]) -> list[Any]:
        results: list[Any] = []
        it = iter(outputs)
        for n, placement in zip(counts, metas, strict=True):
            if n == 0:
                results.append(Detections.empty(placement.photo_size))
                continue
            rows = np.asarray(next(it), np.float32).reshape(-1, 6)
            photo = placement.to_photo(rows)
            area = (photo[:, 2] - photo[:, 0]) * (photo[:, 3] - photo[:, 1])
            photo = photo[(area > 0) & (photo[:, 4] >= self.min_score)]
            results.append(Detections.from_rows(photo, placement.photo_size))
        return results
