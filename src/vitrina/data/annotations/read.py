"""Read an annotated photo set in COCO JSON, YOLO txt or Pascal VOC XML into one shape.

:func:`read_annotated` finds the layout and format (:mod:`.layout`), reads the class list,
reads every annotation file, and checks every box against its photo's real size (from the
photo's header). Nothing bad stops the read unless nothing is left: an unreadable photo, a
corrupt annotation file or line, a box of zero size or outside the photo, a class missing
from the list each become a :class:`~vitrina.data.annotations.types.Problem` naming the file,
and the rest is read.

Coordinates as each format has them: VOC ``xmin ymin xmax ymax`` and COCO ``[x, y, w, h]``
are taken as pixel coordinates (a VOC box ``0 0 224 224`` covers a 224x224 photo); YOLO's
centre and size are fractions of the photo's width and height.
"""

from __future__ import annotations

import json
import math
import os
import xml.etree.ElementTree as ET  # nosec B405 - see _voc_objects: expat >= 2.4 refuses entity blow-ups, no external entities
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from vitrina.data.annotations.layout import (
    CLASS_FILES,
    Layout,
    detect_layout,
    find_class_file,
)
from vitrina.data.annotations.types import AnnotatedPhoto, AnnotatedSet, Problem
from vitrina.data.folder import iter_image_files
from vitrina.errors import DataError, ImageReadError
from vitrina.io import image_size

__all__ = ["read_annotated", "read_class_list"]

#: Boxes reaching past the photo's edge by at most this many pixels are clipped silently
#: (VOC's inclusive, 1-based corners overshoot by one); beyond it the clip is reported.
CLIP_SLACK = 1.0

#: Without a class list, YOLO classes are named by number up to the largest one found; past
#: this many, the number is taken for a damaged line rather than a class.
MAX_UNNAMED_CLASSES = 100_000

Progress = Callable[[int, int], None]
# (x1, y1, x2, y2, class name or index, where: "object 3" / "line 7")
RawBox = tuple[float, float, float, float, Any, str]


def read_class_list(path: str | Path) -> list[str]:
    """Class names from a file: one a line (``classes.txt``, ``obj.names``) or the ``names``
    of a YOLO ``data.yaml`` (a list, or a mapping from index to name).

    Raises:
        DataError: unreadable, empty, or with a name twice.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read the class list ({e})") from None
    names = _yaml_names(text, path) if path.suffix in (".yaml", ".yml") else _lines(text)
    return _checked_names(names, path)


def _checked_names(names: list[str], path: Path) -> list[str]:
    """``names`` if they can be a class list: some, distinct, each non-empty and one line
    (conversions write them one a line; a blank or a line break would shift every label)."""
    if not names:
        raise DataError(f"{path}: the class list is empty")
    seen: set[str] = set()
    for k, n in enumerate(names):
        if not n:
            raise DataError(f"{path}: class {k} has an empty name")
        if len(n.splitlines()) != 1 or n != n.strip():
            raise DataError(f"{path}: class {k} ({n!r}) is not a one-line name")
        if n in seen:
            raise DataError(f"{path}: class {n!r} is listed twice")
        seen.add(n)
    return names


def _lines(text: str) -> list[str]:
    return [ln.strip() for ln in text.splitlines() if ln.strip()]


def _yaml_names(text: str, path: Path) -> list[str]:
    """``names:`` of a YOLO data.yaml: ``[a, b]``, a block list ``- a``, or ``0: a`` rows."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if not line.startswith("names:"):
            continue
        rest = line.split(":", 1)[1].strip()
        if rest.startswith("["):
            return [_unquote(v) for v in rest.strip("[]").split(",") if v.strip()]
        indexed: dict[int, str] = {}
        listed: list[str] = []
        for row in lines[i + 1 :]:
            if row.strip() and not row.startswith((" ", "\t", "-")):
                break
            s = row.strip()
            if s.startswith("- "):
                listed.append(_unquote(s[2:]))
            elif ":" in s:
                k, v = s.split(":", 1)
                try:
                    indexed[int(k)] = _unquote(v)
                except ValueError:
                    break
        if indexed:
            if sorted(indexed) != list(range(len(indexed))):
                gap = min(set(range(len(indexed))) - set(indexed))
                raise DataError(
                    f"{path}: 'names:' numbers its classes {min(indexed)}..{max(indexed)} with "
                    f"{gap} missing; YOLO class numbers run 0, 1, 2, ... without gaps"
                )
            return [indexed[k] for k in sorted(indexed)]
        return listed
    raise DataError(f"{path}: no 'names:' list of classes in it")


