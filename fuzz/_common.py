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

__all__ = [
    "CHECK_KNOWN",
    "pillow_refuses",
    "write_annotation_seeds",
    "write_annotation_set",
    "write_image_seeds",
]

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


# ---------------------------------------------------------------------------- annotations
#: The fixed photos of the fuzzed annotated set: name -> (width, height).
ANNOTATED_PHOTOS = {"a.png": (20, 16), "b.png": (9, 30)}
_ANNOTATION_FILES = ("a.xml", "b.xml", "a.txt", "b.txt", "classes.txt", "data.yaml", "set.json")


def write_annotation_set(root: Path, kind: str, data: bytes) -> Path:
    """An annotated set under ``root`` whose one annotation file holds ``data``: the path to
    read. ``kind``: ``coco`` (``set.json``, photos in ``images/``), ``yolo`` (``a.txt`` and
    ``classes.txt`` with cat/dog), ``yolo-no-classes``, ``voc`` (``a.xml``) or ``yolo-yaml``
    (``data.yaml`` as the class list, ``b.txt`` a fixed box)."""
    images = root / "images"
    if not images.is_dir():
        images.mkdir(parents=True)
        for name, size in ANNOTATED_PHOTOS.items():
            Image.new("RGB", size, (120, 80, 40)).save(images / name)
    for name in _ANNOTATION_FILES:
        (images / name).unlink(missing_ok=True)
        (root / name).unlink(missing_ok=True)
    if kind == "coco":
        (root / "set.json").write_bytes(data)
        return root / "set.json"
    if kind == "voc":
        (images / "a.xml").write_bytes(data)
        (images / "b.xml").write_text(_VOC_B)
        return images
    if kind == "yolo-yaml":
        (images / "data.yaml").write_bytes(data)
        (images / "b.txt").write_text("0 0.5 0.5 0.4 0.2\n1 0.2 0.2 0.1 0.1\n")
        return images
    (images / "a.txt").write_bytes(data)
    if kind == "yolo":
        (images / "classes.txt").write_text("cat\ndog\n")
    return images


_VOC_B = (
    "<annotation><size><width>9</width><height>30</height></size>"
    "<object><name>dog</name><bndbox><xmin>1</xmin><ymin>2</ymin><xmax>8</xmax>"
    "<ymax>29</ymax></bndbox></object></annotation>"
)


def write_annotation_seeds(folder: Path) -> list[Path]:
    """Small valid annotation files, one per kind (first byte: the kind's index in
    fuzz_annotations.FORMATS), with the odd cases: crowd regions, polygons, a confidence
    column, indexed yaml names, a box reaching past the edge."""
    import json

    folder.mkdir(parents=True, exist_ok=True)
    coco = {
        "images": [
            {"id": 1, "file_name": "a.png", "width": 20, "height": 16},
            {"id": 2, "file_name": "b.png", "width": 9, "height": 30},
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 2, 10, 8]},
            {"id": 2, "image_id": 2, "category_id": 2, "bbox": [0.5, 1.5, 8, 28.5]},
            {"id": 3, "image_id": 1, "category_id": 2, "bbox": [0, 0, 20, 16], "iscrowd": 1},
        ],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
    }
    voc = (
        "<annotation><filename>a.png</filename><size><width>20</width><height>16</height>"
        "<depth>3</depth></size><object><name>cat</name><bndbox><xmin>1</xmin><ymin>2</ymin>"
        "<xmax>11</xmax><ymax>10</ymax></bndbox></object><object><name>dog</name><bndbox>"
        "<xmin>0</xmin><ymin>0</ymin><xmax>21</xmax><ymax>16</ymax></bndbox></object>"
        "</annotation>"
    )
    seeds = {
        "coco.seed": b"\x00" + json.dumps(coco).encode(),
        "yolo.seed": b"\x01" + b"0 0.5 0.5 0.25 0.5\n1 0.1 0.1 0.2 0.2 0.9\n",
        "yolo-poly.seed": b"\x01" + b"1 0.1 0.1 0.5 0.1 0.5 0.6 0.1 0.6\n",
        "yolo-nocls.seed": b"\x02" + b"3 0.5 0.5 0.25 0.5\n",
        "voc.seed": b"\x03" + voc.encode(),
        "yaml-list.seed": b"\x04" + b"path: .\nnames: [cat, 'dog']\n",
        "yaml-block.seed": b"\x04" + b"names:\n  0: cat\n  1: dog\nnc: 2\n",
        "yaml-dash.seed": b"\x04" + b"names:\n- cat\n- dog\n",
    }
    out = []
    for name, data in seeds.items():
        (folder / name).write_bytes(data)
        out.append(folder / name)
    return out
