"""Annotated photos for detection tests, made here: coloured shapes on varied backgrounds, of
sizes other than a network's input (320x240, 500x700), with their true boxes, and annotation
files written by hand in each format (not by vitrina's writers, which the tests check).

from detect_util import make_shapes, write_voc, write_yolo, write_coco
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["CLASSES", "Shot", "make_shapes", "write_coco", "write_voc", "write_yolo"]

#: Another class list than any shared data's: what a shelf of this shop holds.
CLASSES = ("can", "box", "bottle")
_COLORS = {"can": (225, 40, 40), "box": (40, 80, 230), "bottle": (245, 205, 30)}


@dataclass
class Shot:
    """A generated photo and its true boxes ([x1, y1, x2, y2] pixels) and labels."""

    path: Path
    size: tuple[int, int]
    boxes: np.ndarray
    labels: np.ndarray

    @property
    def rel(self) -> str:
        return self.path.name


def make_shapes(
    folder: Path,
    n: int,
    *,
    seed: int = 0,
    sizes: tuple[tuple[int, int], ...] = ((320, 240), (500, 700)),
    max_objects: int = 3,
    empty_every: int = 0,
) -> list[Shot]:
    """``n`` PNG photos in ``folder``: each a noisy background of a random colour with 1 to
    ``max_objects`` shapes (a disc: can, a square: box, a tall bar: bottle), none overlapping
    much; every ``empty_every``-th photo has no object."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    shots = []
    for i in range(n):
        w, h = sizes[i % len(sizes)]
        bg = rng.integers(40, 215, 3)
        a = np.clip(bg + rng.normal(0, 18, (h, w, 3)), 0, 255).astype(np.uint8)
        im = Image.fromarray(a)
        draw = ImageDraw.Draw(im)
        boxes: list[tuple[int, int, int, int]] = []
        labels: list[int] = []
        count = (
            0
            if empty_every and i % empty_every == empty_every - 1
            else rng.integers(1, max_objects + 1)
        )
        for _ in range(200):
            if len(boxes) >= count:
                break
            c = int(rng.integers(0, len(CLASSES)))
            side = int(rng.integers(min(w, h) // 5, min(w, h) // 3))
            bw, bh = (side // 2, side) if CLASSES[c] == "bottle" else (side, side)
            x, y = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
            box = (x, y, x + bw, y + bh)
            if any(_iou(box, b) > 0.05 for b in boxes):
                continue
            shape = draw.ellipse if CLASSES[c] == "can" else draw.rectangle
            shape((x, y, x + bw - 1, y + bh - 1), fill=_COLORS[CLASSES[c]])
            boxes.append(box)
            labels.append(c)
        path = folder / f"shelf{i:03d}.png"
        im.save(path)
        shots.append(
            Shot(path, (w, h), np.array(boxes, np.float32).reshape(-1, 4), np.array(labels))
        )
    return shots


def _iou(a: tuple[int, ...], b: tuple[int, ...]) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def write_voc(shots: list[Shot], ann_dir: Path, classes: tuple[str, ...] = CLASSES) -> None:
    """One Pascal VOC XML per photo in ``ann_dir`` (same stem)."""
    ann_dir.mkdir(parents=True, exist_ok=True)
    for s in shots:
        objects = "".join(
            f"<object><name>{classes[k]}</name><difficult>0</difficult><bndbox>"
            f"<xmin>{b[0]:g}</xmin><ymin>{b[1]:g}</ymin><xmax>{b[2]:g}</xmax><ymax>{b[3]:g}</ymax>"
            "</bndbox></object>"
            for b, k in zip(s.boxes.tolist(), s.labels.tolist(), strict=True)
        )
        xml = (
            f"<annotation><filename>{s.path.name}</filename><size><width>{s.size[0]}</width>"
            f"<height>{s.size[1]}</height><depth>3</depth></size>{objects}</annotation>"
        )
        (ann_dir / f"{s.path.stem}.xml").write_text(xml)


def write_yolo(shots: list[Shot], label_dir: Path) -> None:
    """One YOLO txt per photo in ``label_dir``: ``class cx cy w h`` as fractions."""
    label_dir.mkdir(parents=True, exist_ok=True)
    for s in shots:
        w, h = s.size
        rows = [
            f"{k} {(b[0] + b[2]) / 2 / w:.6f} {(b[1] + b[3]) / 2 / h:.6f} "
            f"{(b[2] - b[0]) / w:.6f} {(b[3] - b[1]) / h:.6f}"
            for b, k in zip(s.boxes.tolist(), s.labels.tolist(), strict=True)
        ]
        (label_dir / f"{s.path.stem}.txt").write_text("\n".join(rows) + "\n")


def write_coco(
    shots: list[Shot], path: Path, images_root: Path, classes: tuple[str, ...] = CLASSES
) -> None:
    """A COCO json: file names relative to ``images_root``, categories numbered from 7 (ids
    need not start at 1)."""
    images, anns = [], []
    for i, s in enumerate(shots):
        images.append(
            {
                "id": 100 + i,
                "file_name": s.path.relative_to(images_root).as_posix(),
                "width": s.size[0],
                "height": s.size[1],
            }
        )
        for b, k in zip(s.boxes.tolist(), s.labels.tolist(), strict=True):
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": 100 + i,
                    "category_id": 7 + k,
                    "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
                    "area": (b[2] - b[0]) * (b[3] - b[1]),
                    "iscrowd": 0,
                }
            )
    cats = [{"id": 7 + k, "name": c} for k, c in enumerate(classes)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
