"""Images held in memory, as people have them: PIL images of any mode, numpy arrays of any
dtype, torch tensors. :func:`to_pil` makes each an 8-bit RGB (or L) PIL image with the same
rules as :func:`vitrina.io.read_image` uses for files (16-bit scaled by 1/256, alpha over white,
float images in [0, 1] scaled by 255)."""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

__all__ = ["to_pil", "to_rgb8"]

_PASSTHROUGH_ALPHA = ("RGBa", "La", "PA")


def to_pil(image: Any, mode: str = "RGB") -> Image.Image:
    """A PIL image, a numpy array or a torch tensor as an 8-bit ``mode`` ("RGB" or "L") image.

    Arrays: ``(H, W)``, ``(H, W, 1|2|3|4)`` (2 and 4 carry alpha last). Tensors: ``(H, W)`` or
    channels first ``(1|3|4, H, W)``, as torchvision holds images (any other 3-D tensor is read
    like an array, channels last). Float values up to
    1 are scaled by 255; uint16 and integer values above 255 are 16-bit (divided by 256).

    Raises:
        TypeError: not an image type.
        ValueError: an array of a shape or dtype that is not an image (the message says which).
    """
    if mode not in ("RGB", "L"):
        raise ValueError(f"mode must be 'RGB' or 'L', not {mode!r}")
    rgb = to_rgb8(_tensor_to_array(image) if _is_tensor(image) else image)
    return rgb if mode == "RGB" else rgb.convert("L")


def to_rgb8(image: Image.Image | np.ndarray) -> Image.Image:
    """Any PIL image or array as an 8-bit RGB PIL image (see :func:`to_pil`)."""
    if isinstance(image, Image.Image):
        if image.mode == "RGB":
            return image
        if image.mode in _PASSTHROUGH_ALPHA or (
            image.mode in ("P", "CMYK", "YCbCr", "LAB", "HSV") and "transparency" in image.info
        ):
            image = image.convert("RGBA")
        elif image.mode not in ("L", "LA", "RGBA", "1", "I", "F") and not image.mode.startswith(
            "I;16"
        ):
            return image.convert("RGB")
        return Image.fromarray(_rgb8_array(np.asarray(image)))
    if isinstance(image, np.ndarray):
        return Image.fromarray(_rgb8_array(image))
    raise TypeError(
        f"expected a path, a PIL image, a numpy array or a torch tensor, got {type(image).__name__}"
    )


def _is_tensor(obj: Any) -> bool:
    return type(obj).__module__.startswith("torch") and hasattr(obj, "detach")


def _tensor_to_array(t: Any) -> np.ndarray:
    a = t.detach().cpu().numpy()
    if a.ndim == 3 and a.shape[0] in (1, 3, 4):
        a = np.moveaxis(a, 0, -1)  # torchvision's (C, H, W)
    return a


def _rgb8_array(a: np.ndarray) -> np.ndarray:
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.size == 0 or a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (2, 3, 4)):
        raise ValueError(f"expected an (H, W) or (H, W, 3|4) image array, got shape {a.shape}")
    a = _uint8(a)
    if a.ndim == 2:
        a = a[..., None]
    if a.shape[2] in (2, 4):  # alpha last: transparent pixels may hold any colour
        alpha = a[..., -1:].astype(np.float32) / 255.0
        a = np.rint(a[..., :-1] * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    return np.ascontiguousarray(a)


def _uint8(a: np.ndarray) -> np.ndarray:
    if a.dtype == np.uint8:
        return a
    if a.dtype == np.bool_:
        return a.astype(np.uint8) * 255
    if np.issubdtype(a.dtype, np.floating):
        a = np.nan_to_num(a.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        if float(a.max()) <= 1.0:
            a = a * 255.0
        return np.rint(np.clip(a, 0.0, 255.0)).astype(np.uint8)
    if np.issubdtype(a.dtype, np.integer):
        if a.dtype == np.uint16 or int(a.max()) > 255:
            return (np.clip(a, 0, 65535) >> 8).astype(np.uint8)
        return np.clip(a, 0, 255).astype(np.uint8)
    raise ValueError(f"unsupported image array dtype {a.dtype}")
