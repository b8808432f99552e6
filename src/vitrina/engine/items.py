"""What the engine takes: photos as files, photos in memory, and regions of photos.

An *item* is a path (``str`` / ``os.PathLike``), a PIL image, a numpy array, a torch tensor,
or a :class:`Region` of any of those (a box cut from the photo: a face, a product, a person
found by a detector). :func:`load_item` turns each into a PIL image in the decode workers;
anything wrong with one item becomes an :class:`~vitrina.errors.ImageReadError` for that item
only, naming it and the problem.
"""

from __future__ import annotations

import math
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from vitrina.errors import ImageReadError
from vitrina.io import read_image
from vitrina.io.arrays import to_pil

__all__ = ["Item", "Region", "as_items", "is_file_item", "item_name", "load_item", "thumbnail"]

#: A path, an in-memory image (PIL, numpy, torch) or a :class:`Region` of one.
Item = Any


@dataclass(frozen=True)
class Region:
    """A rectangle of a photo as an engine item.

    ``box`` is ``(left, top, right, bottom)`` in the photo's own pixels (x right, y down; right
    and bottom exclusive), as detectors report boxes after mapping them back. A box that
    reaches past the photo's edge is clipped to it; one that lies wholly outside, or has no
    area, is an error for that item (the batch goes on).

    ``source``: the photo, as any other item (a path, or an image in memory).
    """

    source: Any
    box: tuple[float, float, float, float]

    def __post_init__(self) -> None:
        if isinstance(self.source, Region):
            raise TypeError("a Region's source is a photo, not another Region")
        try:
            box = tuple(float(v) for v in self.box)
        except (TypeError, ValueError):
            raise TypeError(
                f"box must be 4 numbers (left, top, right, bottom), got {self.box!r}"
            ) from None
        if len(box) != 4:
            raise TypeError(f"box must be 4 numbers (left, top, right, bottom), got {self.box!r}")
        object.__setattr__(self, "box", box)

    def crop(self, photo: Image.Image, name: str) -> Image.Image:
        """The region's pixels (a copy), clipped to the photo."""
        left, top, right, bottom = self.box
        if not all(math.isfinite(v) for v in self.box) or right <= left or bottom <= top:
            raise ImageReadError(name, "empty region (the box has no area)")
        w, h = photo.size
        x0, y0 = max(0, math.floor(left)), max(0, math.floor(top))
        x1, y1 = min(w, math.ceil(right)), min(h, math.ceil(bottom))
        if x1 <= x0 or y1 <= y0:
            raise ImageReadError(name, f"region lies outside the photo ({w}x{h} pixels)")
        return photo.crop((x0, y0, x1, y1))


def as_items(photos: Any) -> tuple[list[Item], bool]:
    """``(items, single)``: what a user passed to ``predict`` / ``embed`` / ``search`` /
    ``identify`` / ``detect`` as a list of engine items, and whether it was one photo.

    One photo: a path, a PIL image, a :class:`Region`, a numpy array ``(H, W)`` or
    ``(H, W, C)`` (uint8 RGB, grey, float in [0, 1], 16-bit...: :func:`vitrina.io.arrays.to_pil`
    reads them) or a torch tensor ``(H, W)`` / ``(C, H, W)`` (float in [0, 1] or uint8). A
    batch: a list, tuple or other iterable of those, or a 4-D array / tensor (``(N, H, W, C)``
    arrays, ``(N, C, H, W)`` tensors), split along its first axis.

    Why one function: every API that takes photos answers "one or many?" the same way, and
    the engine's decode workers then turn each item into pixels (:func:`load_item`).
    """
    if isinstance(photos, str | os.PathLike | Image.Image | Region):
        return [photos], True
    ndim = getattr(photos, "ndim", None)
    if isinstance(ndim, int) and hasattr(photos, "shape"):  # numpy array or torch tensor
        if ndim == 4:
            return [photos[i] for i in range(photos.shape[0])], False
        return [photos], True
    if isinstance(photos, bytes | bytearray):
        raise TypeError("photo bytes: decode them with vitrina.io.read_image_bytes first")
    try:
        return list(photos), False
    except TypeError:
        raise TypeError(
            "expected a photo (a path, a PIL image, a numpy array, a torch tensor) or a list "
            f"of them, got {type(photos).__name__}"
        ) from None


