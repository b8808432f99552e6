"""Boxes from a detector, named by a classifier: the two-stage recipe of a store's shelves.

A detector learns *where* products are from a few hundred annotated photos; telling 25 (or
2,500) look-alike packets apart is a classifier's job, and a classifier sees each box at its
own full resolution, where the detector sees it pooled to 7x7 from a shrunk photo. The
classifier is any classification run (``vitrina data crops`` turns annotated photos into its
training folders; ``vitrina train`` fits it) and its classes become the detector's.

For each photo: the detector's boxes scoring at least ``floor``, merged across classes
(greedy NMS at ``merge_iou``: one box per object, whatever the detector called it), the best
``max_boxes`` of them cut out of the photo (widened by ``margin`` of their side) and
classified; each box is then reported once per class among its ``top_k``, scored box score x
class probability, so a box the classifier hesitates on still counts for its runner-up
(COCO's AP rewards that, and ``--min-score`` hides it).

When the detector knows some of the classifier's classes by name (a detector trained on the
same annotations), its own opinion is not thrown away: the scores it gave the merged box's
classes (the boxes merged into it, at least ``1/100`` for a class it did not report) and the
classifier's probabilities are multiplied and renormalised, the product of two experts with
no weight to tune. Measured on groceries (``benchmarks/detect.py --classifier``): a linear
probe that names 78% of true crops, used alone, lowered a Faster R-CNN's mAP@.5 from 0.580
to 0.525 (better on some classes, worse on others); the product takes the better of both.
A one-class detector ("product") has no opinion on the classes, and the classifier decides.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torchvision.ops import box_iou, nms

from vitrina.classify import Classifier
from vitrina.data.annotations.crops import crop_box
from vitrina.detect.task import Detections
from vitrina.engine import Region, TaskResult, as_items, load_item
from vitrina.errors import VitrinaError

if TYPE_CHECKING:  # detectors.load_detector builds this class
    from vitrina.detect.detectors import PhotoDetector

__all__ = ["RelabeledDetector"]


class RelabeledDetector:
    """``detector``'s boxes with ``classifier``'s labels (see the module)."""

    score_kind = "probability"

    def __init__(
        self,
        detector: PhotoDetector,
        classifier: Classifier,
        *,
        top_k: int = 3,
        margin: float = 0.1,
        max_boxes: int = 30,
        floor: float = 0.05,
        merge_iou: float = 0.7,
        backend: str = "auto",
        device: str = "auto",
        batch_size: int = 32,
    ) -> None:
        for name, value, ok in (
            ("top_k", top_k, top_k >= 1),
            ("margin", margin, 0 <= margin <= 1),
            ("max_boxes", max_boxes, max_boxes >= 1),
            ("floor", floor, 0 <= floor < 1),
            ("merge_iou", merge_iou, 0 < merge_iou <= 1),
        ):
            if not ok:
                raise VitrinaError(f"{name} {value!r} is out of range")
        self.detector, self.classifier = detector, classifier
        self.classes = list(classifier.classes)
        self.default_min_score = float(getattr(detector, "default_min_score", 0.5))
        self.top_k, self.margin, self.max_boxes = top_k, margin, max_boxes
        self.floor, self.merge_iou = floor, merge_iou
        self._engine_kw = dict(backend=backend, device=device, batch_size=batch_size)
        where = {c: i for i, c in enumerate(self.classes)}
        #: the classifier's index of each detector class (-1: a class it does not know)
        self._shared = np.array([where.get(c, -1) for c in detector.classes], np.int64)

    def describe(self) -> str:
        eng = self.classifier.last_engine
        how = f" ({eng.describe()})" if eng is not None else ""
        name = self.classifier.source or getattr(self.classifier.model, "arch", "classifier")
        return f"{self.detector.describe()}, boxes named by {name}{how}"

    def _boxes(self, found: Detections) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One box per object: the detector's boxes above the floor, merged across its
        classes, best first, at most ``max_boxes``; with each, the detector's opinion on the
        classifier's classes (``(N, C)``, rows summing to 1; uniform where it has none)."""
        keep = found.scores >= self.floor
        boxes, scores, labels = found.boxes[keep], found.scores[keep], found.labels[keep]
        n_cls = len(self.classes)
        if not len(boxes):
            return boxes, scores, np.zeros((0, n_cls), np.float32)
        tb = torch.from_numpy(boxes)
        kept = nms(tb, torch.from_numpy(scores), self.merge_iou).numpy()[: self.max_boxes]
        opinion = np.full((len(kept), n_cls), 0.01, np.float32)
        overlap = box_iou(tb[kept], tb).numpy() >= self.merge_iou
        known = (labels >= 0) & (labels < len(self._shared))
        shared = np.where(known, self._shared[np.where(known, labels, 0)], -1)
        for i in range(len(kept)):
            for j in np.flatnonzero(overlap[i] & (shared >= 0)):
                opinion[i, shared[j]] = max(opinion[i, shared[j]], scores[j])
        return boxes[kept], scores[kept], opinion / opinion.sum(1, keepdims=True)

    def _named(self, pending: list[tuple[TaskResult, Any, np.ndarray, np.ndarray, np.ndarray]]):
        regions, owners = [], []
        for j, (_, photo, boxes, _, _) in enumerate(pending):
            if photo is None:
                continue
            for k, box in enumerate(boxes):
                rect = crop_box(photo.size, box, self.margin)
                if rect is not None:
                    regions.append(Region(photo, rect))
                    owners.append((j, k))
        index = {c: i for i, c in enumerate(self.classes)}
        probs: dict[tuple[int, int], np.ndarray] = {}
        if regions:
            preds = self.classifier.iter_predict(
                regions, top_k=len(self.classes), num_workers=0, **self._engine_kw
            )
            for owner, pred in zip(owners, preds, strict=True):
                if pred.error is None:
                    p = np.zeros(len(self.classes), np.float32)
                    for name, v in pred.top:
                        p[index[name]] = v
                    probs[owner] = p
        for j, (r, _, boxes, scores, opinions) in enumerate(pending):
            if not r.ok:
                yield r
                continue
            rows = []
            for k, (box, score) in enumerate(zip(boxes, scores, strict=True)):
                if (j, k) not in probs:
                    continue
                fused = probs[(j, k)] * opinions[k]
                fused /= max(float(fused.sum()), 1e-12)
                for c in np.argsort(-fused, kind="stable")[: self.top_k]:
                    if float(score) * fused[c] >= self.floor:
                        rows.append((*box, float(score) * fused[c], int(c)))
            found = Detections.from_rows(np.array(rows, np.float32), r.value.size)
            yield TaskResult(r.index, r.item, found)

    def detect(
        self,
        items: Iterable[Any],
        *,
        min_score: float | None = None,
        on_progress: Callable[[int], None] | None = None,
    ) -> Iterator[TaskResult]:
        """One result per photo, in order, as :meth:`PhotoDetector.detect`; boxes scoring
        under ``min_score`` (box score x class probability) are left out."""
        items = as_items(items)[0]
        batch = int(self._engine_kw["batch_size"])
        pending: list[tuple[TaskResult, Any, np.ndarray, np.ndarray, np.ndarray]] = []
        none = np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, 0), np.float32)
        waiting = 0
        floor = max(self.floor, min_score or 0.0)
        for r in self.detector.detect(items, min_score=floor, on_progress=on_progress):
            if not r.ok:
                pending.append((r, None, *none))
            else:
                boxes, scores, opinions = self._boxes(r.value)
                try:
                    photo = load_item(r.item) if len(boxes) else None
                except VitrinaError as e:  # read once by the detector: changed since
                    r = TaskResult(r.index, r.item, error=str(e), reason=str(e))
                    photo = None
                pending.append((r, photo, boxes, scores, opinions))
                waiting += len(boxes)
            if waiting >= batch:
                yield from self._finish(pending, min_score)
                pending, waiting = [], 0
        yield from self._finish(pending, min_score)

    def _finish(self, pending: list, min_score: float | None) -> Iterator[TaskResult]:
        for r in self._named(pending):
            if r.ok and min_score is not None:
                r = TaskResult(r.index, r.item, r.value.above(float(min_score)))
            yield r