def _unquote(v: str) -> str:
    return v.strip().strip("'\"")


# ---------------------------------------------------------------------------- boxes
def _check(
    raw: Iterable[RawBox],
    size: tuple[int, int],
    file: Path,
    index: dict[str, int] | None,
    num_classes: int,
    problems: list[Problem],
) -> tuple[np.ndarray, np.ndarray]:
    """Keep the boxes that lie in the photo with an area, clipped to it; report the rest."""
    w, h = size
    boxes, labels = [], []
    for x1, y1, x2, y2, cls, where in raw:
        coords = f"({x1:g}, {y1:g}, {x2:g}, {y2:g})"
        if index is not None:
            label = index.get(str(cls))
            if label is None:
                problems.append(
                    Problem(
                        file,
                        "unknown class",
                        f"{file}: {where}: class {cls!r} is not in the class list; box skipped",
                    )
                )
                continue
        else:
            label = int(cls)
            if not 0 <= label < num_classes:
                problems.append(
                    Problem(
                        file,
                        "unknown class",
                        f"{file}: {where}: class {label} is not in the class list "
                        f"(0..{num_classes - 1}); box skipped",
                    )
                )
                continue
        if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
            problems.append(
                Problem(file, "corrupt annotation", f"{file}: {where}: box {coords} is not finite")
            )
            continue
        if x2 <= x1 or y2 <= y1:
            problems.append(
                Problem(
                    file,
                    "zero-size box",
                    f"{file}: {where}: box {coords} has no {'width' if x2 <= x1 else 'height'}; "
                    "skipped",
                )
            )
            continue
        cx1, cy1, cx2, cy2 = max(x1, 0.0), max(y1, 0.0), min(x2, float(w)), min(y2, float(h))
        if cx2 <= cx1 or cy2 <= cy1:
            problems.append(
                Problem(
                    file,
                    "box outside the photo",
                    f"{file}: {where}: box {coords} lies outside the {w}x{h} photo; skipped",
                )
            )
            continue
        overshoot = max(-x1, -y1, x2 - w, y2 - h)
        if overshoot > CLIP_SLACK:
            problems.append(
                Problem(
                    file,
                    "clipped box",
                    f"{file}: {where}: box {coords} reaches {overshoot:g} px past the edge of "
                    f"the {w}x{h} photo; clipped to it",
                )
            )
        boxes.append((cx1, cy1, cx2, cy2))
        labels.append(label)
    return (
        np.asarray(boxes, np.float32).reshape(-1, 4),
        np.asarray(labels, np.int64).reshape(-1),
    )


# ---------------------------------------------------------------------------- VOC
def _voc_objects(path: Path, problems: list[Problem]) -> tuple[list[RawBox], tuple[int, int]]:
    """(boxes with class names, the size the file states or (0, 0))."""
    try:
        # ElementTree never fetches external entities or DTDs, and the expat it runs on
        # (>= 2.4.1, Python 3.11's) stops entity-expansion attacks (billion laughs).
        root = ET.parse(path).getroot()  # nosec B314 - expat >= 2.4.1, no external entities
    except (ET.ParseError, OSError, UnicodeDecodeError) as e:
        problems.append(
            Problem(path, "corrupt annotation", f"{path}: not a readable VOC XML file ({e})")
        )
        return [], (0, 0)
    if root.tag != "annotation":
        problems.append(
            Problem(path, "corrupt annotation", f"{path}: not a VOC annotation (<{root.tag}>)")
        )
        return [], (0, 0)
    stated = (0, 0)
    size = root.find("size")
    if size is not None:
        stated = (_stated(size.findtext("width")), _stated(size.findtext("height")))
    raw: list[RawBox] = []
    for k, obj in enumerate(root.iter("object"), start=1):
        name = (obj.findtext("name") or "").strip()
        box = obj.find("bndbox")
        try:
            if not name or len(name.splitlines()) != 1:
                raise ValueError(f"class name {name!r} is not one line of text")
            if box is None:
                raise ValueError("no <bndbox>")
            coords = [float(box.findtext(t, "")) for t in ("xmin", "ymin", "xmax", "ymax")]
        except ValueError as e:
            problems.append(
                Problem(path, "corrupt annotation", f"{path}: object {k} ({name!r}): bad box ({e})")
            )
            continue
        raw.append((*coords, name, f"object {k} ({name})"))
    return raw, stated


