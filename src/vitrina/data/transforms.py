"""Transforms derived from a model's :class:`~vitrina.models.preprocess.Preprocess` record."""

from __future__ import annotations

import math

import torch
from torchvision.transforms import v2 as T

from vitrina.models.preprocess import Preprocess

AUGMENTS = ("none", "light", "standard")

_INTERP = {
    "bilinear": T.InterpolationMode.BILINEAR,
    "bicubic": T.InterpolationMode.BICUBIC,
    "nearest": T.InterpolationMode.NEAREST,
}


def _to_tensor(pre: Preprocess) -> list[T.Transform]:
    steps: list[T.Transform] = []
    if pre.channels == 1:
        steps.append(T.Grayscale(num_output_channels=1))
    steps += [
        T.ToImage(),
        T.ToDtype(torch.float32, scale=True),
        T.Normalize(mean=list(pre.mean), std=list(pre.std)),
    ]
    return steps


def eval_transform(pre: Preprocess) -> T.Compose:
    """PIL RGB image -> normalized float tensor (C, H, W), deterministic."""
    h, w = pre.input_size
    interp = _INTERP[pre.interpolation]
    if pre.crop_pct >= 1.0:
        resize: list[T.Transform] = [T.Resize((h, w), interpolation=interp, antialias=True)]
    else:
        short = math.floor(min(h, w) / pre.crop_pct)
        resize = [T.Resize(short, interpolation=interp, antialias=True), T.CenterCrop((h, w))]
    # Grayscale before resize is cheaper, but order does not change the result materially;
    # keep one order for eval and train so both see the same pixels.
    return T.Compose([*resize, *_to_tensor(pre)])


def train_transform(pre: Preprocess, augment: str = "light") -> T.Compose:
    """Training transform. ``none`` equals :func:`eval_transform`.

    ``light``: random resized crop (scale 0.6-1) and horizontal flip (off for 1-channel
    inputs such as digits, where a flip changes the meaning). ``standard``: adds colour jitter
    and a wider crop range, as in ImageNet training recipes.
    """
    if augment not in AUGMENTS:
        raise ValueError(f"augment must be one of {AUGMENTS}, got {augment!r}")
    if augment == "none":
        return eval_transform(pre)
    h, w = pre.input_size
    interp = _INTERP[pre.interpolation]
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