def thumbnail(item: Item, side: int = 128) -> Image.Image | None:
    """A small RGB copy of the item (its long side at most ``side`` pixels) for a notebook
    or a report; ``None`` when the item cannot be read (the result's ``error`` says why)."""
    try:
        image = load_item(item, mode="RGB", min_side=side)
    except ImageReadError:
        return None
    image = image.copy()
    image.thumbnail((side, side))
    return image


def is_file_item(item: Item) -> bool:
    """Whether the item is read from disk (a path, or a region of one)."""
    if isinstance(item, Region):
        item = item.source
    return isinstance(item, str | os.PathLike)


def item_name(item: Item) -> str:
    """How errors name an item: its path, or what it is."""
    if isinstance(item, Region):
        box = ", ".join(f"{v:g}" for v in item.box)
        return f"{item_name(item.source)} region ({box})"
    if isinstance(item, str | os.PathLike):
        return str(item)
    if isinstance(item, Image.Image):
        return f"<image {item.size[0]}x{item.size[1]}>"
    shape = getattr(item, "shape", None)
    if shape is not None:
        return f"<{type(item).__name__} {'x'.join(map(str, shape))}>"
    return f"<{type(item).__name__}>"


# The last few photos decoded in this process: regions of one photo (the boxes a detector
# found in it) decode it once, also when several decode threads take its regions at once
# (the first decodes, the others wait for it: one lock per photo being decoded).
_RECENT = 4
_recent: OrderedDict[tuple[Any, ...], Image.Image] = OrderedDict()
_decoding: dict[tuple[Any, ...], threading.Lock] = {}
_recent_lock = threading.Lock()


def _read_path(path: Path, mode: str, min_side: int | None) -> Image.Image:
    try:
        st = path.stat()
        key: tuple[Any, ...] = (str(path), st.st_mtime_ns, st.st_size, mode, min_side)
    except OSError:
        return read_image(path, mode=mode, min_side=min_side)  # raises the precise error
    with _recent_lock:
        photo_lock = _decoding.setdefault(key, threading.Lock())
    with photo_lock:
        with _recent_lock:
            if key in _recent:
                _recent.move_to_end(key)
                return _recent[key]
        try:
            image = read_image(path, mode=mode, min_side=min_side)
            with _recent_lock:
                _recent[key] = image
                while len(_recent) > _RECENT:
                    _recent.popitem(last=False)
        finally:
            with _recent_lock:
                _decoding.pop(key, None)
    return image


def load_item(item: Item, *, mode: str = "RGB", min_side: int | None = None) -> Image.Image:
    """The item as a loaded PIL image in ``mode`` ("RGB" or "L").

    ``min_side``: the short side the caller will resize to (a JPEG file may decode faster at a
    reduced scale, never below it); ignored for regions, which need the photo's full pixels.

    Raises:
        ImageReadError: the file is unreadable, the array is not an image, the region is empty
            or outside the photo (one line naming the item).
    """
    if isinstance(item, Region):
        name = item_name(item)
        if isinstance(item.source, str | os.PathLike):
            photo = _read_path(Path(item.source), mode, None)
        else:
            photo = _from_memory(item.source, mode, item_name(item.source))
        return item.crop(photo, name)
    if isinstance(item, str | os.PathLike):
        path = Path(item)
        return read_image(path, mode=mode, min_side=min_side)
    return _from_memory(item, mode, item_name(item))


def _from_memory(obj: Any, mode: str, name: str) -> Image.Image:
    try:
        image = to_pil(obj, mode)
    except (TypeError, ValueError) as exc:
        raise ImageReadError(name, str(exc)) from None
    w, h = image.size
    if w <= 0 or h <= 0:
        raise ImageReadError(name, "empty image")
    return image
