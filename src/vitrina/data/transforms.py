"""Transforms derived from a model's preprocessing record.

Any object with the fields of :class:`InputSpec` works; models describe theirs with
:class:`vitrina.models.Preprocess` (``data`` sits below ``models`` and never imports it).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
from PIL import Image

if TYPE_CHECKING:
    from torchvision.transforms import v2 as T

AUGMENTS = ("none", "light", "standard")


class InputSpec(Protocol):
    """How a model wants its input (the fields of :class:`vitrina.models.Preprocess`)."""

    @property
    def input_size(self) -> tuple[int, int]: ...
    @property
    def channels(self) -> int: ...
    @property
    def mean(self) -> tuple[float, ...]: ...
    @property
    def std(self) -> tuple[float, ...]: ...
    @property
    def crop_pct(self) -> float: ...
    @property
    def interpolation(self) -> str: ...


def _tv() -> Any:
    """torchvision's transforms, imported on first use: the eval path (:func:`eval_transform`)
    needs none of it, and importing torchvision costs a command ~1 s of start-up (its ops
    import ``torch._dynamo``)."""
    from torchvision.transforms import v2

    return v2


def _interp(name: str) -> Any:
    return getattr(_tv().InterpolationMode, name.upper())


_PIL_INTERP = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}


class ToNormalizedTensor(torch.nn.Module):
    """PIL image -> float (C, H, W) normalized by mean/std, in one pass.

    Same result as ``Grayscale? + ToImage + ToDtype(scale=True) + Normalize`` (to float
    rounding) at a fraction of the cost: it is on the hot path of every image vitrina reads.
    The arithmetic is numpy's, one channel plane at a time (0.46 ms for 224x224 RGB, against
    2 ms for the same ops in torch on one thread): it runs in decode threads beside the
    model, where torch's intra-op thread pool would only compete with it.
    """

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.channels = len(mean)
        self.register_buffer("scale", 1.0 / (255.0 * torch.tensor(std)).view(-1, 1, 1))
        self.register_buffer("shift", (torch.tensor(mean) / torch.tensor(std)).view(-1, 1, 1))
        self._scale = self.scale.view(-1).numpy().astype(np.float32)
        self._shift = self.shift.view(-1).numpy().astype(np.float32)

    def forward(self, img: Image.Image) -> torch.Tensor:
        img = img.convert("L" if self.channels == 1 else "RGB")
        a = np.asarray(img, dtype=np.uint8)
        planes = a[:, :, None] if a.ndim == 2 else a
        out = np.empty((self.channels, *a.shape[:2]), dtype=np.float32)
        for c in range(self.channels):
            np.multiply(planes[:, :, c], self._scale[c], out=out[c], dtype=np.float32)
            out[c] -= self._shift[c]
        return torch.from_numpy(out)


class ResizeCenterCrop(torch.nn.Module):
    """``Resize(short side) + CenterCrop`` in one resampling of only the pixels kept.

    The crop box is mapped back onto the source image with the same integer sizes and
    offsets torchvision uses, and PIL resamples just that box: same geometry, about 40% less
    work than resizing the whole image and throwing its margins away.
    """

    def __init__(self, size: tuple[int, int], short: int, interpolation: str) -> None:
        super().__init__()
        self.h, self.w = size
        self.short = short
        self.resample = _PIL_INTERP[interpolation]

    def forward(self, img: Image.Image) -> Image.Image:
        W, H = img.size
        if W <= H:
            nw, nh = self.short, int(self.short * H / W)
        else:
            nw, nh = int(self.short * W / H), self.short
        top = round((nh - self.h) / 2.0)
        left = round((nw - self.w) / 2.0)
        sx, sy = W / nw, H / nh
        box = (left * sx, top * sy, (left + self.w) * sx, (top + self.h) * sy)
        if nh < self.h or nw < self.w:  # crop larger than the resized image: plain path pads
            crop = _tv().CenterCrop((self.h, self.w))
            return crop(img.resize((nw, nh), self.resample))
        return img.resize((self.w, self.h), self.resample, box=box)


def short_side(pre: InputSpec) -> int:
    """The side the eval transform resizes a photo's short side to, before its centre crop
    (``input size / crop_pct``); JPEGs may decode straight to about this size."""
    h, w = pre.input_size
    return math.floor(min(h, w) / pre.crop_pct)


def _to_tensor(pre: InputSpec) -> list[torch.nn.Module]:
    return [ToNormalizedTensor(pre.mean, pre.std)]


def plain_eval_transform(pre: InputSpec) -> T.Compose:
    """The torchvision reference of :func:`eval_transform` (kept for tests and benchmarks)."""
    T = _tv()
    h, w = pre.input_size
    short = short_side(pre)
    steps: list[T.Transform] = [
        T.Resize(short, interpolation=_interp(pre.interpolation), antialias=True),
        T.CenterCrop((h, w)),
    ]
    if pre.channels == 1:
        steps.append(T.Grayscale(num_output_channels=1))
    steps += [
        T.ToImage(),
        T.ToDtype(torch.float32, scale=True),
        T.Normalize(mean=list(pre.mean), std=list(pre.std)),
    ]
    return T.Compose(steps)


def eval_transform(pre: InputSpec) -> torch.nn.Sequential:
    """PIL image -> normalized float tensor (C, H, W), deterministic.

    As timm and torchvision do: resize the short side to ``size / crop_pct``, then
    center-crop (crop_pct 1.0 crops nothing off the short side and keeps the aspect ratio).
    Matches :func:`plain_eval_transform` to a fraction of a grey level, faster. Its steps
    are plain modules (``transform[0]`` is the resize): building or running it does not
    import torchvision, so a command that only predicts starts ~1 s sooner.
    """
    h, w = pre.input_size
    return torch.nn.Sequential(
        ResizeCenterCrop((h, w), short_side(pre), pre.interpolation), *_to_tensor(pre)
    )


def train_transform(pre: InputSpec, augment: str = "light") -> T.Compose:
    """Training transform. ``none`` equals :func:`eval_transform`.

    ``light``: random resized crop (scale 0.6-1) and horizontal flip (off for 1-channel
    inputs such as digits, where a flip changes the meaning). ``standard``: adds colour jitter
    and a wider crop range, as in ImageNet training recipes.
    """
    if augment not in AUGMENTS:
        raise ValueError(f"augment must be one of {AUGMENTS}, got {augment!r}")
    if augment == "none":
        return eval_transform(pre)
    T = _tv()
    h, w = pre.input_size
    interp = _interp(pre.interpolation)
    gray = pre.channels == 1
    scale = (0.6, 1.0) if augment == "light" else (0.25, 1.0)
    ratio = (0.9, 1.1) if gray else (3 / 4, 4 / 3)
    steps: list[T.Transform] = [
        T.RandomResizedCrop((h, w), scale=scale, ratio=ratio, interpolation=interp, antialias=True)
    ]
    if not gray:
        steps.append(T.RandomHorizontalFlip())
    if augment == "standard" and not gray:
        steps.append(T.ColorJitter(0.3, 0.3, 0.3, 0.05))
    return T.Compose([*steps, *_to_tensor(pre)])


def reid_train_transform(pre: InputSpec, augment: str = "reid") -> T.Compose:
    """Training transform for identity crops (people, faces, products).

    ``reid`` is the person re-identification recipe (Luo et al., "Bag of Tricks", 2019):
    resize straight to ``input_size`` (crops are already framed; a random resized crop would
    cut heads and feet off), horizontal flip, 10-pixel padding and a random crop back to size,
    then random erasing (p 0.5) on the normalized tensor. Any other name is
    :func:`train_transform`'s.
    """
    if augment != "reid":
        return train_transform(pre, augment)
    T = _tv()
    h, w = pre.input_size
    interp = _interp(pre.interpolation)
    pad = max(1, round(min(h, w) / 25))  # 10 px at the classic 256 x 128
    return T.Compose(
        [
            T.Resize((h, w), interpolation=interp, antialias=True),
            T.RandomHorizontalFlip(),
            T.Pad(pad, padding_mode="edge"),
            T.RandomCrop((h, w)),
            *_to_tensor(pre),
            T.RandomErasing(p=0.5, value=0),
        ]
    )
