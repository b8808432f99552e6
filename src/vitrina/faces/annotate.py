"""Draw the faces found in a photo, with the name (or "unknown") and distance of each."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from vitrina.faces.gallery import UNKNOWN, Identification
from vitrina.faces.types import PhotoFaces

__all__ = ["annotate", "write_annotated"]

KNOWN_COLOR = (30, 170, 60)
UNKNOWN_COLOR = (220, 40, 40)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def annotate(image: Image.Image, ids: Sequence[Identification]) -> Image.Image:
    """A copy of ``image`` (RGB) with a box and a label per identified face."""
    out = image.convert("RGB")
    draw = ImageDraw.Draw(out)
    side = max(out.size)
    width = max(2, side // 300)
    font = _font(max(11, side // 45))
    for i in ids:
        b = i.box
        color = UNKNOWN_COLOR if i.name == UNKNOWN else KNOWN_COLOR
        draw.rectangle((b.left, b.top, b.right - 1, b.bottom - 1), outline=color, width=width)
        text = i.name if i.distance is None else f"{i.name} {i.distance:.2f}"
        x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font)
        th = y1 - y0 + 4
        top = b.top - th if b.top >= th else b.bottom
        draw.rectangle((b.left, top, b.left + x1 - x0 + 6, top + th), fill=color)
        draw.text((b.left + 3, top + 2 - y0), text, fill="white", font=font)
    return out


def write_annotated(pf: PhotoFaces, ids: Sequence[Identification], out_dir: str | Path) -> Path:
    """``out_dir/<photo stem>.jpg`` (``-1``, ``-2``... when taken): never overwrites."""
    from vitrina.io import read_image, save_new_image

    return save_new_image(annotate(read_image(pf.path), ids), Path(out_dir) / f"{pf.path.stem}.jpg")
