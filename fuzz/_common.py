"""Shared by the fuzz targets: seed files and the oracle for decoded images.

Seeds are generated here (small images of every format vitrina reads, with the odd cases
that took work: EXIF rotation, 16-bit, palette transparency, float TIFF, animated GIF), so
no binary corpus is committed; crashes found are kept in ``tests/fuzz_regressions/``.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["CHECK_KNOWN", "pillow_refuses", "write_image_seeds"]

# Oracles for defects issue 13 fixed (1: a corrupt image accepted, 9: names too long on disk):
# on by default since the fixes landed; FUZZ_CHECK_KNOWN=0 turns them off, e.g. to explore
# past them on an older checkout.
CHECK_KNOWN = os.environ.get("FUZZ_CHECK_KNOWN", "1") == "1"


def _save(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def write_image_seeds(folder: Path) -> list[Path]:
    """A few small images per format into ``folder``; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (12, 17, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6
    seeds = {
        "rgb.png": _save(rgb, "PNG"),
        "rgb.jpg": _save(rgb, "JPEG", quality=80),
        "rot6.jpg": _save(rgb, "JPEG", exif=exif.tobytes()),
        "rgb.bmp": _save(rgb, "BMP"),
        "rgb.gif": _save(rgb.convert("P"), "GIF"),
        "anim.gif": _save(rgb.convert("P"), "GIF", save_all=True, append_images=[rgb.convert("P")]),
        "rgb.webp": _save(rgb, "WEBP"),
        "rgb.tif": _save(rgb, "TIFF"),
        "rgb.ppm": _save(rgb, "PPM"),
        "l16.png": _save(Image.fromarray(rng.integers(0, 65535, (9, 7), dtype=np.uint16)), "PNG"),
        "float.tif": _save(Image.fromarray(rng.random((5, 6)).astype(np.float32)), "TIFF"),
        "rgba.png": _save(rgb.convert("RGBA"), "PNG"),
        "ptrns.png": _save(rgb.convert("P"), "PNG", transparency=0),
        "cmyk.jpg": _save(rgb.convert("CMYK"), "JPEG"),
    }
    out = []
    for name, data in seeds.items():
        (folder / name).write_bytes(data)
        out.append(folder / name)
    return out


def pillow_refuses(data: bytes) -> bool:
    """True when Pillow itself cannot decode the first frame of ``data`` (opened fresh, no
    EXIF read first): vitrina must then refuse it too (defect 1 of issue 13 was a corrupt PNG
    that Pillow refuses and vitrina decoded into a black image)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with Image.open(io.BytesIO(data)) as im:
                im.load()
        except Exception:
            return True
    return False
