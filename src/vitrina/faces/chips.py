"""Aligned face chips of a folder of identity folders: the training set of a face embedding.

``vitrina faces chips PHOTOS OUT`` reads ``PHOTOS/<person>/**/<photo>``, finds the faces of
every photo with the face pipeline's detector, keeps the largest, aligns it on its 5 landmarks
(the chip the gallery stores and the embedder sees) and writes ``OUT/<person>/<photo>.png``.
``OUT`` is then a folder of identities for ``vitrina train-embedding`` (or ``data to-market``),
so a face embedding is one command away from a folder of photos.

Nothing the user owns is touched: ``PHOTOS`` is only read, ``OUT`` must be new or empty (and
outside ``PHOTOS``), every chip is written under a temporary name and renamed. Photos that
cannot be read, or hold no face, are listed in the report (and in ``OUT/chips.json``), not
fatal. The work runs on the engine (:class:`~vitrina.faces.task.FaceTask` without describing:
find and align only, in the engine's decode workers).
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vitrina.data.identities import FACE_CHIPS_FORMAT, FACE_CHIPS_MANIFEST
from vitrina.errors import DataError

__all__ = ["CHIPS_MANIFEST", "ChipsReport", "write_face_chips"]

#: The manifest written into ``OUT``: settings, and each chip's source photo and face box.
CHIPS_MANIFEST = FACE_CHIPS_MANIFEST  # the name every layer reads (vitrina.data.identities)
_PHOTOS_PER_BATCH = 8

PathLike = str | os.PathLike[str]


@dataclass
class ChipsReport:
    """What :func:`write_face_chips` wrote.

    ``chips``: chip path (relative to ``out``) -> source photo (relative to the photos folder);
    ``no_face`` and ``unreadable`` (with the reason): photos that gave no chip;
    ``several_faces``: photos with more than one face (their largest was kept)."""

    out: Path
    identities: int
    photos: int
    chips: dict[str, str] = field(default_factory=dict)
    no_face: list[Path] = field(default_factory=list)
    unreadable: list[tuple[Path, str]] = field(default_factory=list)
    several_faces: list[Path] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def written(self) -> int:
        return len(self.chips)

    def to_dict(self) -> dict[str, Any]:
        return {
            "out": str(self.out),
            "identities": self.identities,
            "photos": self.photos,
            "written": self.written,
            "no_face": [str(p) for p in self.no_face],
            "unreadable": [{"path": str(p), "error": e} for p, e in self.unreadable],
            "several_faces": [str(p) for p in self.several_faces],
            "settings": self.settings,
        }


def _check_out(photos: Path, out: Path) -> None:
    s, d = photos.resolve(), out.resolve()
    if d == s or s in d.parents:
        raise DataError(f"{out}: the output must be outside the photos folder {photos}")
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder; choose an empty or new folder")
    if out.is_dir() and any(os.scandir(out)):
        raise DataError(
            f"{out}: folder is not empty; choose an empty or new folder (nothing written)"
        )


def _chip_name(rel: Path, taken: set[str]) -> str:
    """``person/sub/photo.jpg`` -> ``person/sub/photo.png``; ``photo.jpg`` and ``photo.png``
    side by side become ``photo.png`` and ``photo-png.png``."""
    name = rel.with_suffix(".png").as_posix()
    if name in taken:
        name = rel.with_name(f"{rel.stem}-{rel.suffix.lstrip('.').lower()}.png").as_posix()
    n = 2
    base = name[: -len(".png")]
    while name in taken:
        name = f"{base}-{n}.png"
        n += 1
    taken.add(name)
    return name


def _png(chip: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(chip)).save(buf, format="PNG")
    return buf.getvalue()


def write_face_chips(
    photos: PathLike,
    out: PathLike,
    *,
    detector: str | None = None,
    upsample: int | None = None,
    chip_size: int | None = None,
    assume_face: bool = False,
    workers: int | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> ChipsReport:
    """Write the aligned chip of the largest face of every photo of ``photos/<person>/``.

    ``detector``, ``upsample``, ``chip_size``: the face pipeline's settings (``None``: its
    defaults: the chips a gallery stores); ``assume_face``: the photos are face crops already
    (where the detector finds nothing, the photo's centre is the face). ``workers``: decode
    processes (``None``: by the number of photos and cores). ``on_progress(done, total)``
    counts photos read. Raises :class:`DataError` for a bad folder before anything is written.
    """
    from vitrina.data import scan_folder
    from vitrina.engine import Engine
    from vitrina.faces.pipeline import DLIB_ARCH, FacePipeline
    from vitrina.faces.task import FaceTask
    from vitrina.io import atomic_write_bytes, atomic_write_text
    from vitrina.models import create

    photos, out = Path(photos), Path(out)
    scan = scan_folder(photos, min_classes=1)
    _check_out(photos, out)
    options = {"detector": detector, "upsample": upsample, "chip_size": chip_size}
    pipe = FacePipeline(
        **{k: v for k, v in options.items() if v is not None}, assume_face=assume_face
    )
    settings = {k: v for k, v in pipe.settings().items() if k not in ("embedder", "backend")}
    paths = [s.path for s in scan.samples]
    person = {s.path: scan.classes[s.label] for s in scan.samples}
    report = ChipsReport(out, len(scan.classes), len(paths), settings=settings)
    n_workers = workers if workers is not None else min(os.cpu_count() or 1, len(paths) // 8)
    if n_workers >= 2:
        pipe.finder.load_models()  # forked workers inherit dlib's models
    else:
        n_workers = 0
    # Find and align only: the engine's model is never run (describe=False).
    engine = Engine(
        create(DLIB_ARCH, weights=None), backend="eager", device="cpu", batch_size=_PHOTOS_PER_BATCH
    )
    task = FaceTask(pipe.finder, digest=False, describe=False)
    out.mkdir(parents=True, exist_ok=True)
    taken: set[str] = set()
    manifest: dict[str, Any] = {}
    for done, r in enumerate(engine.run(task, paths, num_workers=n_workers), 1):
        path = paths[r.index]
        result = r.value if r.ok else None
        error = r.reason if not r.ok else result.error
        if error:
            report.unreadable.append((path, error))
        elif not result.faces:
            report.no_face.append(path)
        else:
            face = max(result.faces, key=lambda f: (f.box.width * f.box.height, -f.index))
            if len(result.faces) > 1:
                report.several_faces.append(path)
            rel = path.relative_to(photos)
            name = _chip_name(Path(person[path]) / rel.relative_to(person[path]), taken)
            target = out / name
            target.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(target, _png(face.chip))
            report.chips[name] = rel.as_posix()
            manifest[name] = {
                "source": rel.as_posix(),
                "box": face.box.to_dict(),
                "faces_in_photo": len(result.faces),
            }
        if on_progress is not None:
            on_progress(done, len(paths))
    doc = {
        "format": FACE_CHIPS_FORMAT,
        "source": str(photos.resolve()),
        "settings": settings,
        "chips": manifest,
        "no_face": [p.relative_to(photos).as_posix() for p in report.no_face],
        "unreadable": {p.relative_to(photos).as_posix(): e for p, e in report.unreadable},
    }
    atomic_write_text(out / CHIPS_MANIFEST, json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    return report
