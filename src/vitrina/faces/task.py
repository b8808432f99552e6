"""Faces as an engine task: photos in, their faces (box, landmarks, chip, vector) out.

The engine's decode workers read each photo, find and align its faces
(:class:`~vitrina.faces.detection.FaceFinder`) and turn each chip into the embedder's input;
a photo gives as many inputs as it has faces (none for a photo without one). The engine runs
the chips of a batch of photos through its backend as one batch, and :meth:`FaceTask.finish`
puts each vector back on its face. Any embedder works the same way: dlib's ResNet (the
registered model ``dlib_face_resnet``) or a ``vitrina train-embedding`` run.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image

from vitrina.data.transforms import InputSpec, eval_transform
from vitrina.engine import Prepared, Task, item_name, rows_per_item
from vitrina.errors import DataError
from vitrina.faces.detection import FaceFinder
from vitrina.faces.types import Face, PhotoFaces
from vitrina.io import file_digest

__all__ = ["FaceTask"]


class _FacePreparer:
    """Decoded photo -> its chips as the embedder's inputs; what was found in ``meta``."""

    def __init__(self, finder: FaceFinder, pre: InputSpec, digest: bool, describe: bool) -> None:
        self.finder = finder
        self.transform = eval_transform(pre)
        self.shape = (pre.channels, *pre.input_size)
        self.digest = digest
        self.describe = describe

    def __call__(self, image: Image.Image, item: Any = None) -> Prepared:
        path = item if isinstance(item, str | os.PathLike) else None
        meta: dict[str, Any] = {
            "name": str(item) if path is not None else item_name(item) if item is not None else "",
            "size": image.size,
            "sha256": "",
            "faces": [],
            "error": None,
        }
        if path is not None and self.digest:
            try:
                meta["sha256"] = file_digest(path)
            except OSError as exc:  # replaced or removed between the two reads
                meta["error"] = f"cannot read file ({exc.strerror or exc})"
                return Prepared(torch.empty(0, *self.shape), meta)
        try:
            found = self.finder.faces(image)
        except DataError as exc:
            meta["error"] = str(exc)
            return Prepared(torch.empty(0, *self.shape), meta)
        meta["faces"] = found
        if not found or not self.describe:
            return Prepared(torch.empty(0, *self.shape), meta)
        inputs = torch.stack([self.transform(Image.fromarray(f.chip)) for f in found])
        return Prepared(inputs, meta)


@dataclass(frozen=True)
class FaceTask(Task):
    """Find, align and describe the faces of photos (each result a :class:`PhotoFaces`).

    ``finder``: detector settings; ``normalize``: L2-normalise the vectors (an embedder
    trained for cosine) or keep them raw (dlib's, compared by Euclidean distance);
    ``digest``: record each file's sha256 (a gallery's re-enrolment check); ``describe``:
    False finds and aligns only (vectors left empty, for a describer outside the engine)."""

    finder: FaceFinder = field(default_factory=FaceFinder)
    normalize: bool = False
    digest: bool = True
    describe: bool = True
    name: ClassVar[str] = "faces"
    output: ClassVar[str] = "embed"
    heavy_preparation: ClassVar[bool] = True  # detection and alignment dwarf decoding

    def image_mode(self, pre: InputSpec) -> str:
        return "RGB"  # detectors and alignment work on colour photos, whatever the embedder

    def decode_side(self, pre: InputSpec) -> int | None:
        return None  # full resolution: small faces and the alignment need every pixel

    def preparer(self, pre: InputSpec) -> _FacePreparer:
        return _FacePreparer(self.finder, pre, self.digest, self.describe)

    def finish(self, outputs: Any, counts: Sequence[int], metas: Sequence[Any]) -> list[Any]:
        y = outputs.float().reshape(len(outputs), -1) if len(outputs) else outputs
        if self.normalize and len(y):
            y = torch.nn.functional.normalize(y, p=2.0, dim=1, eps=1e-12)
        chunks = rows_per_item(y, counts)
        results = []
        for chunk, meta in zip(chunks, metas, strict=True):
            vectors = chunk.numpy().astype(np.float32, copy=False) if len(chunk) else None
            empty = np.zeros(0, dtype=np.float32)
            faces = [
                Face(
                    f.box,
                    f.landmarks,
                    f.chip,
                    vectors[i] if vectors is not None else empty,
                    i,
                    f.detector,
                )
                for i, f in enumerate(meta["faces"])
            ]
            results.append(
                PhotoFaces(
                    Path(meta["name"]),
                    faces=faces,
                    size=tuple(meta["size"]),
                    error=meta["error"],
                    sha256=meta["sha256"],
                )
            )
        return results
