"""Each annotated box as a photo in a class folder (``vitrina data crops``).

The output is a class-folder tree, ``OUT/<class>/<photo>-<k>.png``, that every part-one
command reads: ``vitrina train OUT`` makes the classifier that names a detector's boxes
(``vitrina detect predict RUN --classifier``), ``vitrina index`` a catalogue of products.
The crops are lossless PNGs of the photo's own pixels, widened by ``margin`` of the box's
side on each edge (clipped to the photo) when asked: a classifier that will see a
detector's loose boxes learns from boxes as loose. Boxes under ``min_side`` pixels and
photos that cannot be read are counted and named, and the run goes on.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from vitrina.data.annotations.read import read_annotated
from vitrina.data.annotations.types import AnnotatedSet
from vitrina.data.annotations.write import refuse_used_folder
from vitrina.errors import DataError, ImageReadError
from vitrina.io import read_image, save_new_image

__all__ = ["CropsResult", "crop_annotated", "crop_box", "safe_folder_name", "write_crops"]


def safe_folder_name(name: str) -> str:
    """A class name as a folder name (no separators, not hidden, not empty)."""
    s = re.sub(r"[\\/\x00]", "_", name).strip()
    return s.lstrip(".") or "_"


def crop_box(
    size: tuple[int, int], box: tuple[float, ...] | list[float], margin: float = 0.0
) -> tuple[int, int, int, int] | None:
    """The whole-pixel rectangle of ``box`` (left, top, right, bottom) widened by ``margin``
    of its width and height on each side, clipped to a photo of ``size`` (width, height);
    ``None`` when nothing of it is left."""
    w, h = size
    x1, y1, x2, y2 = (float(v) for v in box)
    mx, my = margin * (x2 - x1), margin * (y2 - y1)
    left, top = max(0, math.floor(x1 - mx)), max(0, math.floor(y1 - my))
    right, bottom = min(w, math.ceil(x2 + mx)), min(h, math.ceil(y2 + my))
    if right <= left or bottom <= top:
        return None
    return left, top, right, bottom


@dataclass
class CropsResult:
    """What :func:`write_crops` wrote: crops per class, and what it skipped (named)."""

    out: Path
    per_class: dict[str, int]
    too_small: int = 0
    unreadable: list[str] = field(default_factory=list)

    @property
    def crops(self) -> int:
        return sum(self.per_class.values())


def write_crops(
    s: AnnotatedSet,
    out: str | Path,
    *,
    margin: float = 0.0,
    min_side: int = 8,
    on_progress: Callable[[int, int], None] | None = None,
) -> CropsResult:
    """Write every box of ``s`` as ``out/<class>/<photo>-<k>.png`` (see the module);
    ``out`` must be new or empty. Nothing that exists is overwritten."""
    if not 0 <= margin <= 1:
        raise DataError(f"--margin {margin}: give a fraction of the box's side, 0 to 1")
    if min_side < 1:
        raise DataError(f"--min-side {min_side}: give at least 1 pixel")
    out = Path(out)
    refuse_used_folder(out)
    out.mkdir(parents=True, exist_ok=True)
    counts: Counter[str] = Counter()
    res = CropsResult(out, {})
    n = len(s.photos)
    for i, p in enumerate(s.photos):
        if len(p.boxes):
            try:
                photo = read_image(p.path)
            except (ImageReadError, OSError) as e:
                res.unreadable.append(str(e) if isinstance(e, ImageReadError) else f"{p.path}: {e}")
                photo = None
            stem = re.sub(r"[\\/]", "__", str(Path(p.rel).with_suffix("")))
            for k, (box, label) in enumerate(zip(p.boxes, p.labels.tolist(), strict=True)):
                if photo is None:
                    break
                rect = crop_box(photo.size, box, margin)
                if rect is None or min(rect[2] - rect[0], rect[3] - rect[1]) < min_side:
                    res.too_small += 1
                    continue
                name = safe_folder_name(s.classes[label])
                save_new_image(photo.crop(rect), out / name / f"{stem}-{k}.png")
                counts[s.classes[label]] += 1
        if on_progress:
            on_progress(i + 1, n)
    res.per_class = {c: counts[c] for c in s.classes if counts[c]}
    return res


def crop_annotated(
    data: str | Path,
    out: str | Path,
    *,
    fmt: str | None = None,
    classes: list[str] | str | Path | None = None,
    margin: float = 0.0,
    min_side: int = 8,
    on_progress: Callable[[int, int], None] | None = None,
) -> tuple[AnnotatedSet, CropsResult]:
    """Read ``data`` (any format, found automatically unless ``fmt``) and write its boxes as
    crops into the new folder ``out`` (:func:`write_crops`). The set comes back too: its
    ``problems`` are the boxes skipped while reading."""
    refuse_used_folder(Path(out))
    s = read_annotated(data, fmt=fmt, classes=classes)
    return s, write_crops(s, out, margin=margin, min_side=min_side, on_progress=on_progress)
