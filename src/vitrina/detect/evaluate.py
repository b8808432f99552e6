"""``vitrina detect evaluate``: COCO mAP of a detector on annotated photos, with pictures.

The photos go through the detector (a run on the engine, or a detector that needs no
training) with every box it reports (no score floor: COCO's AP sweeps the scores itself);
pycocotools computes mAP@[.5:.95], mAP@.5, per-class AP and recall
(:func:`vitrina.evaluate.detection.coco_metrics`). The report folder gets ``metrics.json``,
``pr_curves.png`` (precision-recall per class at IoU 0.5) and ``worst.png``: the photos with
the most errors (missed or wrong boxes at IoU 0.5 among boxes scoring at least
``show_score``), true boxes dashed green, predicted ones in their class colour, red when wrong.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vitrina.data.annotations import AnnotatedSet, read_annotated
from vitrina.detect.detectors import PhotoDetector
from vitrina.detect.task import Detections
from vitrina.errors import DataError
from vitrina.evaluate.detection import DetectionMetrics, coco_metrics, photo_errors
from vitrina.io import atomic_write_text
from vitrina.report.boxes import BoxPanel, class_color, plot_pr_curves, write_box_sheet

__all__ = ["DetectionEvaluation", "evaluate_detector"]


@dataclass
class DetectionEvaluation:
    """The figures (``metrics``), the photos that could not be read (``failed``), the data's
    own problems (``data.problems``), and where the report went."""

    metrics: DetectionMetrics
    data: AnnotatedSet
    failed: list[str] = field(default_factory=list)
    worst: list[tuple[str, int]] = field(default_factory=list)  # (photo, errors)
    out: Path | None = None
    files: dict[str, Path] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.metrics.to_dict(),
            "data": str(self.data.root),
            "format": self.data.format,
            "unreadable": self.failed,
            "data_problems": self.data.problem_counts(),
            "worst": [{"photo": p, "errors": e} for p, e in self.worst],
        }


def _report_dir(out: str | Path) -> Path:
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out}: exists and is not empty; choose another --out (nothing written)")
    out.mkdir(parents=True, exist_ok=True)
    return out


def evaluate_detector(
    detector: PhotoDetector,
    data: str | Path | AnnotatedSet,
    *,
    out: str | Path | None = None,
    worst: int = 12,
    show_score: float | None = None,
    fmt: str | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> DetectionEvaluation:
    """Measure ``detector`` on the annotated photos ``data`` (any format), labels matched by
    class name (a box of a class the detector does not know is a data problem, skipped).

    ``out``: a new folder for the report (see the module docstring); ``worst``: photos on the
    sheet; ``show_score``: the score from which a box counts on the sheet (default: the
    detector's ``default_min_score``)."""
    s = (
        data
        if isinstance(data, AnnotatedSet)
        else read_annotated(data, fmt=fmt, classes=list(detector.classes))
    )
    report_dir = _report_dir(out) if out is not None else None
    items = [p.path for p in s.photos]
    gts, preds, used, failed = [], [], [], []
    for r in detector.detect(items, min_score=None, on_progress=on_progress):
        photo = s.photos[r.index]
        if not r.ok:
            failed.append(r.error or str(photo.path))
            continue
        found: Detections = r.value
        gts.append((photo.boxes, photo.labels))
        preds.append((found.boxes, found.scores, found.labels))
        used.append(photo)
    if not used:
        raise DataError(f"{s.root}: no photo could be read for the evaluation")
    metrics = coco_metrics(gts, preds, detector.classes)
    floor = detector.default_min_score if show_score is None else show_score
    errors = [photo_errors(g, p, min_score=floor) for g, p in zip(gts, preds, strict=True)]
    order = sorted(range(len(used)), key=lambda i: (-errors[i].errors, str(used[i].path)))
    worst_idx = [i for i in order[:worst] if errors[i].errors > 0]
    ev = DetectionEvaluation(
        metrics, s, failed, [(str(used[i].path), errors[i].errors) for i in worst_idx]
    )
    if report_dir is not None:
        ev.out = report_dir
        classes = detector.classes
        panels = []
        for i in worst_idx:
            g, p, e = gts[i], preds[i], errors[i]
            keep = p[1] >= floor
            names = [classes[k] for k in p[2][keep].tolist()]
            matched = e.matched_pred[keep]
            panels.append(
                BoxPanel(
                    str(used[i].path),
                    g[0],
                    [""] * len(g[0]),
                    p[0][keep],
                    [f"{n} {sc:.2f}" for n, sc in zip(names, p[1][keep].tolist(), strict=True)],
                    [
                        class_color(int(k)) if ok else (225, 30, 30)
                        for k, ok in zip(p[2][keep].tolist(), matched.tolist(), strict=True)
                    ],
                    f"{used[i].path.name}: {e.fn} missed, {e.fp} wrong",
                )
            )
        ev.files["worst"] = write_box_sheet(
            panels,
            report_dir / "worst.png",
            title=f"worst photos (boxes scoring >= {floor:g}; green dashed: true; red: wrong)",
        )
        ev.files["pr_curves"] = plot_pr_curves(
            metrics.pr50, metrics.ap50, report_dir / "pr_curves.png"
        )
        path = report_dir / "metrics.json"
        atomic_write_text(path, json.dumps(ev.to_dict() | {"pr50": metrics.pr50}, indent=1) + "\n")
        ev.files["metrics"] = path
    return ev
