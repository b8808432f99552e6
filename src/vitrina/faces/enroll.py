"""Enrol people from photo files: one person's photos by name, or a folder per person.

>>> from vitrina.faces.enroll import enroll_photos
>>> run = enroll_photos("staff.gallery", "alice", ["alice1.jpg", "alice/"])   # doctest: +SKIP
>>> run = enroll_photos("staff.gallery", folders="people/")                  # doctest: +SKIP
>>> [(r.name, len(r.added)) for r in run.reports]                             # doctest: +SKIP

Every photo is read once, through the gallery's own pipeline (created from the given detector
and embedder settings when the gallery is new), then each person's faces are enrolled with
:meth:`~vitrina.faces.gallery.Gallery.enroll`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vitrina.errors import VitrinaError
from vitrina.faces.gallery import META_NAME, Gallery, check_person_name
from vitrina.faces.reports import EnrollReport
from vitrina.faces.types import PhotoFaces

__all__ = ["EnrollRun", "enroll_photos", "enrollment_groups", "open_gallery"]

PathLike = str | os.PathLike[str]


@dataclass
class EnrollRun:
    """What :func:`enroll_photos` did: the gallery, one report per person (in the order the
    people were given) and every photo read (``unreadable``: those with an ``error``)."""

    gallery: Gallery
    reports: list[EnrollReport] = field(default_factory=list)
    photos: list[PhotoFaces] = field(default_factory=list)

    @property
    def unreadable(self) -> list[PhotoFaces]:
        return [pf for pf in self.photos if pf.error]


def enrollment_groups(
    name: str | None = None,
    photos: Sequence[PathLike] | None = None,
    *,
    folders: PathLike | None = None,
    check: Callable[[str], str] = check_person_name,
) -> dict[str, list[Path]]:
    """``{person: photo paths}``: ``name`` with ``photos`` (files or folders of photos), or
    ``folders``, a folder with one sub-folder of photos per person (its name is the person's).

    Exactly one of the two forms must be given; every name must pass ``check`` (by default
    :func:`~vitrina.faces.gallery.check_person_name`; an existing gallery's
    :meth:`~vitrina.faces.gallery.Gallery.name_for` also accepts the names it holds). Raises :class:`VitrinaError` otherwise,
    before any photo is read."""
    from vitrina.data import expand_image_paths, scan_folder

    if folders is None and (not name or not photos):
        raise VitrinaError("give NAME and PHOTOS, or --folders DIR with a sub-folder per person")
    if folders is not None and (name or photos):
        raise VitrinaError("give either NAME PHOTOS... or --folders DIR, not both")
    groups: dict[str, list[Path]] = {}
    if folders is not None:
        scan = scan_folder(folders, min_classes=1)
        for s in scan.samples:
            groups.setdefault(scan.classes[s.label], []).append(s.path)
    else:
        assert name is not None and photos is not None
        groups[name] = expand_image_paths(photos)
    for person in groups:
        check(person)
    return groups


def open_gallery(
    path: PathLike,
    *,
    detector: str | None = None,
    upsample: int | None = None,
    embedder: Any = None,
    assume_face: bool = False,
    backend: str | None = None,
    flatten_chips: bool = False,
    flatten_landmarks: bool | None = None,
) -> tuple[Gallery, Any]:
    """The gallery at ``path`` and the :class:`~vitrina.faces.pipeline.FacePipeline` to read
    photos for it.

    An existing gallery keeps its stored pipeline; options given here override it for this
    run (an embedder whose vectors differ from the gallery's is refused). A missing gallery
    is created for a pipeline of these options (``None``: the pipeline's defaults). ``backend``:
    the engine backend describing the faces (any gives vectors within its tolerance).
    ``flatten_chips``: even out one-sided shadows on the chips
    (:func:`~vitrina.faces.lighting.flatten_shading`); other vectors, so fixed when the
    gallery is created. ``flatten_landmarks``: find the landmarks of unevenly lit faces with
    the light divided out (``None``: the gallery's setting, or on for a new gallery); the
    vectors stay comparable, so a run may ask for it on an existing gallery."""
    options = {
        "detector": detector,
        "upsample": upsample,
        "embedder": embedder,
        "assume_face": assume_face or None,
        "backend": backend,
        "flatten_chips": flatten_chips or None,
        "flatten_landmarks": flatten_landmarks,
    }
    if (Path(path) / META_NAME).exists():
        g = Gallery(path)
        return g, g.pipeline(**options)
    from vitrina.faces.pipeline import FacePipeline

    pipe = FacePipeline(**{k: v for k, v in options.items() if v is not None})
    return Gallery.for_pipeline(path, pipe), pipe


def enroll_photos(
    gallery: PathLike,
    name: str | None = None,
    photos: Sequence[PathLike] | None = None,
    *,
    folders: PathLike | None = None,
    detector: str | None = None,
    upsample: int | None = None,
    embedder: Any = None,
    assume_face: bool = False,
    backend: str | None = None,
    flatten_chips: bool = False,
    flatten_landmarks: bool | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> EnrollRun:
    """Enrol ``name``'s ``photos``, or every person of ``folders``, into ``gallery`` (created
    when missing; see :func:`open_gallery` for the pipeline options).

    One face per photo (the largest); a photo enrolled before is not added again; unreadable
    photos and photos without a face are reported, not fatal. ``on_progress(done, total)``
    counts photos read."""
    # Names are checked before any photo is read or anything is written (even the gallery).
    existing = (Path(gallery) / META_NAME).exists()
    check = Gallery(gallery).name_for if existing else check_person_name
    groups = enrollment_groups(name, photos, folders=folders, check=check)
    g, pipe = open_gallery(
        gallery,
        detector=detector,
        upsample=upsample,
        embedder=embedder,
        assume_face=assume_face,
        backend=backend,
        flatten_chips=flatten_chips,
        flatten_landmarks=flatten_landmarks,
    )
    every = [p for ps in groups.values() for p in ps]
    run = EnrollRun(g, photos=list(pipe.process(every, on_progress=on_progress)))
    by_path = {pf.path: pf for pf in run.photos}
    run.reports = [g.enroll(person, [by_path[p] for p in ps]) for person, ps in groups.items()]
    return run
