"""Face recognition against a gallery: detect, align, embed; enroll, identify or say "unknown".

>>> from vitrina.faces import Gallery, FacePipeline
>>> g = Gallery.for_pipeline("staff.gallery", FacePipeline())      # doctest: +SKIP
>>> g.enroll("alice", ["alice1.jpg", "alice2.jpg"])                  # doctest: +SKIP
>>> [i.name for i in g.identify(["door.jpg"])]                       # doctest: +SKIP
['alice', 'unknown']

* :mod:`vitrina.faces.pipeline` — dlib's HOG or CNN detector, 5-point landmarks, aligned chips,
  128-d embeddings from dlib's ResNet (or a ``vitrina train-embedding`` run);
* :mod:`vitrina.faces.gallery` — the persistent gallery (the shared faiss + SQLite index, the
  chips kept for review, a lock for concurrent writers);
* :mod:`vitrina.faces.decision` — the open-set decision rule and its calibration;
* :mod:`vitrina.faces.lighting` — relighting and the chip corrections for hard light;
  :mod:`vitrina.faces.light_projection` — the light's directions, learned from the enrolled
  faces and removed from every vector (``vitrina faces calibrate --light-dims``);
* :mod:`vitrina.faces.enroll`, :mod:`~vitrina.faces.identify`, :mod:`~vitrina.faces.calibrate`
  — the workflows on photo files that ``vitrina faces enroll / identify / verify / calibrate``
  run (``enroll_photos``, ``identify_photos``, ``verify_photos``, ``calibrate_gallery``);
* :mod:`vitrina.faces.sort` — sort photos into a folder per person.
"""

from vitrina.faces.calibrate import CalibrationRun, calibrate_gallery
from vitrina.faces.enroll import EnrollRun, enroll_photos, enrollment_groups
from vitrina.faces.gallery import (
    UNKNOWN,
    CalibrationReport,
    EnrollReport,
    Gallery,
    GalleryError,
    Identification,
    Identifications,
    Person,
    check_person_name,
)
from vitrina.faces.identify import (
    IdentifyRun,
    PairVerification,
    PhotoIdentification,
    identify_photos,
    largest_face,
    verify_photos,
)
from vitrina.faces.types import Box, Face, PhotoFaces

__all__ = [
    "UNKNOWN",
    "Box",
    "CalibrationReport",
    "CalibrationRun",
    "EnrollReport",
    "EnrollRun",
    "Face",
    "FacePipeline",
    "Gallery",
    "GalleryError",
    "Identification",
    "Identifications",
    "IdentifyRun",
    "PairVerification",
    "Person",
    "PhotoFaces",
    "PhotoIdentification",
    "calibrate_gallery",
    "check_person_name",
    "enroll_photos",
    "enrollment_groups",
    "identify_photos",
    "largest_face",
    "sort_faces",
    "verify_photos",
]


def __getattr__(name: str):  # dlib loads only when the pipeline is used
    if name == "FacePipeline":
        from vitrina.faces.pipeline import FacePipeline

        return FacePipeline
    if name == "sort_faces":
        from vitrina.faces.sort import sort_faces

        return sort_faces
    raise AttributeError(f"module 'vitrina.faces' has no attribute {name!r}")
