"""Metrics. They compute; they never print or plot."""

from vitrina.evaluate.classification import ClassificationReport, classification_report
from vitrina.evaluate.detection import DetectionMetrics, PhotoErrors, coco_metrics, photo_errors
from vitrina.evaluate.reid import ReidReport, reid_distances, reid_masks, reid_report
from vitrina.evaluate.rerank import k_reciprocal_neighbours, rerank_k_reciprocal
from vitrina.evaluate.verification import (
    OperatingPoint,
    VerificationReport,
    pair_distances,
    verification_report,
)

__all__ = [
    "ClassificationReport",
    "DetectionMetrics",
    "OperatingPoint",
    "PhotoErrors",
    "ReidReport",
    "VerificationReport",
    "classification_report",
    "coco_metrics",
    "k_reciprocal_neighbours",
    "pair_distances",
    "photo_errors",
    "reid_distances",
    "reid_masks",
    "reid_report",
    "rerank_k_reciprocal",
    "verification_report",
]
