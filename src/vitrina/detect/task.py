"""Detection as an engine task: photos in, boxes in each photo's own pixels out.

The engine's decode workers letterbox each photo into the detector's input
(:class:`~vitrina.engine.Letterbox`, its :class:`~vitrina.engine.Placement` kept as the
item's ``meta``); the backend computes the ``boxes`` output (torchvision's score threshold and
non-maximum suppression included, so every backend returns final boxes); :meth:`finish` maps
each image's boxes back to its photo (:meth:`Placement.to_photo`, clipped to the photo) and
keeps those scoring at least ``min_score``.

``flip=True`` is test-time augmentation: each letterboxed photo also goes through the network
mirrored left-right (a second input row of the same item, so it rides in the same batches on
every backend); the mirrored view's boxes are mirrored back and the two views' answers fused
by :func:`fuse_views`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from vitrina.data.transforms import InputSpec
from vitrina.engine import BOXES, TASKS, Letterbox, Placement, Prepared, Task, box_iou

__all__ = ["FUSE_IOU", "LETTERBOX_FILL", "DetectionTask", "Detections", "fuse_views"]

#: Grey of the letterbox padding (training pads with the same value).
LETTERBOX_FILL = 114
#: Boxes of the same class from different views that overlap more than this are one object
#: (weighted boxes fusion's default, Solovyev et al. 2021).
FUSE_IOU = 0.55


def fuse_views(views: Sequence[np.ndarray], iou: float = FUSE_IOU) -> np.ndarray:
    """One answer from several views of a photo (test-time augmentation), each ``(N, 6)``
    rows ``[x1, y1, x2, y2, score, label]`` in the same pixels.

    Greedy, best score first: a box and every box of the same class overlapping it by more
    than ``iou`` (from any view, not yet taken) are one object. Its box is their
    score-weighted mean; its score the mean over the views of each view's best score in the
    group, 0 for a view that did not see it, so an object found in one view of two keeps half
    its score (weighted boxes fusion)."""
    rows = [np.asarray(v, np.float64).reshape(-1, 6) for v in views]
    view = np.concatenate([np.full(len(r), k) for k, r in enumerate(rows)] + [np.zeros(0, int)])
    all_rows = np.concatenate([*rows, np.zeros((0, 6))])
    order = np.argsort(-all_rows[:, 4], kind="stable")
    all_rows, view = all_rows[order], view[order]
    overlap = box_iou(all_rows, all_rows) if len(all_rows) else np.zeros((0, 0))
    taken = np.zeros(len(all_rows), bool)
    fused = []
    for i in range(len(all_rows)):
        if taken[i]:
            continue
        group = ~taken & (all_rows[:, 5] == all_rows[i, 5]) & (overlap[i] > iou)
        group[i] = True
        taken |= group
        g, w = all_rows[group], all_rows[group, 4]
        box = (g[:, :4] * w[:, None]).sum(0) / max(float(w.sum()), 1e-12)
        best = [float(w[view[group] == k].max(initial=0.0)) for k in range(len(rows))]
        fused.append([*box, sum(best) / max(len(rows), 1), all_rows[i, 5]])
    return np.asarray(fused, np.float32).reshape(-1, 6)


@dataclass(frozen=True)
class _Mirrored:
    """The meta of a photo letterboxed twice (as is, then mirrored): its placement and the
    network input's width (to mirror the second view's boxes back)."""

    placement: Placement
    width: int


class _MirroredLetterbox(Letterbox):
    """:class:`~vitrina.engine.Letterbox`, plus the letterboxed photo mirrored left-right as a
    second input row."""

    def __call__(self, image: Image.Image, item: Any = None) -> Prepared:
        p = super().__call__(image, item)
        both = p.inputs.repeat(2, 1, 1, 1)
        both[1:] = p.inputs.flip(-1)
        return Prepared(both, _Mirrored(p.meta, self.w))

    @staticmethod
    def mirror(rows: np.ndarray, width: int) -> np.ndarray:
        out = np.array(rows, np.float32).reshape(-1, 6)
        out[:, [0, 2]] = width - out[:, [2, 0]]
        return out


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

    def rows(self) -> np.ndarray:
        """``(N, 6)`` float32 rows ``[x1, y1, x2, y2, score, label]`` (:meth:`from_rows`'s)."""
        return np.concatenate(
            [self.boxes, self.scores[:, None], self.labels[:, None].astype(np.float32)], axis=1
        )

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
    boxes (the detector's own threshold applies first); ``flip``: also look at each photo
    mirrored and fuse the two answers (test-time augmentation: twice the network's work)."""

    min_score: float = 0.0
    flip: bool = False
    name: ClassVar[str] = "detection"
    output: ClassVar[str] = BOXES

    def image_mode(self, pre: InputSpec) -> str:
        return "RGB"

    def decode_side(self, pre: InputSpec) -> int | None:
        return None  # boxes are reported in the photo's full-resolution pixels

    def preparer(self, pre: InputSpec) -> Letterbox:
        if self.flip:
            return _MirroredLetterbox(pre, fill=LETTERBOX_FILL)
        return Letterbox(pre, fill=LETTERBOX_FILL)

    def finish(self, outputs: Any, counts: Sequence[int], metas: Sequence[Any]) -> list[Any]:
        results: list[Any] = []
        it = iter(outputs)
        for n, meta in zip(counts, metas, strict=True):
            placement = meta.placement if isinstance(meta, _Mirrored) else meta
            if n == 0:
                results.append(Detections.empty(placement.photo_size))
                continue
            views = [np.asarray(next(it), np.float32).reshape(-1, 6) for _ in range(n)]
            if isinstance(meta, _Mirrored):
                views[1] = _MirroredLetterbox.mirror(views[1], meta.width)
                rows = fuse_views(views)
            else:
                (rows,) = views
            photo = placement.to_photo(rows)
            area = (photo[:, 2] - photo[:, 0]) * (photo[:, 3] - photo[:, 1])
            photo = photo[(area > 0) & (photo[:, 4] >= self.min_score)]
            results.append(Detections.from_rows(photo, placement.photo_size))
        return results