# ---------------------------------------------------------------------------- YOLO
def _yolo_rows(path: Path, size: tuple[int, int], problems: list[Problem]) -> list[RawBox]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        problems.append(Problem(path, "corrupt annotation", f"{path}: unreadable ({e})"))
        return []
    w, h = size
    raw: list[RawBox] = []
    for n, line in enumerate(text.splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        try:
            cls = int(parts[0])
            vals = [float(v) for v in parts[1:]]
            if len(vals) in (4, 5):  # cx cy w h [confidence]
                cx, cy, bw, bh = vals[:4]
                x1, x2 = (cx - bw / 2) * w, (cx + bw / 2) * w
                y1, y2 = (cy - bh / 2) * h, (cy + bh / 2) * h
            elif len(vals) >= 6 and len(vals) % 2 == 0:  # a segmentation polygon
                xs, ys = vals[0::2], vals[1::2]
                x1, x2, y1, y2 = min(xs) * w, max(xs) * w, min(ys) * h, max(ys) * h
            else:
                raise ValueError(f"{len(parts)} values")
        except ValueError:
            problems.append(
                Problem(
                    path,
                    "corrupt annotation",
                    f"{path}: line {n}: not 'class cx cy w h' ({line.strip()[:60]!r}); skipped",
                )
            )
            continue
        raw.append((x1, y1, x2, y2, cls, f"line {n}"))
    return raw


# ---------------------------------------------------------------------------- folders
def _photo_size(path: Path, problems: list[Problem]) -> tuple[int, int] | None:
    try:
        return image_size(path)
    except ImageReadError as e:
        problems.append(Problem(path, "unreadable photo", f"{e}; photo skipped"))
        return None


def _orphans(layout: Layout, rels: set[str], problems: list[Problem]) -> None:
    """Annotation files whose photo is missing (VOC, YOLO)."""
    suffix = ".xml" if layout.format == "voc" else ".txt"
    stems = {str(Path(r).with_suffix("")) for r in rels}
    for dirpath, dirnames, files in os.walk(layout.annotations):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(files):
            if not name.endswith(suffix) or name.startswith(".") or name in CLASS_FILES:
                continue
            p = Path(dirpath) / name
            rel = str(p.relative_to(layout.annotations).with_suffix(""))
            if rel in stems:
                continue
            if layout.side_by_side and layout.format == "yolo":
                continue  # text files next to photos may be anything (notes, READMEs)
            problems.append(
                Problem(
                    p,
                    "annotation without photo",
                    f"{p}: no photo {rel}.* in {layout.images}; skipped",
                )
            )


def _classes_for(
    layout: Layout, root: Path, classes: list[str] | str | Path | None, notes: list[str]
) -> list[str] | None:
    if classes is not None and not isinstance(classes, list | tuple):
        notes.append(f"classes from {classes}")
        return read_class_list(classes)
    if classes is not None:
        return list(classes)
    found = find_class_file(layout, root)
    if found is not None:
        notes.append(f"classes from {found}")
        return read_class_list(found)
    return None


def _read_files(
    layout: Layout,
    root: Path,
    classes: list[str] | None,
    on_progress: Progress | None,
    problems: list[Problem],
    notes: list[str],
) -> tuple[list[str], list[AnnotatedPhoto]]:
    paths = iter_image_files(layout.images, recursive=True)[0]
    n = len(paths)
    entries: list[tuple[Path, str, tuple[int, int], list[RawBox], Path | None]] = []
    names_seen: list[str] = []
    for k, path in enumerate(paths):
        rel = path.relative_to(layout.images).as_posix()
        size = _photo_size(path, problems)
        if size is not None:
            ann = layout.annotation_of(rel)
            raw: list[RawBox] = []
            if not ann.is_file():
                entries.append((path, rel, size, [], None))
            elif layout.format == "voc":
                raw, stated = _voc_objects(ann, problems)
                if all(stated) and stated != size:
                    problems.append(
                        Problem(
                            ann,
                            "size mismatch",
                            f"{ann}: says the photo is {stated[0]}x{stated[1]}, it is "
                            f"{size[0]}x{size[1]}; boxes read as given, checked against the photo",
                        )
                    )
                names_seen += [str(r[4]) for r in raw]
                entries.append((path, rel, size, raw, ann))
            else:
                entries.append((path, rel, size, _yolo_rows(ann, size, problems), ann))
        if on_progress:
            on_progress(k + 1, n)
    if classes is None:
        if layout.format == "voc":
            classes = sorted(set(names_seen))
            notes.append("no class list: classes are the object names found, sorted")
        else:
            top = max((int(r[4]) for e in entries for r in e[3]), default=-1)
            if top >= MAX_UNNAMED_CLASSES:
                raise DataError(
                    f"{root}: class number {top} and no class list; give one "
                    "(classes.txt, obj.names or data.yaml) or --classes"
                )
            classes = [str(i) for i in range(top + 1)]
            notes.append(
                "no class list (classes.txt, obj.names or data.yaml): YOLO classes named by number"
            )
    index = {c: i for i, c in enumerate(classes)} if layout.format == "voc" else None
    photos = []
    for path, rel, size, raw, ann in entries:
        where = ann if ann is not None else path
        boxes, labels = _check(raw, size, where, index, len(classes), problems)
        photos.append(AnnotatedPhoto(path, rel, size, boxes, labels, ann))
    _orphans(layout, {p.relative_to(layout.images).as_posix() for p in paths}, problems)
    return classes, photos


def _read_coco(
    layout: Layout,
    classes: list[str] | None,
    on_progress: Progress | None,
    problems: list[Problem],
    notes: list[str],
) -> tuple[list[str], list[AnnotatedPhoto]]:
    path = layout.annotations
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
        images, anns = d["images"], d["annotations"]
        cats = d.get("categories") or []
        if not isinstance(images, list) or not isinstance(anns, list):
            raise TypeError("images and annotations must be lists")
    except (OSError, ValueError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise DataError(f"{path}: not a readable COCO file ({type(e).__name__}: {e})") from None
    if not isinstance(cats, list):
        raise DataError(f"{path}: 'categories' is not a list")
    cat_names: dict[Any, str] = {}
    for c in cats:
        if isinstance(c, dict) and _is_id(c.get("id")):
            cat_names[c["id"]] = str(c.get("name", c["id"])).strip()
    if classes is None:
        ids = sorted(cat_names, key=lambda v: (str(type(v)), v))
        classes = _checked_names([cat_names[k] for k in ids], path)
    index = {c: i for i, c in enumerate(classes)}
    by_image: dict[Any, list[RawBox]] = {}
    crowd = 0
    for k, a in enumerate(anns, start=1):
        try:
            if not isinstance(a["bbox"], list):
                raise TypeError("bbox is not a list")
            x, y, bw, bh = (float(v) for v in a["bbox"])
            image_id = a["image_id"]
            cat = a["category_id"]
            if not (_is_id(image_id) and _is_id(cat)):
                raise TypeError("image_id and category_id must be numbers or strings")
        except (KeyError, TypeError, ValueError):
            problems.append(
                Problem(
                    path, "corrupt annotation", f"{path}: annotation {k}: no valid bbox; skipped"
                )
            )
            continue
        if a.get("iscrowd"):
            crowd += 1
            continue
        name = cat_names.get(cat, f"category {cat}")
        label = f"annotation {a.get('id', k)!r}"
        by_image.setdefault(image_id, []).append((x, y, x + bw, y + bh, name, label))
    if crowd:
        notes.append(f"{crowd} crowd regions (iscrowd) left out: they are not single objects")
    photos = []
    n = len(images)
    known_ids = set()
    for k, im in enumerate(images):
        try:
            file_name = str(im["file_name"])
            image_id = im["id"]
            if not _is_id(image_id):
                raise TypeError("id must be a number or a string")
        except (KeyError, TypeError):
            problems.append(
                Problem(
                    path, "corrupt annotation", f"{path}: image entry {k + 1} has no file_name/id"
                )
            )
            continue
        known_ids.add(image_id)
        photo = _coco_photo(layout, file_name)
        if photo is None:
            problems.append(
                Problem(
                    path,
                    "annotation without photo",
                    f"{path}: image {file_name!r}: no such photo under {layout.images}; skipped",
                )
            )
            continue
        size = _photo_size(photo, problems)
        if size is not None:
            stated = (_stated(im.get("width")), _stated(im.get("height")))
            if all(stated) and stated != size:
                problems.append(
                    Problem(
                        path,
                        "size mismatch",
                        f"{path}: image {file_name!r}: says {stated[0]}x{stated[1]}, the photo is "
                        f"{size[0]}x{size[1]}; boxes checked against the photo",
                    )
                )
            raw = [(*r[:4], r[4], f"{file_name!r}: {r[5]}") for r in by_image.get(image_id, [])]
            boxes, labels = _check(raw, size, path, index, len(classes), problems)
            rel = _rel_to(photo, layout.images)
            photos.append(AnnotatedPhoto(photo, rel, size, boxes, labels, path))
        if on_progress:
            on_progress(k + 1, n)
    stray = sum(len(v) for i, v in by_image.items() if i not in known_ids)
    if stray:
        problems.append(
            Problem(
                path,
                "corrupt annotation",
                f"{path}: {stray} annotations point to an image id not in 'images'; skipped",
            )
        )
    return classes, photos


def _is_id(v: Any) -> bool:
    """A COCO id: a number or a string (a list or a mapping cannot key anything)."""
    return isinstance(v, int | float | str)


def _stated(v: Any) -> int:
    """A size a file states (``"640"``, ``640.0``); 0 when it is missing or not a size."""
    try:
        n = int(float(v))
    except (TypeError, ValueError, OverflowError):
        return 0
    return n if n > 0 else 0


def _coco_photo(layout: Layout, file_name: str) -> Path | None:
    rel = Path(file_name)
    if rel.is_absolute() or ".." in rel.parts:
        return None  # never read outside the set
    for base in (layout.images, layout.annotations.parent, layout.annotations.parent / "images"):
        p = base / rel
        if p.is_file():
            return p
    return None


def _rel_to(path: Path, base: Path) -> str:
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return path.name


def read_annotated(
    data: str | Path,
    *,
    fmt: str | None = None,
    classes: list[str] | str | Path | None = None,
    on_progress: Progress | None = None,
) -> AnnotatedSet:
    """Read an annotated photo set (a folder, or a COCO ``.json``) in any of the three formats.

    Args:
        data: the set's folder (photos and annotations side by side or in parallel trees), or
            a COCO json file.
        fmt: ``coco``, ``yolo`` or ``voc`` to skip detection.
        classes: the class list (names, or a file of them); default: the set's own
            (``classes.txt``, ``obj.names``, ``data.yaml``, COCO categories, or the VOC names
            found).
        on_progress: ``(done, total)`` after each photo.

    Raises:
        DataError: no photos, no annotations, an unreadable COCO file or class list, or no
            photo left to use (one line naming the folder or file).
    """
    layout = detect_layout(data, fmt)
    root = Path(data) if Path(data).is_dir() else Path(data).parent
    problems: list[Problem] = []
    notes = [f"layout: {layout.describe()}"]
    wanted = _classes_for(layout, root, classes, notes)
    if layout.format == "coco":
        names, photos = _read_coco(layout, wanted, on_progress, problems, notes)
    else:
        names, photos = _read_files(layout, root, wanted, on_progress, problems, notes)
    if not photos:
        first = f" (first problem: {problems[0].message})" if problems else ""
        raise DataError(f"{data}: no readable annotated photo{first}")
    return AnnotatedSet(root, layout.format, names, photos, problems, notes)
