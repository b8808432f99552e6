"""Transforms derived from a model's preprocessing record.

Any object with the fields of :class:`InputSpec` works; models describe theirs with
:class:`vitrina.models.Preprocess` (``data`` sits below ``models`` and never imports it).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from vitrina.data.pixels import (
    InputSpec,
    Normalize,
    ResizeCrop,
    short_side,
)

if TYPE_CHECKING:
    from torchvision.transforms import v2 as T

AUGMENTS = ("none", "light", "standard")


def _tv() -> Any:
    """torchvision's transforms, imported on first use: the eval path (:func:`eval_transform`)
    needs none of it, and importing torchvision costs a command ~1 s of start-up (its ops
    import ``torch._dynamo``)."""
    from torchvision.transforms import v2

    return v2


def _interp(name: str) -> Any:
    return getattr(_tv().InterpolationMode, name.upper())


class ToNormalizedTensor(torch.nn.Module):
    """PIL image -> float (C, H, W) normalized by mean/std, in one pass: the numpy
    :class:`vitrina.data.pixels.Normalize` as a tensor."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.channels = len(mean)
        self.pixels = Normalize(mean, std)
        self.register_buffer("scale", torch.from_numpy(self.pixels.scale.copy()).view(-1, 1, 1))
        self.register_buffer("shift", torch.from_numpy(self.pixels.shift.copy()).view(-1, 1, 1))

    def forward(self, img: Image.Image) -> torch.Tensor:
        return torch.from_numpy(self.pixels(img))


class ResizeCenterCrop(torch.nn.Module):
    """``Resize(short side) + CenterCrop`` in one resampling of only the pixels kept (the
    numpy-side :class:`vitrina.data.pixels.ResizeCrop` as a module)."""

    def __init__(self, size: tuple[int, int], short: int, interpolation: str) -> None:
        super().__init__()
        self.crop = ResizeCrop(size, short, interpolation)
        self.h, self.w, self.short = self.crop.h, self.crop.w, short

    def forward(self, img: Image.Image) -> Image.Image:
        return self.crop(img)


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


class SideLight(torch.nn.Module):
    """Light from one side: the photo multiplied by a linear ramp across a random direction,
    from 1 down to ``1 - s`` (``s`` uniform in ``strength``), then a random gamma. A face by a
    window, a shelf lit from one end; the identity is the same."""

    def __init__(
        self,
        strength: tuple[float, float] = (0.0, 0.7),
        gamma: tuple[float, float] = (0.75, 1.35),
        p: float = 0.5,
    ) -> None:
        super().__init__()
        self.strength, self.gamma, self.p = strength, gamma, p

    def forward(self, img: Image.Image) -> Image.Image:
        if torch.rand(()) >= self.p:
            return img
        s = float(torch.empty(()).uniform_(*self.strength))
        g = float(torch.empty(()).uniform_(*self.gamma))
        angle = float(torch.empty(()).uniform_(0, 2 * math.pi))
        a = np.asarray(img, dtype=np.float32) / 255.0
        h, w = a.shape[:2]
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
        t = (xs / max(w - 1, 1) - 0.5) * math.cos(angle) + (ys / max(h - 1, 1) - 0.5) * math.sin(
            angle
        )
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        ramp = 1.0 - s * t
        a = np.clip(a * (ramp[..., None] if a.ndim == 3 else ramp), 0, 1) ** g
        return Image.fromarray((a * 255).round().astype(np.uint8), mode=img.mode)


class LowResolution(torch.nn.Module):
    """Another camera's resolution: down to a short side of ``sides`` pixels and back up
    (bilinear), with probability ``p``."""

    def __init__(self, sides: tuple[int, int] = (24, 64), p: float = 0.4) -> None:
        super().__init__()
        self.sides, self.p = sides, p

    def forward(self, img: Image.Image) -> Image.Image:
        if torch.rand(()) >= self.p:
            return img
        w, h = img.size
        side = int(torch.randint(self.sides[0], self.sides[1] + 1, ()))
        if side >= min(w, h):
            return img
        k = side / min(w, h)
        small = img.resize((max(1, round(w * k)), max(1, round(h * k))), Image.BILINEAR)
        return small.resize((w, h), Image.BILINEAR)


REID_AUGMENTS = ("reid", "camera")


def reid_train_transform(pre: InputSpec, augment: str = "reid") -> T.Compose:
    """Training transform for identity crops (people, faces, products).

    ``reid`` is the person re-identification recipe (Luo et al., "Bag of Tricks", 2019):
    resize straight to ``input_size`` (crops are already framed; a random resized crop would
    cut heads and feet off), horizontal flip, 10-pixel padding and a random crop back to size,
    then random erasing (p 0.5) on the normalized tensor. ``camera`` adds what changes when
    the same identity is seen by another camera in another place: light from one side and a
    gamma (:class:`SideLight`), brightness and contrast, a lower resolution
    (:class:`LowResolution`), JPEG compression (quality 20-90), and a looser framing (shift up
    to 8%, zoom 0.9-1.1, rotation up to 5 degrees). Any other name is :func:`train_transform`'s.
    """
    if augment not in REID_AUGMENTS:
        return train_transform(pre, augment)
    T = _tv()
    h, w = pre.input_size
    interp = _interp(pre.interpolation)
    pad = max(1, round(min(h, w) / 25))  # 10 px at the classic 256 x 128
    camera: list[Any] = []
    if augment == "camera":
        camera = [
            SideLight(),
            T.ColorJitter(brightness=0.3, contrast=0.3),
            LowResolution(),
            T.RandomApply([T.JPEG((20, 90))], p=0.4),
            T.RandomAffine(degrees=5, translate=(0.08, 0.08), scale=(0.9, 1.1)),
        ]
    return T.Compose(
        [
            T.Resize((h, w), interpolation=interp, antialias=True),
            T.RandomHorizontalFlip(),
            *camera,
            T.Pad(pad, padding_mode="edge"),
            T.RandomCrop((h, w)),
            *_to_tensor(pre),
            T.RandomErasing(p=0.5, value=0),
        ]
    )
