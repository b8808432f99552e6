"""Fuzz the detection annotation readers (vitrina.data.annotations.read_annotated): COCO JSON,
YOLO txt (with and without a class list), Pascal VOC XML, and YOLO's data.yaml class list.

Each input is one annotation file for a fixed small set (two photos, 20x16 and 9x30, under a
scratch folder): its first byte picks the format, the rest is the file's text.

Oracle: only DataError escapes (one line naming a file); a set that is read holds only photos
inside its folder, with a real size, every box finite with x1 < x2 and y1 < y2 inside the
photo, every label an index into the class list, and class names that a class list file can
hold and give back (distinct, non-empty, one line each without surrounding blanks).
"""

from __future__ import annotations

import atexit
import math
import shutil
import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["vitrina"]):
    from _common import write_annotation_set

    from vitrina.data.annotations import read_annotated
    from vitrina.errors import DataError

FORMATS = ("coco", "yolo", "yolo-no-classes", "voc", "yolo-yaml")
_ROOT: Path | None = None


def _root() -> Path:
    global _ROOT
    if _ROOT is None:
        _ROOT = Path(tempfile.mkdtemp(prefix="vitrina-fuzz-ann-"))
        atexit.register(shutil.rmtree, _ROOT, ignore_errors=True)
    return _ROOT


def write_case(data: bytes, root: Path) -> tuple[Path, str]:
    """Lay out ``data`` (first byte: the format) as an annotated set under ``root``; returns
    (what to read, the format)."""
    kind = FORMATS[data[0] % len(FORMATS)] if data else FORMATS[0]
    return write_annotation_set(root, kind, data[1:]), kind.split("-")[0]


def check_set(s, root: Path) -> None:
    """The oracle for a set that was read (shared with tests/test_fuzz_regressions.py)."""
    base = root.resolve()
    assert len(set(s.classes)) == len(s.classes), f"a class named twice: {s.classes!r}"
    for c in s.classes:
        assert isinstance(c, str) and c and c == c.strip() and len(c.splitlines()) == 1, (
            f"class name {c!r} cannot be written back as a line of a class list"
        )
    for p in s.photos:
        assert p.path.resolve().is_relative_to(base), f"photo outside the set: {p.path}"
        w, h = p.size
        assert w > 0 and h > 0
        for (x1, y1, x2, y2), label in zip(p.boxes.tolist(), p.labels.tolist(), strict=True):
            assert all(math.isfinite(v) for v in (x1, y1, x2, y2)), (x1, y1, x2, y2)
            assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h, ((x1, y1, x2, y2), (w, h))
            assert 0 <= label < len(s.classes), (label, s.classes)
    for pr in s.problems:
        assert "\n" not in pr.message, pr.message


def check(data: bytes) -> None:
    root = _root()
    target, fmt = write_case(data, root)
    try:
        s = read_annotated(target, fmt=fmt)
    except DataError as e:
        assert "\n" not in str(e), str(e)
        return
    check_set(s, root)


def main() -> None:
    atheris.Setup(sys.argv, lambda data: check(bytes(data)))
    atheris.Fuzz()


if __name__ == "__main__":
    main()
