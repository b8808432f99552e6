"""Training on cached features: the frozen part of the backbone runs once per photo.

With ``--freeze lower`` (the backbone up to its stride-16 features frozen: its last stage,
the pyramid and the heads learn) or ``--freeze backbone``, the frozen layers give the same
features every epoch, so they are computed once for every training and validation photo (and
for its mirror image with ``--augment flip``) and kept in memory; each step then runs only
what learns. On a CPU this is what makes training fit in minutes: the frozen layers are most
of the compute. The weights are the same as the plain loop's (tested); only augmentations
that change pixels (colour jitter, zoom) need the plain loop.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from vitrina.detect.data import DetectionBatch, PhotoBoxes, collate_boxes
from vitrina.models.detection import Detector

__all__ = ["CACHE_LIMIT_BYTES", "CachedBatch", "CachedBatches", "FeatureCache", "given_features"]

#: Largest cache kept in memory; beyond it training runs the plain loop.
CACHE_LIMIT_BYTES = 4 << 30

#: The cut of each freeze level: the last cached feature map (0: stride 8, 1: 16, 2: 32).
CUT = {"lower": 1, "backbone": 2}


@contextlib.contextmanager
def given_features(model: Detector, feats: dict[str, torch.Tensor]) -> Iterator[None]:
    """Run ``model`` on ``feats`` (the backbone's ``c0..c2`` maps) instead of its backbone."""
    backbone = model.net.backbone
    backbone.given = feats
    try:
        yield
    finally:
        backbone.given = None


@dataclass
class CachedBatch(DetectionBatch):
    """A batch of cached features (``images`` is an all-zero stand-in of the input's shape:
    the detector reads only its size)."""

    features: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class FeatureCache:
    """Frozen features of photos: ``feats[name]`` is ``(N, C, h, w)``; entry ``i`` belongs to
    photo ``index[i]`` (mirrored when ``flipped[i]``), with ``targets[i]`` in input pixels."""

    feats: dict[str, torch.Tensor]
    targets: list[dict[str, torch.Tensor]]
    index: list[int]
    flipped: list[bool]
    input_shape: tuple[int, int, int]
    errors: list[tuple[int, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.targets)

    @staticmethod
    def estimate_bytes(model: Detector, photos: int, level: int, flip: bool) -> int:
        h, w = model.spec.input_size
        per = sum(
            c * (h // s) * (w // s)
            for c, s in zip(model.spec.in_channels[: level + 1], (8, 16, 32), strict=False)
        )
        return per * 4 * photos * (2 if flip else 1)

    @classmethod
    def build(
        cls,
        model: Detector,
        photos: list[Any],
        level: int,
        *,
        flip: bool,
        batch_size: int,
        num_workers: int,
        device: torch.device,
        on_progress: Callable[[int], None] | None = None,
    ) -> FeatureCache:
        """Run the frozen ``lower`` part (:meth:`Detector.split_backbone`) on every photo."""
        lower, _ = model.split_backbone(level)
        lower.eval()
        loader = DataLoader(
            PhotoBoxes(photos, model.preprocess, "none"),
            batch_size=batch_size,
            shuffle=False,
            num_workers=num_workers if len(photos) > batch_size else 0,
            collate_fn=collate_boxes,
        )
        parts: dict[str, list[torch.Tensor]] = {}
        targets: list[dict[str, torch.Tensor]] = []
        index: list[int] = []
        flipped: list[bool] = []
        errors: list[tuple[int, str]] = []
        shape: tuple[int, int, int] = (model.preprocess.channels, *model.spec.input_size)
        with torch.no_grad():
            for b in loader:
                errors += b.errors
                if b.images.numel():
                    x = b.images.to(device)
                    shape = tuple(x.shape[1:])  # type: ignore[assignment]
                    views = [(x, False)] + ([(x.flip(-1), True)] if flip else [])
                    for view, mirrored in views:
                        for k, v in lower(view).items():
                            parts.setdefault(k, []).append(v.cpu())
                        w = x.shape[-1]
                        for i, t in zip(b.index.tolist(), b.targets, strict=True):
                            boxes = t["boxes"].clone()
                            if mirrored:
                                boxes[:, [0, 2]] = w - t["boxes"][:, [2, 0]]
                            targets.append({"boxes": boxes, "labels": t["labels"]})
                            index.append(i)
                            flipped.append(mirrored)
                if on_progress:
                    on_progress(len(b))
        feats = {k: torch.cat(v) for k, v in parts.items()}
        # Entries were appended batch by batch as (originals, mirrors): order them by photo.
        order = sorted(range(len(index)), key=lambda j: (index[j], flipped[j]))
        feats = {k: v[order] for k, v in feats.items()}
        return cls(
            feats,
            [targets[j] for j in order],
            [index[j] for j in order],
            [flipped[j] for j in order],
            shape,
            errors,
        )


class CachedBatches:
    """Batches of a :class:`FeatureCache` for :func:`vitrina.training.fit`: photos in a
    seeded random order (``torch.randperm`` with ``generator``, as a shuffling DataLoader
    draws it), each as itself or (``flip``) its mirror image at random; incomplete last batch
    dropped when shuffling, as the plain loop does."""

    def __init__(
        self,
        cache: FeatureCache,
        batch_size: int,
        *,
        shuffle: bool,
        flip: bool,
        generator: torch.Generator | None = None,
    ) -> None:
        self.cache = cache
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.flip = flip
        self.generator = generator
        self.num_workers = 0
        # entries of each photo: (original, mirrored or None)
        self.photos: dict[int, list[int]] = {}
        for j, (i, m) in enumerate(zip(cache.index, cache.flipped, strict=True)):
            self.photos.setdefault(i, [-1, -1])[1 if m else 0] = j
        self.order = sorted(self.photos)

    def __len__(self) -> int:
        n = len(self.order)
        if self.shuffle and n > self.batch_size:
            return n // self.batch_size
        return -(-n // self.batch_size)

    def __iter__(self) -> Iterator[CachedBatch]:
        n = len(self.order)
        if self.shuffle:
            # As a shuffling DataLoader: one draw for its workers' base seed, then the order.
            torch.empty((), dtype=torch.int64).random_(generator=self.generator)
            perm = torch.randperm(n, generator=self.generator).tolist()
        else:
            perm = list(range(n))
        mirror = (
            (torch.rand(n, generator=self.generator) < 0.5).tolist() if self.flip else [False] * n
        )
        stop = n - n % self.batch_size if self.shuffle and n > self.batch_size else n
        for start in range(0, stop, self.batch_size):
            rows = []
            for k in perm[start : start + self.batch_size]:
                orig, mirrored = self.photos[self.order[k]]
                rows.append(mirrored if mirror[k] and mirrored >= 0 else orig)
            yield self._batch(rows)

    def _batch(self, rows: list[int]) -> CachedBatch:
        c = self.cache
        idx = torch.tensor(rows, dtype=torch.long)
        return CachedBatch(
            torch.zeros((), dtype=torch.float32).expand(len(rows), *c.input_shape),
            torch.full((len(rows),), -1, dtype=torch.long),
            torch.tensor([c.index[r] for r in rows], dtype=torch.long),
            [],
            [c.targets[r] for r in rows],
            {k: v[idx] for k, v in c.feats.items()},
        )


def run_cached(
    model: Detector,
    upper: nn.Module | None,
    level: int,
    batch: CachedBatch,
    call: Callable[[torch.Tensor], Any],
) -> Any:
    """``call(images)`` with the detector reading ``batch``'s cached features (and, when part
    of the backbone learns, ``upper`` computing the rest from them)."""
    device = batch.images.device
    feats = {k: v.to(device, non_blocking=True) for k, v in batch.features.items()}
    if upper is not None:
        feats.update(upper(feats[f"c{level}"]))
    with given_features(model, feats):
        return call(batch.images)
