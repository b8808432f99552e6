"""Where the photos and the annotation files of a set are, and which format they are in.

Three layouts are recognised, whatever the format:

- **side by side**: ``photo.jpg`` next to ``photo.xml`` (Pascal VOC) or ``photo.txt`` (YOLO);
- **parallel trees**: ``images/...`` and ``annotations/...`` (or ``labels/``, ``Annotations/``,
  VOC's ``JPEGImages/``), matched by relative path and name: ``images/beans/B1.png`` ↔
  ``annotations/beans/B1.xml``;
- **COCO**: one ``.json`` (``images``, ``annotations``, ``categories``) at the top or in
  ``annotations/``, its ``file_name``\\ s relative to the json's folder, its ``images/``, or
  the set's ``images/``.

:func:`detect_layout` looks at the files, never at their names alone: a folder of photos
and ``.txt`` files that are not YOLO labels is not taken for YOLO.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from vitrina.data.folder import iter_image_files
from vitrina.errors import DataError

__all__ = [
    "ANNOTATION_DIRS",
    "CLASS_FILES",
    "FORMATS",
    "IMAGE_DIRS",
    "Layout",
    "detect_layout",
    "find_class_file",
    "has_annotations",
]

FORMATS = ("coco", "yolo", "voc")
IMAGE_DIRS = ("images", "JPEGImages", "imgs", "img")
ANNOTATION_DIRS = ("annotations", "Annotations", "labels", "label")
#: Files that hold a class list (one name a line; ``data.yaml``'s ``names``), first found wins.
CLASS_FILES = ("classes.txt", "obj.names", "classes.names", "labels.txt", "data.yaml")
_SUFFIX = {"yolo": ".txt", "voc": ".xml"}


@dataclass(frozen=True)
class Layout:
    """How a set is laid out: ``format``; ``images`` (the photo root: relative paths start
    here); ``annotations`` (the annotation root for VOC/YOLO: the same folder when side by
    side; the json file for COCO)."""

    format: str
    images: Path
    annotations: Path

    @property
    def side_by_side(self) -> bool:
        return self.format != "coco" and self.images == self.annotations

    def annotation_of(self, rel: str) -> Path:
        """The annotation file a photo (relative path) would have (VOC, YOLO)."""
        return (self.annotations / rel).with_suffix(_SUFFIX[self.format])

    def describe(self) -> str:
        if self.format == "coco":
            return f"COCO json {self.annotations}, photos under {self.images}"
        name = {"yolo": "YOLO txt", "voc": "Pascal VOC xml"}[self.format]
        if self.side_by_side:
            return f"{name} files next to the photos in {self.images}"
        return f"{name} files in {self.annotations}, photos in {self.images}"


def _subdir(root: Path, names: tuple[str, ...]) -> Path | None:
    for n in names:
        if (root / n).is_dir():
            return root / n
    return None


def _is_coco(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8") as f:
            head = f.read(1 << 16)
    except (OSError, UnicodeDecodeError):
        return False
    # Cheap first: the keys of a COCO file appear early; then parse to be sure.
    if '"images"' not in head and '"annotations"' not in head:
        return False
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return True  # looks like COCO but is corrupt: the reader names the problem
    return isinstance(d, dict) and "images" in d and "annotations" in d


def _coco_files(root: Path) -> list[Path]:
    found = []
    for folder in (root, root / "annotations", root / "Annotations"):
        if folder.is_dir():
            found += [p for p in sorted(folder.glob("*.json")) if _is_coco(p)]
    return found


def _coco_images(json_file: Path, root: Path) -> Path:
    for cand in (
        json_file.parent / "images",
        root / "images",
        json_file.parent.parent / "images",
        root,
    ):
        if cand.is_dir():
            return cand
    return json_file.parent


def _is_yolo_line(line: str) -> bool:
    parts = line.split()
    if len(parts) < 5:
        return False
    try:
        int(parts[0])
        vals = [float(v) for v in parts[1:5]]
    except ValueError:
        return False
    return all(-0.5 <= v <= 1.5 for v in vals)


def _looks_yolo(txt: Path) -> bool:
    """An empty file (a photo without objects) or one whose first line is a YOLO row."""
    try:
        with open(txt, encoding="utf-8", errors="replace") as f:
            first = next((ln for ln in f if ln.strip()), "")
    except OSError:
        return False
    return not first or _is_yolo_line(first)


def _count_matches(images: Path, photos: list[Path], annotations: Path) -> dict[str, int]:
    """How many photos have a VOC / YOLO annotation file where the layout says."""
    counts = {"voc": 0, "yolo": 0}
    for p in photos:
        rel = p.relative_to(images)
        base = annotations / rel
        if base.with_suffix(".xml").is_file():
            counts["voc"] += 1
        txt = base.with_suffix(".txt")
        if txt.is_file() and _looks_yolo(txt):
            counts["yolo"] += 1
    return counts


def _annotation_files(folder: Path, suffix: str) -> int:
    n = 0
    for _, _, files in os.walk(folder):
        n += sum(1 for f in files if f.endswith(suffix) and not f.startswith("."))
    return n


def detect_layout(data: str | Path, fmt: str | None = None) -> Layout:
    """Find the format and layout of an annotated set (``data``: its folder, or a COCO
    ``.json``). ``fmt`` forces a format (``coco``, ``yolo``, ``voc``).

    Raises:
        DataError: no such folder, no photos, or no annotation files in a known format.
    """
    data = Path(data)
    if fmt is not None and fmt not in FORMATS:
        from vitrina.registry import suggest

        raise DataError(f"unknown annotation format {fmt!r}{suggest(fmt, FORMATS)}")
    if data.is_file():
        if data.suffix.lower() != ".json":
            raise DataError(f"{data}: give a folder of annotated photos, or a COCO .json file")
        return Layout("coco", _coco_images(data, data.parent), data)
    if not data.exists():
        raise DataError(f"{data}: folder not found")
    if not data.is_dir():
        raise DataError(f"{data}: not a folder")

    if fmt in (None, "coco"):
        cocos = _coco_files(data)
        if len(cocos) > 1:
            names = ", ".join(p.name for p in cocos)
            raise DataError(
                f"{data}: several COCO files ({names}); give the one to use (DATA/file.json)"
            )
        if cocos:
            return Layout("coco", _coco_images(cocos[0], data), cocos[0])
        if fmt == "coco":
            raise DataError(f"{data}: no COCO .json file (with images and annotations) found")

    images = _subdir(data, IMAGE_DIRS) or data
    photos = iter_image_files(images, recursive=True)[0]
    if not photos:
        raise DataError(f"{data}: no photos found (an empty folder?)")
    candidates = [data] if images == data else []
    tree = _subdir(data, ANNOTATION_DIRS)
    if tree is not None:
        candidates.insert(0, tree)
    if images != data:
        candidates.append(images)  # side by side inside images/
    best: tuple[int, str, Path] | None = None
    for ann in candidates:
        counts = _count_matches(images, photos, ann)
        for name in ("voc", "yolo"):
            if fmt not in (None, name):
                continue
            n = counts[name]
            if n and (best is None or n > best[0]):
                best = (n, name, ann)
    if best is None and tree is not None:
        # Annotation files exist but match no photo: say so rather than "none found".
        for name, suffix in _SUFFIX.items():
            if fmt in (None, name) and _annotation_files(tree, suffix):
                raise DataError(
                    f"{tree}: {suffix} files found, but none matches a photo in {images} by "
                    "relative path and name (images/a/b.jpg <-> "
                    f"{tree.name}/a/b{suffix})"
                )
    if best is None:
        wanted = {"coco": "COCO .json", "yolo": "YOLO .txt", "voc": "Pascal VOC .xml"}
        what = wanted[fmt] if fmt else "COCO .json, YOLO .txt or Pascal VOC .xml"
        raise DataError(
            f"{data}: {len(photos)} photos but no {what} annotations next to them or in "
            "annotations/ or labels/"
        )
    return Layout(best[1], images, best[2])


def has_annotations(data: str | Path) -> bool:
    """Whether ``data`` looks like annotated photos (a COCO json, an annotation tree, or
    photos with a ``.xml`` / YOLO ``.txt`` beside them), not a folder of class folders."""
    data = Path(data)
    if data.is_file():
        return data.suffix.lower() == ".json"
    if not data.is_dir():
        return False
    if _coco_files(data) or _subdir(data, ANNOTATION_DIRS) is not None:
        return True
    images = _subdir(data, IMAGE_DIRS) or data
    photos = iter_image_files(images, recursive=True)[0][:500]
    counts = _count_matches(images, photos, images)
    return bool(counts["voc"] or counts["yolo"])


def find_class_file(layout: Layout, root: Path) -> Path | None:
    """The class list of a YOLO or VOC set: the first of :data:`CLASS_FILES` in the set's
    folder, its annotation folder or its photo folder."""
    folders = [root, layout.annotations, layout.images]
    if layout.annotations.is_file():
        folders[1] = layout.annotations.parent
    for folder in folders:
        for name in CLASS_FILES:
            p = folder / name
            if p.is_file():
                return p
    return None
