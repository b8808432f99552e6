"""What ``vitrina detect train`` fits when it is not told: the network input
(:func:`fit_input_size`) and the overlap at which non-maximum suppression takes two boxes of a
class for one object (:func:`fit_nms_iou`), both to the training photos, and the temperature
of the box head's class scores, to the validation photos after training
(:func:`fit_score_temperature`). Each returns its choice and a sentence saying why, which the
run records and the command prints."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from vitrina.data.annotations import AnnotatedPhoto
from vitrina.engine import box_iou
from vitrina.models.detection import TEMPERED_HEADS

#: The input ``detect train`` fits to the photos when ``--input-size`` is not given: their
#: median longer side, rounded up to a multiple of 32, within these bounds.
FIT_INPUT_MIN, FIT_INPUT_MAX = 128, 320


def fit_input_size(photos: Sequence[AnnotatedPhoto]) -> tuple[tuple[int, int], str]:
    """``((side, side), reason)``: the network input for these training photos when none is
    given. Their median longer side rounded up to a multiple of 32, between
    :data:`FIT_INPUT_MIN` and :data:`FIT_INPUT_MAX`: photos are not enlarged beyond that
    rounding (or the floor), and large ones are letterboxed into 320 as before. Enlarging
    adds computation, not detail: on 224x224 grocery photos (``benchmarks/detect.py``, 30
    minutes on 2 cores) Faster R-CNN at 224 trained 20 epochs to mAP@.5 0.670, at 320 13
    epochs to 0.624."""
    sides = sorted(max(p.size) for p in photos if min(p.size) > 0)
    if not sides:
        side = FIT_INPUT_MAX
        return (side, side), f"--input-size {side}x{side}: the photos' sizes are unknown"
    median = sides[len(sides) // 2]
    side = min(FIT_INPUT_MAX, max(FIT_INPUT_MIN, -(-median // 32) * 32))
    why = (
        "not enlarged past the photos' own size"
        if side < FIT_INPUT_MAX
        else f"letterboxed into at most {FIT_INPUT_MAX}"
    )
    return (side, side), (
        f"--input-size {side}x{side}: fitted to the training photos (median longer side "
        f"{median} px; {why}); give --input-size to choose"
    )


#: The overlaps (IoU) :func:`fit_nms_iou` chooses from, lowest first. The top is torchvision's
#: default (0.5), kept wherever objects of a class overlap (people in a crowd); the floor the
#: lowest measured.
NMS_IOU_CHOICES = (0.3, 0.35, 0.4, 0.45, 0.5)
#: The share of training boxes that may overlap another box of their class by more than the
#: chosen IoU (objects that suppression could remove, were they found exactly).
NMS_FIT_SHARE = 0.01
#: Fewer training boxes than this say too little about how objects overlap: torchvision's 0.5.
NMS_FIT_MIN_BOXES = 100


def class_overlaps(photos: Sequence[AnnotatedPhoto]) -> np.ndarray:
    """For each box of ``photos``, the largest IoU with another box of its class in its photo
    (0 for a box alone in its class)."""
    out: list[np.ndarray] = []
    for p in photos:
        n = len(p.boxes)
        if n < 2:
            out.append(np.zeros(n))
            continue
        iou = box_iou(p.boxes, p.boxes)
        np.fill_diagonal(iou, 0.0)
        iou *= p.labels[:, None] == p.labels[None, :]
        out.append(iou.max(axis=1))
    return np.concatenate([*out, np.zeros(0)])


def fit_nms_iou(photos: Sequence[AnnotatedPhoto]) -> tuple[float, str]:
    """``(iou, reason)``: the overlap above which non-maximum suppression keeps only the best
    of two boxes of a class, fitted to the training boxes when ``--nms-iou`` is not given.

    The lowest of :data:`NMS_IOU_CHOICES` that at most :data:`NMS_FIT_SHARE` of the training
    boxes exceed with another box of their class: where objects of a class never overlap much
    (products side by side), a second box half over the first is a duplicate and goes; where
    they do (a crowd), torchvision's 0.5 stays. Measured on the groceries' held-out photos
    (``benchmarks/detect.py``; 0.3% of the training boxes overlap another of their class by
    more than 0.3): 0.3 instead of 0.5 raised mAP@.5 on each of nine Faster R-CNN runs, by
    0.3 to 2.4 points (median 1.2; e.g. 0.713 -> 0.725), and mAP@[.5:.95] by 0.2 to 1.5; with
    test-time flips and scales 0.7505 -> 0.754, 0.743 -> 0.754, 0.731 -> 0.738,
    0.725 -> 0.744 and 0.743 -> 0.74996.
    """
    top = NMS_IOU_CHOICES[-1]
    overlaps = class_overlaps(photos)
    if len(overlaps) < NMS_FIT_MIN_BOXES:
        return top, (
            f"--nms-iou {top:g}: {len(overlaps)} training boxes are too few to tell how "
            f"objects overlap (torchvision's default); give --nms-iou to choose"
        )
    for iou in NMS_IOU_CHOICES:
        share = float((overlaps > iou).mean())
        if share <= NMS_FIT_SHARE:
            break
    return iou, (
        f"--nms-iou {iou:g}: fitted to the training boxes ({100 * share:.1f}% of them overlap "
        f"another box of their class by more); give --nms-iou to choose"
    )


#: The class-score temperature of a Faster R-CNN run (``DetectorSpec.score_temperature``) when
#: it has no validation photos to fit one on, and the first tried when it has. Its box head
#: learns with label smoothing (``BOX_LABEL_SMOOTHING``), which keeps the class logits close;
#: dividing them by 0.7 before the softmax orders each class's boxes by how far the class leads.
#: Measured on the groceries' held-out photos (``benchmarks/detect.py``, seven runs of the
#: default recipe, the same weights scored at 1 and at 0.7): mAP@.5 +0.5 to +1.3 points on
#: each as they are; with test-time flips and scales +0.4 to +1.1 on five, unchanged on two
#: (mean 0.748 -> 0.753); photos zoomed out or in: no loss. 0.5 scored about the same and
#: drops more weak boxes.
DEFAULT_SCORE_TEMPERATURE = 0.7
#: The temperatures :func:`fit_score_temperature` tries on the validation photos.
SCORE_TEMPERATURE_CHOICES = (0.7, 1.0, 0.85, 0.6, 0.5)
#: Fewer validation boxes than this cannot rank the temperatures: the default stays.
TEMPERATURE_FIT_MIN_BOXES = 100


def fit_score_temperature(
    validation_map: Callable[[float], float], val_boxes: int
) -> tuple[float, str, dict[float, float]]:
    """``(temperature, reason, tried)``: the class-score temperature of a Faster R-CNN run,
    fitted on its validation photos after training when ``--score-temperature`` is not given.

    ``validation_map(t)`` is the validation mAP@[.5:.95] with the boxes scored at ``t`` (the
    metric the run picks its epoch by); the best of :data:`SCORE_TEMPERATURE_CHOICES` is kept,
    a tie going to the one tried first (:data:`DEFAULT_SCORE_TEMPERATURE`). With fewer than
    :data:`TEMPERATURE_FIT_MIN_BOXES` validation boxes the default stays untried."""
    default = DEFAULT_SCORE_TEMPERATURE
    if val_boxes < TEMPERATURE_FIT_MIN_BOXES:
        return (
            default,
            (
                f"--score-temperature {default:g}: {val_boxes} validation boxes are too few to "
                "choose one (the default); give --score-temperature to choose"
            ),
            {},
        )
    tried = {t: float(validation_map(t)) for t in SCORE_TEMPERATURE_CHOICES}
    best = max(tried, key=tried.__getitem__)  # the first of equals: the order tried
    listed = ", ".join(f"{t:g}: {v:.3f}" for t, v in sorted(tried.items()))
    return (
        best,
        (
            f"--score-temperature {best:g}: fitted on {val_boxes} validation boxes (mAP@[.5:.95] "
            f"at {listed}); give --score-temperature to choose"
        ),
        tried,
    )


def default_score_temperature(head: str) -> float:
    """What a run of ``head`` scores its boxes at before any fitting: the default for Faster
    R-CNN's softmax box head, 1 (the scores as they are) for every other head."""
    return DEFAULT_SCORE_TEMPERATURE if head in TEMPERED_HEADS else 1.0
