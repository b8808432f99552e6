"""Detection metrics: COCO mAP@[.5:.95], mAP@.5, per-class AP and recall, precision-recall
curves — computed by pycocotools' ``COCOeval`` (the reference implementation), never by hand.

Inputs are arrays, one entry per photo: ground truth ``(boxes (n, 4) [x1, y1, x2, y2],
labels (n,))`` and predictions ``(boxes (m, 4), scores (m,), labels (m,))`` in the same
pixels (the photo's own, or the network input's: IoU does not care, COCO's small / medium /
large groups do). :func:`photo_errors` matches one photo's boxes at IoU 0.5 for reports
(which photos are worst); the metrics themselves are COCO's.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vitrina.errors import require

__all__ = ["DetectionMetrics", "PhotoErrors", "coco_metrics", "photo_errors"]

GroundTruth = tuple[np.ndarray, np.ndarray]
Prediction = tuple[np.ndarray, np.ndarray, np.ndarray]


@dataclass
class DetectionMetrics:
    """COCO's figures for a set of photos.

    ``mAP``: mean AP over IoU 0.50:0.05:0.95 (COCO's primary figure); ``mAP50`` at IoU 0.5;
    ``mAP75``; ``recall``: mean recall (at most 100 boxes a photo, IoU 0.5:0.95);
    per class (by name): ``ap``, ``ap50``, ``recall50`` (recall at IoU 0.5), ``gt`` (boxes);
    ``pr50``: per class the precision at COCO's 101 recall points at IoU 0.5 (``None`` for a
    class without ground truth). Classes without ground truth have ``nan`` figures and do not
    count in the means.
    """

    mAP: float
    mAP50: float
    mAP75: float
    recall: float
    classes: list[str]
    ap: dict[str, float] = field(default_factory=dict)
    ap50: dict[str, float] = field(default_factory=dict)
    recall50: dict[str, float] = field(default_factory=dict)
    gt: dict[str, int] = field(default_factory=dict)
    pr50: dict[str, list[float] | None] = field(default_factory=dict)
    photos: int = 0
    boxes: int = 0
    predictions: int = 0

    def to_dict(self, *, curves: bool = False) -> dict[str, Any]:
        def clean(v: float) -> float | None:
            return None if v != v else round(float(v), 6)

        d: dict[str, Any] = {
            "mAP": clean(self.mAP),
            "mAP50": clean(self.mAP50),
            "mAP75": clean(self.mAP75),
            "recall": clean(self.recall),
            "photos": self.photos,
            "boxes": self.boxes,
            "predictions": self.predictions,
            "per_class": {
                c: {
                    "ap": clean(self.ap[c]),
                    "ap50": clean(self.ap50[c]),
                    "recall50": clean(self.recall50[c]),
                    "boxes": self.gt[c],
                }
                for c in self.classes
            },
        }
        if curves:
            d["pr50"] = self.pr50
        return d


def _coco_gt(gts: Sequence[GroundTruth], num_classes: int) -> Any:
    COCO = require("pycocotools.coco", "detect", "COCO box metrics").COCO

    images, anns = [], []
    for i, (boxes, labels) in enumerate(gts, start=1):
        images.append({"id": i})
        for (x1, y1, x2, y2), label in zip(
            np.asarray(boxes, np.float64).reshape(-1, 4).tolist(),
            np.asarray(labels).reshape(-1).tolist(),
            strict=True,
        ):
            w, h = x2 - x1, y2 - y1
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i,
                    "category_id": int(label) + 1,
                    "bbox": [x1, y1, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
    coco = COCO()
    coco.dataset = {
        "images": images,
        "annotations": anns,
        "categories": [{"id": k + 1, "name": str(k)} for k in range(num_classes)],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def coco_metrics(
    gts: Sequence[GroundTruth],
    preds: Sequence[Prediction],
    classes: Sequence[str],
) -> DetectionMetrics:
    """COCO box metrics of ``preds`` against ``gts`` (one entry per photo, same order)."""
    COCOeval = require("pycocotools.cocoeval", "detect", "COCO box metrics").COCOeval

    if len(gts) != len(preds):
        raise ValueError(f"{len(gts)} ground truths but {len(preds)} predictions")
    classes = list(classes)
    k = len(classes)
    gt = _coco_gt(gts, k)
    dets = []
    for i, (boxes, scores, labels) in enumerate(preds, start=1):
        for (x1, y1, x2, y2), s, label in zip(
            np.asarray(boxes, np.float64).reshape(-1, 4).tolist(),
            np.asarray(scores).reshape(-1).tolist(),
            np.asarray(labels).reshape(-1).tolist(),
            strict=True,
        ):
            if 0 <= label < k:
                dets.append(
                    {
                        "image_id": i,
                        "category_id": int(label) + 1,
                        "bbox": [x1, y1, x2 - x1, y2 - y1],
                        "score": float(s),
                    }
                )
    n_boxes = len(gt.dataset["annotations"])
    nan = float("nan")
    empty = DetectionMetrics(
        0.0 if n_boxes else nan,
        0.0 if n_boxes else nan,
        0.0 if n_boxes else nan,
        0.0 if n_boxes else nan,
        classes,
        photos=len(gts),
        boxes=n_boxes,
    )
    counts = np.bincount(
        np.concatenate(
            [np.asarray(lb, np.int64).reshape(-1) for _, lb in gts] or [np.zeros(0)]
        ).astype(np.int64),
        minlength=k,
    )
    for c, name in enumerate(classes):
        empty.gt[name] = int(counts[c])
        has = counts[c] > 0
        empty.ap[name] = empty.ap50[name] = empty.recall50[name] = 0.0 if has else nan
        empty.pr50[name] = [0.0] * 101 if has else None
    if not dets or not n_boxes:
        empty.predictions = len(dets)
        return empty
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(dets)
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    precision = ev.eval[
        "precision"
    ]  # [T, R, K, A, M]: IoUs, recall points, classes, areas, maxDets
    recall = ev.eval["recall"]  # [T, K, A, M]
    m = DetectionMetrics(
        float(ev.stats[0]),
        float(ev.stats[1]),
        float(ev.stats[2]),
        float(ev.stats[8]),
        classes,
        photos=len(gts),
        boxes=n_boxes,
        predictions=len(dets),
    )
    for c, name in enumerate(classes):
        m.gt[name] = int(counts[c])
        p = precision[:, :, c, 0, -1]
        if counts[c] == 0:
            m.ap[name] = m.ap50[name] = m.recall50[name] = nan
            m.pr50[name] = None
            continue
        m.ap[name] = float(p[p > -1].mean()) if (p > -1).any() else 0.0
        p50 = p[0]
        m.ap50[name] = float(p50[p50 > -1].mean()) if (p50 > -1).any() else 0.0
        m.recall50[name] = float(max(recall[0, c, 0, -1], 0.0))
        m.pr50[name] = [round(float(max(v, 0.0)), 5) for v in p50]
    # COCO reports -1 when nothing is measurable; keep the documented nan/0 meaning.
    for attr in ("mAP", "mAP50", "mAP75", "recall"):
        if getattr(m, attr) < 0:
            setattr(m, attr, 0.0)
    return m


@dataclass(frozen=True)
class PhotoErrors:
    """One photo's boxes matched at IoU >= ``iou`` with the same class (greedy, best score
    first) among predictions scoring >= ``min_score``: ``tp``, ``fp`` (wrong or extra boxes),
    ``fn`` (missed boxes), and which predictions / ground truths matched."""

    tp: int
    fp: int
    fn: int
    matched_pred: np.ndarray
    matched_gt: np.ndarray

    @property
    def errors(self) -> int:
        return self.fp + self.fn


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area = lambda x: np.prod(np.clip(x[:, 2:] - x[:, :2], 0, None), axis=1)  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def photo_errors(
    gt: GroundTruth, pred: Prediction, *, iou: float = 0.5, min_score: float = 0.5
) -> PhotoErrors:
    """Match one photo's predictions to its ground truth (see :class:`PhotoErrors`)."""
    gboxes = np.asarray(gt[0], np.float64).reshape(-1, 4)
    glabels = np.asarray(gt[1]).reshape(-1)
    pboxes = np.asarray(pred[0], np.float64).reshape(-1, 4)
    pscores = np.asarray(pred[1], np.float64).reshape(-1)
    plabels = np.asarray(pred[2]).reshape(-1)
    keep = np.flatnonzero(pscores >= min_score)
    keep = keep[np.argsort(-pscores[keep], kind="stable")]
    matched_pred = np.zeros(len(pboxes), bool)
    matched_gt = np.zeros(len(gboxes), bool)
    if len(keep) and len(gboxes):
        ious = _iou(pboxes[keep], gboxes) * (plabels[keep][:, None] == glabels[None, :])
        for row, j in enumerate(keep):
            cand = np.where(matched_gt, -1.0, ious[row])
            best = int(cand.argmax())
            if cand[best] >= iou:
                matched_gt[best] = True
                matched_pred[j] = True
    tp = int(matched_pred.sum())
    return PhotoErrors(tp, len(keep) - tp, len(gboxes) - tp, matched_pred, matched_gt)
