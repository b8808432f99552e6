"""Torch datasets over image files that never crash a run on one bad file.

A file that fails to decode yields ``None``; :func:`collate_skip_bad` drops it from the batch
and hands its error message to the caller, which records it and goes on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from vitrina.errors import ImageReadError
from vitrina.io import read_image

__all__ = ["Batch", "ImageFiles", "collate_skip_bad"]


@dataclass
class Batch:
    """A batch of decoded images. ``index`` points into the dataset; ``errors`` lists
    ``(index, message)`` for the items of this batch that could not be read."""

    images: torch.Tensor  # (B, C, H, W); B may be 0
    labels: torch.Tensor  # (B,), -1 where unlabelled
    index: torch.Tensor  # (B,)
    errors: list[tuple[int, str]]


class ImageFiles(Dataset):
    """Paths (and optional labels) -> transformed tensors; bad files become errors, not crashes."""

    def __init__(
        self,
        paths: Sequence[Path | str],
        labels: Sequence[int] | None = None,
        transform: Callable | None = None,
        min_side: int | None = None,
    ) -> None:
        self.paths = [Path(p) for p in paths]
        self.min_side = min_side  # see read_image: faster JPEG decoding for small models
        self.labels = list(labels) if labels is not None else [-1] * len(self.paths)
        if len(self.labels) != len(self.paths):
            raise ValueError("labels and paths differ in length")
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor | None, int, int, str | None]:
        try:
            img = read_image(self.paths[i], min_side=self.min_side)
        except ImageReadError as e:
            return None, self.labels[i], i, str(e)
        x = self.transform(img) if self.transform is not None else img
        return x, self.labels[i], i, None


def collate_skip_bad(items: list[tuple[torch.Tensor | None, int, int, str | None]]) -> Batch:
    good = [it for it in items if it[0] is not None]
    errors = [(it[2], it[3] or "unreadable") for it in items if it[0] is None]
    if good:
        images = torch.stack([it[0] for it in good])  # type: ignore[misc]
    else:
        images = torch.empty(0)
    labels = torch.tensor([it[1] for it in good], dtype=torch.long)
    index = torch.tensor([it[2] for it in good], dtype=torch.long)
    return Batch(images, labels, index, errors)
