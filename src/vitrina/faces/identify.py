"""Name the faces in photo files against a gallery, and compare two photos' faces.

>>> from vitrina.faces.identify import identify_photos, verify_photos
>>> run = identify_photos("staff.gallery", ["door-camera/"], annotate_dir="seen/")  # doctest: +SKIP
>>> [(i.photo, i.name) for p in run.photos for i in p.faces]                       # doctest: +SKIP
>>> verify_photos("a.jpg", "b.jpg").same                                            # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vitrina.errors import DataError
from vitrina.faces.decision import DEFAULT_THRESHOLD, verify_distance
from vitrina.faces.gallery import Gallery
from vitrina.faces.reports import Identification
from vitrina.faces.types import Face, PhotoFaces

__all__ = [
    "IdentifyRun",
    "PairVerification",
    "PhotoIdentification",
    "identify_photos",
    "largest_face",
    "verify_photos",
]

PathLike = str | os.PathLike[str]


@dataclass
class PhotoIdentification:
    """One photo: what the pipeline found (``photo.error`` when unreadable), one
    :class:`Identification` per face, and the annotated copy when one was written."""

    photo: PhotoFaces
    faces: list[Identification] = field(default_factory=list)
    annotated: Path | None = None


@dataclass
class IdentifyRun:
    """Every photo in input order, and which rule decided (``threshold_source``)."""

    photos: list[PhotoIdentification]
    threshold_source: str


def identify_photos(
    gallery: PathLike | Gallery,
    photos: Sequence[PathLike],
    *,
    enroll_unknown: bool = False,
    annotate_dir: PathLike | None = None,
    assume_face: bool = False,
    backend: str | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> IdentifyRun:
    """Read ``photos`` (files, or folders of photos) through the gallery's pipeline and name
    every face, or call it unknown, with the gallery's decision rule.

    ``enroll_unknown``: each unknown face becomes a new person (``person-0001``...), so a later
    photo of them is recognised. ``annotate_dir``: every readable photo is also written there
    with boxes and names (never overwriting). ``assume_face``: where the detector finds
    nothing, the centre of the photo is the face (for photos that are face crops). ``backend``:
    the engine backend describing the faces (default: the gallery's). Unreadable photos are
    kept in the result with their error; nothing stops at one."""
    from vitrina.data import expand_image_paths

    g = gallery if isinstance(gallery, Gallery) else Gallery(gallery)
    paths = expand_image_paths(photos)
    pipe = g.pipeline(assume_face=assume_face or None, backend=backend)
    out = []
    for pf in pipe.process(paths, on_progress=on_progress):
        row = PhotoIdentification(pf)
        if pf.faces:
            row.faces = g.identify(pf, enroll_unknown=enroll_unknown)
        if annotate_dir is not None and not pf.error:
            from vitrina.faces.annotate import write_annotated

            row.annotated = write_annotated(pf, row.faces, annotate_dir)
        out.append(row)
    return IdentifyRun(out, g.threshold_source)


def largest_face(photo: PhotoFaces) -> Face:
    """The face with the largest box (the first of equals); :class:`DataError` naming the
    photo when it is unreadable or holds no face."""
    if photo.error:
        raise DataError(f"{photo.path}: {photo.error}")
    if not photo.faces:
        raise DataError(f"{photo.path}: no face found")
    return max(photo.faces, key=lambda f: (f.box.width * f.box.height, -f.index))


@dataclass
class PairVerification:
    """Same person or not: the distance of the two faces, the threshold it was held to and
    where that threshold comes from."""

    same: bool
    distance: float
    threshold: float
    source: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "same": bool(self.same),
            "distance": self.distance,
            "threshold": self.threshold,
            "source": self.source,
        }


def verify_photos(
    a: PathLike,
    b: PathLike,
    *,
    gallery: PathLike | Gallery | None = None,
    assume_face: bool = False,
    backend: str | None = None,
) -> PairVerification:
    """Compare the largest face of photo ``a`` with the largest face of photo ``b``.

    With a ``gallery``: its pipeline (embedder) and its calibrated pairwise threshold (dlib's
    0.6 until it is calibrated). Without: dlib's face ResNet and dlib's 0.6. A photo that is
    unreadable or has no face raises :class:`DataError` naming it."""
    if gallery is None:
        from vitrina.faces.pipeline import FacePipeline

        pipe = FacePipeline(assume_face=assume_face, workers=0, backend=backend or "auto")
        fa, fb = (largest_face(pf) for pf in pipe.process([a, b]))
        d = verify_distance(fa.vector, fb.vector)
        source = f"default: dlib's {DEFAULT_THRESHOLD} (no --gallery)"
        return PairVerification(d <= DEFAULT_THRESHOLD, d, DEFAULT_THRESHOLD, source)
    g = gallery if isinstance(gallery, Gallery) else Gallery(gallery)
    pipe = g.pipeline(assume_face=assume_face or None, backend=backend)
    fa, fb = (largest_face(pf) for pf in pipe.process([a, b]))
    v = g.verify(fa, fb)
    return PairVerification(bool(v.same), float(v.distance), float(v.threshold), g.threshold_source)
