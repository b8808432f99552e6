"""Boxes on the engine: letterboxing with the transform recorded, and boxes mapped back.

A detector sees its photo resized (and padded) to the network's input; its boxes are in those
pixels. The preparation records what it did (:class:`Placement`: scale and padding, and the
photo's own size) in the item's ``meta``, and the task's ``finish`` maps each box back to the
photo's own pixels with :meth:`Placement.to_photo`. The model output carrying boxes is named
``"boxes"``: for each input image a ``(N, 6)`` float tensor ``[x1, y1, x2, y2, score, label]``
in input pixels, ``N`` varying per image (a list of tensors, not one tensor). Backends are
compared on it by :func:`compare_boxes` (registered in ``OUTPUT_CHECKS``): the same number of
boxes per image scoring at least :data:`COMPARED_FROM`, matched boxes overlapping (IoU) and
scores close.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from vitrina.data.pixels import InputSpec, Normalize
from vitrina.engine.backends import OUTPUT_CHECKS
from vitrina.engine.tasks import Prepared
from vitrina.lazy import lazy_module

if TYPE_CHECKING:
    import torch
else:
    torch = lazy_module("torch")

__all__ = [
    "BOXES",
    "COMPARED_FROM",
    "Letterbox",
    "Placement",
    "box_iou",
    "compare_boxes",
]

#: The name of the output holding boxes (see the module docstring).
BOXES = "boxes"
#: Backends are compared on the boxes scoring at least this. Detectors answer down to 0.001
#: for COCO's mAP (``DetectorSpec.score_thresh``); below 0.05 dozens of near-tied boxes a
#: photo come and go with any rounding (another runtime, another batching), no user sees
#: them by default, and they move mAP by little.
COMPARED_FROM = 0.05


@dataclass(frozen=True)
class Placement:
    """Where a photo of ``photo_size`` (w, h) landed in the network input: scaled by
    ``scale`` (x, y), then shifted by ``pad`` (left, top) pixels."""

    photo_size: tuple[int, int]
    scale: tuple[float, float]
    pad: tuple[float, float]

    def to_photo(self, boxes: np.ndarray) -> np.ndarray:
        """``(N, 4+)`` boxes ``[x1, y1, x2, y2, ...]`` in input pixels -> the photo's own
        pixels, clipped to the photo (columns after the 4th are kept as they are)."""
        out = np.array(boxes, dtype=np.float32, copy=True).reshape(-1, boxes.shape[-1])
        (sx, sy), (px, py), (w, h) = self.scale, self.pad, self.photo_size
        out[:, [0, 2]] = np.clip((out[:, [0, 2]] - px) / sx, 0, w)
        out[:, [1, 3]] = np.clip((out[:, [1, 3]] - py) / sy, 0, h)
        return out

    def to_input(self, boxes: np.ndarray) -> np.ndarray:
        """The inverse of :meth:`to_photo` (photo pixels -> input pixels), e.g. for training
        targets."""
        out = np.array(boxes, dtype=np.float32, copy=True).reshape(-1, boxes.shape[-1])
        (sx, sy), (px, py) = self.scale, self.pad
        out[:, [0, 2]] = out[:, [0, 2]] * sx + px
        out[:, [1, 3]] = out[:, [1, 3]] * sy + py
        return out


class Letterbox:
    """Resize a photo to fit ``input_size`` keeping its aspect ratio, pad the rest with
    ``fill`` (centred), normalise; the :class:`Placement` goes into ``meta``. ``stretch=True``
    resizes to the input size without keeping the ratio (what some detectors train with)."""

    def __init__(self, pre: InputSpec, *, fill: int = 114, stretch: bool = False) -> None:
        self.h, self.w = pre.input_size
        self.fill = fill
        self.stretch = stretch
        self.normalize = Normalize(tuple(pre.mean), tuple(pre.std))
        self.mode = "L" if pre.channels == 1 else "RGB"

    def place(self, size: tuple[int, int]) -> Placement:
        w, h = size
        if self.stretch:
            return Placement((w, h), (self.w / w, self.h / h), (0.0, 0.0))
        s = min(self.w / w, self.h / h)
        nw, nh = max(1, round(w * s)), max(1, round(h * s))
        return Placement((w, h), (nw / w, nh / h), ((self.w - nw) // 2, (self.h - nh) // 2))

    def __call__(self, image: Image.Image, item: Any = None) -> Prepared:
        placement = self.place(image.size)
        (sx, sy), (px, py) = placement.scale, placement.pad
        w, h = image.size
        nw, nh = max(1, round(w * sx)), max(1, round(h * sy))
        canvas = Image.new(
            self.mode, (self.w, self.h), self.fill if self.mode == "L" else (self.fill,) * 3
        )
        canvas.paste(image.convert(self.mode).resize((nw, nh), Image.BILINEAR), (int(px), int(py)))
        # a tensor: detection tasks and training flip and stack their inputs in torch
        return Prepared(torch.from_numpy(self.normalize(canvas)[None]), placement)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(N, M)`` intersection over union of ``[x1, y1, x2, y2]`` boxes."""
    a, b = np.asarray(a, np.float64)[:, :4], np.asarray(b, np.float64)[:, :4]
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area = lambda x: np.prod(np.clip(x[:, 2:] - x[:, :2], 0, None), axis=1)  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def compare_boxes(ref: list[torch.Tensor], got: list[torch.Tensor]) -> dict[str, float]:
    """A backend's boxes against eager fp32's on the same batch, for :class:`Tolerance`:
    ``top1_agreement`` is the share of images with the same number of boxes whose boxes pair
    up (each eager box has a box of the same label at IoU >= 0.9); ``max_abs_diff`` the worst
    score difference of paired boxes; ``rel_mean_diff`` the mean of (1 - IoU) over pairs.
    Only the boxes scoring at least :data:`COMPARED_FROM` in each are compared."""
    same, worst_score, gaps = 0, 0.0, []
    for r, g in zip(ref, got, strict=True):
        r, g = np.asarray(r, np.float64).reshape(-1, 6), np.asarray(g, np.float64).reshape(-1, 6)
        r, g = r[r[:, 4] >= COMPARED_FROM], g[g[:, 4] >= COMPARED_FROM]
        if len(r) != len(g):
            continue
        if not len(r):
            same += 1
            continue
        iou = box_iou(r, g) * (r[:, None, 5] == g[None, :, 5])
        best = iou.argmax(axis=1)
        paired = iou[np.arange(len(r)), best]
        if (paired >= 0.9).all() and len(set(best.tolist())) == len(r):
            same += 1
        gaps += (1.0 - paired).tolist()
        worst_score = max(worst_score, float(np.abs(r[:, 4] - g[best, 4]).max()))
    n = max(len(ref), 1)
    return {
        "top1_agreement": same / n,
        "max_abs_diff": worst_score,
        "rel_mean_diff": float(np.mean(gaps)) if gaps else 0.0,
    }


OUTPUT_CHECKS[BOXES] = compare_boxes
