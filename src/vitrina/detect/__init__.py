"""Detection: find every product and person in a photo.

Annotated photos (COCO, YOLO, VOC: :mod:`vitrina.data.annotations`) train torchvision's
detectors over any zoo backbone (:func:`train_detector`); a run, or a detector that needs no
training (OpenCV's HOG people detector, dlib's face detectors), finds boxes in photos through
one interface (:func:`load_detector`); :func:`evaluate_detector` measures COCO mAP;
:func:`predict_photos` writes boxes, annotated copies and crops.
"""

from vitrina.detect.detectors import (
    DETECTORS,
    ClassicDetector,
    PhotoDetector,
    RunDetector,
    load_detector,
)
from vitrina.detect.evaluate import DetectionEvaluation, evaluate_detector
from vitrina.detect.predict import (
    DetectionResults,
    PhotoBoxes,
    PredictSummary,
    detect,
    predict_photos,
    write_boxes,
)
from vitrina.detect.task import Detections, DetectionTask, fuse_views
from vitrina.detect.train import DetectTrainConfig, train_detector

__all__ = [
    "DETECTORS",
    "ClassicDetector",
    "DetectTrainConfig",
    "DetectionEvaluation",
    "DetectionResults",
    "DetectionTask",
    "Detections",
    "PhotoBoxes",
    "PhotoDetector",
    "PredictSummary",
    "RunDetector",
    "detect",
    "evaluate_detector",
    "fuse_views",
    "load_detector",
    "predict_photos",
    "train_detector",
    "write_boxes",
]
