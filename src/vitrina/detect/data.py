"""Annotated photos as training batches: box-aware augmentation, the engine's letterbox.

Each photo is decoded with the safe reader, augmented together with its boxes by
``torchvision.transforms.v2`` (``tv_tensors.BoundingBoxes``: a flip moves the boxes, a zoom-out
shrinks them, boxes cut away are dropped by ``SanitizeBoundingBoxes``), then letterboxed by
the same :class:`~vitrina.engine.Letterbox` the engine uses at inference (same scale, padding
and fill), its boxes mapped into input pixels with the recorded
:class:`~vitrina.engine.Placement`. An unreadable photo is an error of its batch (recorded
once by the training loop, the run goes on).
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from vitrina.data import Batch
from vitrina.data.annotations import AnnotatedPhoto
from vitrina.data.transforms import InputSpec
from vitrina.detect.task import LETTERBOX_FILL
from vitrina.engine import Letterbox
from vitrina.errors import ImageReadError
from vitrina.io import read_image

__all__ = [
    "BOX_AUGMENTS",
    "MOVING_AUGMENTS",
    "BoxAugment",
    "DetectionBatch",
    "PhotoBoxes",
    "ScaledBatches",
    "collate_boxes",
    "mosaic",
    "scaled_sizes",
    "split_photos",
]

#: ``none``: the letterboxed photo as it is; ``flip``: mirrored half of the time (the only
#: augmentation that keeps cached features valid, see :mod:`vitrina.detect.cache`); ``light``:
#: flips, colour jitter and an occasional zoom-out (smaller objects); ``strong``: also random
#: shifts and rescaling; ``mosaic``: ``light``, and half of the photos replaced by a mosaic of
#: four (:func:`mosaic`).
BOX_AUGMENTS = ("none", "flip", "light", "strong", "mosaic")

#: The augmentations that move pixels (no cached features; multi-scale training by default).
MOVING_AUGMENTS = ("light", "strong", "mosaic")

#: Share of the training photos ``--augment mosaic`` replaces by a mosaic of four.
MOSAIC_SHARE = 0.5
#: The mosaic's window is this many times one photo's size (drawn uniformly): its products
#: are shown at 1/1.5 to 1 times their size.
MOSAIC_WINDOW = (1.0, 1.5)
#: A box cut by the window is kept when at least this share of its area is inside it.
MOSAIC_VISIBLE = 0.3


class BoxAugment:
    """Box-aware augmentation of a PIL photo with its boxes (picklable for loader workers)."""

    def __init__(self, kind: str) -> None:
        from torchvision.transforms import v2

        if kind not in BOX_AUGMENTS:
            raise ValueError(f"augment must be one of {BOX_AUGMENTS}, not {kind!r}")
        self.kind = kind
        fill = LETTERBOX_FILL  # the letterbox's grey (there are no masks to fill)
        steps: list[Any] = []
        if kind in MOVING_AUGMENTS:
            steps += [
                v2.RandomPhotometricDistort(p=0.5),
                v2.RandomApply([v2.RandomZoomOut(fill=fill, side_range=(1.0, 1.8))], p=0.25),
            ]
        if kind == "strong":
            affine = v2.RandomAffine(degrees=0, translate=(0.1, 0.1), scale=(0.75, 1.25), fill=fill)
            steps.append(v2.RandomApply([affine], p=0.5))
        steps += [
            v2.RandomHorizontalFlip(p=0.5),
            v2.ClampBoundingBoxes(),
            v2.SanitizeBoundingBoxes(min_size=2.0),
        ]
        self.transform = v2.Compose(steps)

    def __call__(
        self, image: Image.Image, boxes: np.ndarray, labels: np.ndarray
    ) -> tuple[Image.Image, np.ndarray, np.ndarray]:
        from torchvision import tv_tensors

        w, h = image.size
        target = {
            "boxes": tv_tensors.BoundingBoxes(
                torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                format="XYXY",
                canvas_size=(h, w),
            ),
            "labels": torch.as_tensor(labels, dtype=torch.int64).reshape(-1),
        }
        out, t = self.transform(image, target)
        return out, t["boxes"].numpy().reshape(-1, 4), t["labels"].numpy().reshape(-1)


class PhotoBoxes(Dataset):
    """Annotated photos -> ``(index, input (C, H, W), target, error)`` with the target's
    ``boxes`` in input pixels and ``labels``; an unreadable photo gives ``(index, None, None,
    message)``.

    An item asked for as ``(index, (height, width))`` (see :class:`ScaledBatches`) is
    letterboxed to that input size instead of the model's."""

    def __init__(
        self, photos: Sequence[AnnotatedPhoto], pre: InputSpec, augment: str = "none"
    ) -> None:
        self.photos = list(photos)
        self.pre = pre
        self.letterbox = Letterbox(pre, fill=LETTERBOX_FILL)
        self._letterboxes: dict[tuple[int, int], Letterbox] = {}
        self.augment = BoxAugment(augment) if augment != "none" else None
        self.mosaic_share = MOSAIC_SHARE if augment == "mosaic" else 0.0

    def __len__(self) -> int:
        return len(self.photos)

    def _letterbox_for(self, size: tuple[int, int] | None) -> Letterbox:
        if size is None or tuple(size) == tuple(self.pre.input_size):
            return self.letterbox
        if size not in self._letterboxes:
            pre = replace(self.pre, input_size=tuple(size))  # type: ignore[type-var]
            self._letterboxes[size] = Letterbox(pre, fill=LETTERBOX_FILL)
        return self._letterboxes[size]

    def _prepared(
        self, i: int, size: tuple[int, int] | None
    ) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
        """Photo ``i`` decoded, augmented and letterboxed: (input, boxes in input pixels,
        labels); raises :class:`~vitrina.errors.ImageReadError`."""
        p = self.photos[i]
        image = read_image(p.path)
        boxes, labels = p.boxes, p.labels
        if self.augment is not None:
            image, boxes, labels = self.augment(image, boxes, labels)
        prepared = self._letterbox_for(size)(image)
        placed = prepared.meta.to_input(np.asarray(boxes, np.float32).reshape(-1, 4))
        return prepared.inputs[0], placed, np.asarray(labels, np.int64).reshape(-1)

    def _mosaic(
        self, i: int, size: tuple[int, int] | None, first: tuple
    ) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
        """Photo ``i`` (already ``first``) with three others drawn at random, as a mosaic;
        ``first`` alone when one of the others cannot be read (its error belongs to its own
        item, not to this one)."""
        others = torch.randint(len(self.photos), (3,)).tolist()
        tiles = [first]
        for j in others:
            try:
                tiles.append(self._prepared(j, size))
            except ImageReadError:
                return first
        return mosaic(tiles)

    def __getitem__(
        self, key: int | tuple[int, tuple[int, int]]
    ) -> tuple[int, torch.Tensor | None, dict | None, str | None]:
        i, size = key if isinstance(key, tuple) else (key, None)
        try:
            image, boxes, labels = self._prepared(i, size)
        except ImageReadError as e:
            return i, None, None, str(e)
        if self.mosaic_share and len(self.photos) > 1 and torch.rand(()) < self.mosaic_share:
            image, boxes, labels = self._mosaic(i, size, (image, boxes, labels))
        target = {
            "boxes": torch.from_numpy(np.asarray(boxes, np.float32)).reshape(-1, 4),
            "labels": torch.from_numpy(labels).reshape(-1),
        }
        return i, image, target, None


