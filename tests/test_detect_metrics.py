"""COCO detection metrics (pycocotools) on cases whose answer is known by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vitrina.evaluate.detection import coco_metrics, photo_errors

CLASSES = ["can", "box", "bottle"]
# COCO interpolates precision at 101 recall points: recall r reached with precision 1 and
# nothing beyond gives AP = (floor(100 r) + 1) / 101.
HALF = 51 / 101


def _gt():
    return [
        (np.array([[10, 10, 60, 60], [100, 100, 180, 160]], float), np.array([0, 0])),
        (np.array([[20, 30, 120, 90]], float), np.array([1])),
    ]


def _pred(boxes, scores, labels):
    return (np.array(boxes, float).reshape(-1, 4), np.array(scores, float), np.array(labels))


def test_perfect_predictions_score_one() -> None:
    gts = _gt()
    preds = [_pred(b, np.ones(len(b)), lab) for b, lab in gts]
    m = coco_metrics(gts, preds, CLASSES)
    assert m.mAP == pytest.approx(1.0) and m.mAP50 == pytest.approx(1.0)
    assert m.ap["can"] == pytest.approx(1.0) and m.recall50["box"] == pytest.approx(1.0)
    assert math.isnan(m.ap["bottle"]) and m.gt == {"can": 2, "box": 1, "bottle": 0}
    assert m.pr50["bottle"] is None and m.pr50["can"][-1] == pytest.approx(1.0)
    assert m.to_dict()["per_class"]["bottle"]["ap"] is None  # nan is not valid JSON


def test_half_found_a_wrong_class_and_nothing() -> None:
    gts = _gt()
    preds = [
        _pred([[10, 10, 60, 60], [300, 300, 340, 340]], [0.9, 0.8], [0, 2]),  # 1 of 2 cans
        _pred([[20, 30, 120, 90]], [0.7], [0]),  # the box, called a can
    ]
    m = coco_metrics(gts, preds, CLASSES)
    # can: its 1st prediction right (p=1 at r=0.5); the box called "can" is a false positive
    # ranked below it, so precision 1 holds up to recall 0.5.
    assert m.ap50["can"] == pytest.approx(HALF, abs=1e-6)
    assert m.recall50["can"] == pytest.approx(0.5)
    assert m.ap50["box"] == 0.0 and m.recall50["box"] == 0.0
    assert m.mAP50 == pytest.approx(HALF / 2, abs=1e-6)  # bottle has no ground truth: left out
    empty = coco_metrics(gts, [_pred([], [], []), _pred([], [], [])], CLASSES)
    assert empty.mAP == 0.0 and empty.ap["can"] == 0.0 and empty.predictions == 0


def test_localisation_counts_over_the_iou_thresholds() -> None:
    gts = [(np.array([[0, 0, 100, 100]], float), np.array([1]))]
    # IoU 0.58: a hit at thresholds 0.50 and 0.55, a miss at 0.60 and above.
    shifted = _pred([[0, 0, 100, 58]], [0.9], [1])
    m = coco_metrics(gts, [shifted], CLASSES)
    assert m.ap50["box"] == pytest.approx(1.0)
    assert m.ap["box"] == pytest.approx(2 / 10, abs=1e-6)
    assert m.mAP75 == 0.0


def test_photo_errors_match_greedily_by_score() -> None:
    gt = (np.array([[0, 0, 10, 10], [20, 20, 30, 30]], float), np.array([0, 1]))
    pred = _pred(
        [[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60]],
        [0.9, 0.8, 0.7, 0.3],
        [0, 0, 0, 1],
    )
    e = photo_errors(gt, pred, min_score=0.5)
    # 1st matches box 0; 2nd is a duplicate (fp); 3rd has the wrong class (fp); 4th too weak.
    assert (e.tp, e.fp, e.fn) == (1, 2, 1) and e.errors == 3
    assert e.matched_pred.tolist() == [True, False, False, False]
    assert e.matched_gt.tolist() == [True, False]
