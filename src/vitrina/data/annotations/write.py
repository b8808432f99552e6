"""Write an annotated set in COCO JSON, YOLO txt or Pascal VOC XML (``vitrina data convert``).

The output is a new folder that stands on its own: the photos under ``OUT/images/`` (copied,
or linked with ``photos="link"``; the sources are only read) at the same relative paths, and

- ``coco``: ``OUT/annotations.json`` (``file_name`` relative to ``OUT/images``, categories
  numbered from 1 in class-list order, ``bbox`` ``[x, y, w, h]`` in pixels);
- ``yolo``: ``OUT/labels/<rel>.txt`` (``class cx cy w h`` as fractions, one file per photo,
  empty for a photo without objects) and ``OUT/classes.txt``;
- ``voc``: ``OUT/annotations/<rel>.xml`` and ``OUT/classes.txt``.

Only the boxes that passed the checks of :func:`~vitrina.data.annotations.read_annotated` are
written; every file is written atomically, and nothing that exists is overwritten.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET  # nosec B405 - builds XML, never parses it
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vitrina.data.annotations.layout import FORMATS
from vitrina.data.annotations.read import read_annotated
from vitrina.data.annotations.types import AnnotatedPhoto, AnnotatedSet
from vitrina.errors import DataError
from vitrina.io import atomic_write_text, place_file

__all__ = ["ConvertResult", "convert_annotated", "write_annotated"]

Progress = Callable[[int, int], None]


@dataclass
class ConvertResult:
    """What a conversion read and wrote."""

    source: AnnotatedSet
    out: Path
    format: str
    photos: int
    boxes: int
    annotation_files: int


def refuse_used_folder(out: Path) -> None:
    """Raise :class:`DataError` unless ``out`` is new or an empty folder (checked before
    anything is read, so a refused command costs nothing)."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(
            f"{out}: exists and is not an empty folder; choose another (nothing was written)"
        )


def _new_folder(out: Path) -> None:
    refuse_used_folder(out)
    out.mkdir(parents=True, exist_ok=True)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)


def _coco(s: AnnotatedSet) -> str:
    images, anns = [], []
    for i, p in enumerate(s.photos, start=1):
        images.append({"id": i, "file_name": p.rel, "width": p.size[0], "height": p.size[1]})
        for (x1, y1, x2, y2), label in zip(p.boxes.tolist(), p.labels.tolist(), strict=True):
            w, h = x2 - x1, y2 - y1
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i,
                    "category_id": int(label) + 1,
                    "bbox": [round(v, 3) for v in (x1, y1, w, h)],
                    "area": round(w * h, 3),
                    "iscrowd": 0,
                }
            )
    cats = [{"id": i + 1, "name": c, "supercategory": ""} for i, c in enumerate(s.classes)]
    doc = {
        "info": {"description": f"converted by vitrina from {s.format} ({s.root})"},
        "images": images,
        "annotations": anns,
        "categories": cats,
    }
    return json.dumps(doc, indent=1) + "\n"


def _yolo(p: AnnotatedPhoto) -> str:
    w, h = p.size
    rows = []
    for (x1, y1, x2, y2), label in zip(p.boxes.tolist(), p.labels.tolist(), strict=True):
        cx, cy = (x1 + x2) / 2 / w, (y1 + y2) / 2 / h
        rows.append(f"{label} {cx:.6f} {cy:.6f} {(x2 - x1) / w:.6f} {(y2 - y1) / h:.6f}")
    return "\n".join(rows) + ("\n" if rows else "")


def _voc(p: AnnotatedPhoto, classes: list[str]) -> str:
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = str(Path(p.rel).parent)
    ET.SubElement(root, "filename").text = Path(p.rel).name
    size = ET.SubElement(root, "size")
    ET.SubElement(size, "width").text = str(p.size[0])
    ET.SubElement(size, "height").text = str(p.size[1])
    ET.SubElement(size, "depth").text = "3"
    for (x1, y1, x2, y2), label in zip(p.boxes.tolist(), p.labels.tolist(), strict=True):
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = classes[label]
        ET.SubElement(obj, "difficult").text = "0"
        box = ET.SubElement(obj, "bndbox")
        for tag, v in zip(("xmin", "ymin", "xmax", "ymax"), (x1, y1, x2, y2), strict=True):
            ET.SubElement(box, tag).text = f"{v:g}" if float(v).is_integer() else f"{v:.3f}"
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


def write_annotated(
    s: AnnotatedSet,
    out: str | Path,
    fmt: str,
    *,
    photos: str = "copy",
    on_progress: Progress | None = None,
) -> ConvertResult:
    """Write ``s`` into the new (or empty) folder ``out`` in ``fmt`` (see the module docstring).
    ``photos``: ``copy`` or ``link`` (symbolic links to the sources)."""
    if fmt not in FORMATS:
        from vitrina.registry import suggest

        raise DataError(f"unknown annotation format {fmt!r}{suggest(fmt, FORMATS)}")
    if photos not in ("copy", "link"):
        raise DataError(f"--photos {photos!r}: choose copy or link")
    out = Path(out)
    _new_folder(out)
    images = out / "images"
    n = len(s.photos)
    files = 0
    for k, p in enumerate(s.photos):
        rel = Path(p.rel)
        place_file(p.path, images / rel.parent, method=photos, name=rel.name)
        if fmt == "yolo":
            _write((out / "labels" / rel).with_suffix(".txt"), _yolo(p))
            files += 1
        elif fmt == "voc":
            _write((out / "annotations" / rel).with_suffix(".xml"), _voc(p, s.classes))
            files += 1
        if on_progress:
            on_progress(k + 1, n)
    if fmt == "coco":
        _write(out / "annotations.json", _coco(s))
        files += 1
    else:
        _write(out / "classes.txt", "\n".join(s.classes) + "\n")
    return ConvertResult(s, out, fmt, n, s.num_boxes, files)


def convert_annotated(
    data: str | Path,
    out: str | Path,
    to: str,
    *,
    fmt: str | None = None,
    classes: list[str] | str | Path | None = None,
    photos: str = "copy",
    on_progress: Progress | None = None,
) -> ConvertResult:
    """Read ``data`` (any format, found automatically unless ``fmt``) and write it to the new
    folder ``out`` in format ``to``. Problems of the source are in ``result.source.problems``
    (what was skipped); the converted set holds only the valid boxes."""
    if to not in FORMATS:
        from vitrina.registry import suggest

        raise DataError(f"unknown annotation format {to!r}{suggest(to, FORMATS)}")
    out = Path(out)
    refuse_used_folder(out)
    s = read_annotated(data, fmt=fmt, classes=classes)
    return write_annotated(s, out, to, photos=photos, on_progress=on_progress)