def mosaic(
    tiles: Sequence[tuple[torch.Tensor, np.ndarray, np.ndarray]],
    *,
    window: tuple[float, float] = MOSAIC_WINDOW,
    visible: float = MOSAIC_VISIBLE,
) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Four prepared photos ``(input (C, H, W), boxes in input pixels, labels)`` of one size
    as one (YOLOv4's mosaic): laid out two by two, a window of ``window`` times one photo's
    size cut from it at random and resized to that size. Products of several photos (and
    classes) meet in one input, on each other's backgrounds and at smaller sizes. A box cut
    by the window is clipped to it, and kept when at least ``visible`` of its area is
    inside and it is at least 2 pixels wide and high."""
    if len(tiles) != 4:
        raise ValueError(f"a mosaic takes 4 photos, not {len(tiles)}")
    c, h, w = tiles[0][0].shape
    if any(t[0].shape != (c, h, w) for t in tiles):
        raise ValueError("the photos of a mosaic must be prepared at one size")
    top = torch.cat([tiles[0][0], tiles[1][0]], dim=2)
    bottom = torch.cat([tiles[2][0], tiles[3][0]], dim=2)
    canvas = torch.cat([top, bottom], dim=1)
    k = float(torch.empty(()).uniform_(*window))
    ch, cw = min(2 * h, round(h * k)), min(2 * w, round(w * k))
    y0 = int(torch.randint(2 * h - ch + 1, ()))
    x0 = int(torch.randint(2 * w - cw + 1, ()))
    crop = canvas[None, :, y0 : y0 + ch, x0 : x0 + cw]
    image = torch.nn.functional.interpolate(
        crop, size=(h, w), mode="bilinear", align_corners=False, antialias=True
    )[0]
    boxes, labels = [], []
    for (_, b, lab), (dx, dy) in zip(tiles, ((0, 0), (w, 0), (0, h), (w, h)), strict=True):
        b = np.asarray(b, np.float32).reshape(-1, 4) + np.float32([dx - x0, dy - y0] * 2)
        boxes.append(b)
        labels.append(np.asarray(lab, np.int64).reshape(-1))
    b, lab = np.concatenate(boxes), np.concatenate(labels)
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    clipped = np.clip(b, 0, np.float32([cw, ch, cw, ch]))
    inside = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
    clipped *= np.float32([w / cw, h / ch] * 2)
    keep = (
        (inside >= visible * np.maximum(area, 1e-6))
        & (clipped[:, 2] - clipped[:, 0] >= 2)
        & (clipped[:, 3] - clipped[:, 1] >= 2)
    )
    return image, clipped[keep], lab[keep]


class ScaledBatches(Sampler):
    """Shuffled training batches, each at one input size drawn from ``sizes`` (multi-scale
    training, as Detectron2's random shortest edge and YOLO's multi-scale): every batch is a
    list of ``(photo index, (height, width))`` for :class:`PhotoBoxes`. The network sees
    products at more sizes than the photos hold, so it names them better at other
    distances and zooms (and with test-time ``--scales``). Drawn from ``generator``: a
    seeded run draws the same batches and sizes."""

    def __init__(
        self,
        n: int,
        batch_size: int,
        sizes: Sequence[tuple[int, int]],
        generator: torch.Generator,
        *,
        drop_last: bool = True,
    ) -> None:
        if not sizes:
            raise ValueError("ScaledBatches needs at least one size")
        self.n, self.batch_size, self.sizes = n, batch_size, [tuple(s) for s in sizes]
        self.generator, self.drop_last = generator, drop_last and n > batch_size

    def __len__(self) -> int:
        full, rest = divmod(self.n, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def __iter__(self) -> Iterator[list[tuple[int, tuple[int, int]]]]:
        order = torch.randperm(self.n, generator=self.generator).tolist()
        picks = torch.randint(len(self.sizes), (len(self),), generator=self.generator).tolist()
        for b, k in enumerate(picks):
            size = self.sizes[k]
            yield [(i, size) for i in order[b * self.batch_size : (b + 1) * self.batch_size]]


def scaled_sizes(input_size: tuple[int, int], scales: Sequence[float]) -> list[tuple[int, int]]:
    """The input sizes of multi-scale training: ``input_size`` times each scale, rounded to
    multiples of 32 (the pyramid's stride), at least 64; sorted, without repeats."""
    h, w = input_size
    out = {(max(64, round(h * s / 32) * 32), max(64, round(w * s / 32) * 32)) for s in scales}
    return sorted(out)


@dataclass
class DetectionBatch(Batch):
    """A batch of letterboxed photos with their targets (``labels`` is -1: no class per
    image; the classes are in ``targets``)."""

    targets: list[dict[str, torch.Tensor]] = field(default_factory=list)


def collate_boxes(items: list[tuple[int, Any, Any, str | None]]) -> DetectionBatch:
    good = [it for it in items if it[1] is not None]
    errors = [(it[0], it[3] or "unreadable") for it in items if it[1] is None]
    images = torch.stack([it[1] for it in good]) if good else torch.empty(0)
    return DetectionBatch(
        images,
        torch.full((len(good),), -1, dtype=torch.long),
        torch.tensor([it[0] for it in good], dtype=torch.long),
        errors,
        [it[2] for it in good],
    )


def split_photos(
    photos: Sequence[AnnotatedPhoto], fraction: float, seed: int
) -> tuple[list[AnnotatedPhoto], list[AnnotatedPhoto]]:
    """(train, validation): ``fraction`` of the photos held out, seeded, stratified by each
    photo's most frequent class (photos without boxes are a group of their own), at least one
    validation photo per group of two or more."""
    if fraction <= 0:
        return list(photos), []
    groups: dict[int, list[int]] = defaultdict(list)
    for i, p in enumerate(photos):
        key = int(np.bincount(p.labels).argmax()) if len(p.labels) else -1
        groups[key].append(i)
    rng = random.Random(seed)
    held: set[int] = set()
    for key in sorted(groups):
        idx = groups[key]
        rng.shuffle(idx)
        n = round(len(idx) * fraction)
        if len(idx) >= 2:
            n = min(max(n, 1), len(idx) - 1)
        held.update(idx[:n])
    train = [p for i, p in enumerate(photos) if i not in held]
    val = [p for i, p in enumerate(photos) if i in held]
    return train, val
