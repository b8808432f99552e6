"""The face gallery behind the service: identify, enroll, list and forget people.

Detection, alignment and embedding run in worker threads (dlib's detector dominates; faces are
not batched across requests). Gallery operations run one at a time in this process (a lock),
and the gallery's own file lock orders them with other processes. A gallery that disappears
while serving makes its endpoints answer 503 ``gallery_unavailable``; the rest keeps serving.
"""

from __future__ import annotations

import errno
import hashlib
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio
import numpy as np

from vitrina.errors import DataError, UnknownNameError
from vitrina.faces.gallery import Gallery, GalleryError, check_person_name
from vitrina.faces.types import PhotoFaces
from vitrina.service.errors import ServiceError
from vitrina.service.uploads import decode_upload

__all__ = ["Faces"]

T = TypeVar("T")

_WARM_SIDE = 64  # a blank photo big enough to be searched for faces
_UPLOAD = Path("upload")  # what the gallery records as a template's source photo


class Faces:
    """A :class:`Gallery` and its face pipeline."""

    def __init__(self, path: str, *, limiter: anyio.CapacityLimiter) -> None:
        self.path = Path(path)
        self.gallery = Gallery(path)
        self.pipeline = self.gallery.pipeline(workers=0)
        self.limiter = limiter
        self._lock = threading.Lock()
        # Load the detector, landmarks and describer now, not on the first request (about a
        # second idle, several on a busy machine: long enough for a client to give up).
        self.pipeline.faces_in(np.zeros((_WARM_SIDE, _WARM_SIDE, 3), np.uint8))

    def available(self) -> bool:
        """The gallery folder is still there and readable."""
        try:
            Gallery(self.path)
        except (GalleryError, OSError):
            return False
        return (self.path / "index" / "meta.sqlite").is_file()

    # ------------------------------------------------------------------ endpoints

    async def identify(self, data: bytes) -> dict[str, Any]:
        photo = await anyio.to_thread.run_sync(self._photo, data, limiter=self.limiter)
        if not photo.faces:
            source = await self._gallery(lambda: self.gallery.threshold_source)
            return {"faces": [], "threshold_source": source}
        found = await self._gallery(
            lambda: self.gallery.identify(photo, fingerprint=self.pipeline.fingerprint)
        )
        faces = [
            {
                "box": {k: getattr(i.box, k) for k in ("left", "top", "right", "bottom")},
                "detector": i.detector,
                "name": i.name,
                "distance": i.distance,
                "threshold": i.threshold,
                "calibrated": i.calibrated,
            }
            for i in found
        ]
        return {"faces": faces, "threshold_source": found[0].threshold_source}

    async def enroll(self, data: bytes, name: str) -> dict[str, Any]:
        name = await self._name(name)
        photo = await anyio.to_thread.run_sync(self._photo, data, limiter=self.limiter)
        if not photo.faces:
            why = f" ({photo.error})" if photo.error else ""
            raise ServiceError(422, "no_face", f"no face found in the photo{why}")
        report = await self._gallery(
            lambda: self.gallery.enroll(name, photo, fingerprint=self.pipeline.fingerprint)
        )
        return {
            "name": report.name,  # as stored (NFC)
            "added": len(report.added),
            "already": len(report.already),
            "new_person": report.new_person,
        }

    async def people(self) -> dict[str, Any]:
        people = await self._gallery(self.gallery.people)
        return {"people": [{"name": p.name, "templates": p.templates} for p in people]}

    async def forget(self, name: str) -> dict[str, Any]:
        name = await self._name(name)
        gone = await self._gallery(lambda: self.gallery.forget(name))
        return {"name": gone.name, "templates": gone.templates}

    # ------------------------------------------------------------------ internals

    async def _name(self, name: str) -> str:
        """A name a client sent, checked before anything touches the disk: 400 ``bad_name``
        unless it is allowed, or is the name of someone already enrolled (galleries made
        before today's rules may hold names they now refuse)."""
        try:
            return check_person_name(name)
        except GalleryError as exc:
            refused = ServiceError(400, "bad_name", str(exc))
        people = await self._gallery(self.gallery.people)
        if any(p.name == name for p in people):
            return name
        raise refused

    def _photo(self, data: bytes) -> PhotoFaces:
        image = decode_upload(data)
        photo = PhotoFaces(_UPLOAD, size=image.size, sha256=hashlib.sha256(data).hexdigest())
        try:
            photo.faces = self.pipeline.faces_in(image)
        except DataError as exc:  # too small to hold a face
            photo.error = str(exc)
        return photo

    async def _gallery(self, operation: Callable[[], T]) -> T:
        """Run a gallery operation in a thread, one at a time; its failures as HTTP errors."""

        def call() -> T:
            with self._lock:
                try:
                    return operation()
                except UnknownNameError as exc:
                    raise ServiceError(404, "unknown_person", self._hide(exc)) from None
                except Exception as exc:  # OSError, sqlite3, faiss... when the folder went away
                    if _disk_full(exc):  # a gallery write is whole or undone (the stateful tests)
                        raise ServiceError(
                            507,
                            "disk_full",
                            "no space left on the face gallery's disk; this change was not "
                            "saved: free space and send it again",
                        ) from None
                    if not self.available():
                        raise ServiceError(
                            503,
                            "gallery_unavailable",
                            f"the face gallery is unavailable ({self._hide(exc)})",
                        ) from None
                    if isinstance(exc, GalleryError):
                        raise ServiceError(409, "gallery_conflict", self._hide(exc)) from None
                    raise

        return await anyio.to_thread.run_sync(call)

    def _hide(self, exc: Exception) -> str:
        """The error without the server's folder path."""
        return str(exc).replace(f"{self.path}: ", "").replace(str(self.path), "gallery")


def _disk_full(exc: BaseException) -> bool:
    """True for "no space left" / "quota exceeded", raised or wrapped (as the cause)."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "database or disk is full" in str(exc):  # sqlite3.OperationalError
            return True
        exc = exc.__cause__ or exc.__context__
    return False
