"""Finding and aligning faces in a photo: dlib's detectors (a registry), 5-point landmarks,
aligned chips. Everything here runs in the engine's decode workers (see
:mod:`vitrina.faces.task`); the chips then go through the engine's backend like any image.

**The cascade** (``detector="cascade"``, the default): dlib's HOG first (~10 ms a photo);
only where it finds nothing, dlib's MMOD CNN on a copy downscaled to ``cnn_max_side`` (it costs
seconds at full size on a CPU); where that finds nothing too, HOG again on the photo with its
contrast equalised (:func:`~vitrina.faces.lighting.equalise`), then rotated by -15 and +15
degrees, then the CNN on a copy with its illumination divided out
(:func:`~vitrina.faces.lighting.flatten_illumination`; upsampled once where the photo is
small, twice where once finds nothing). The first stage that finds a face answers, and every
face says which stage found it (``FoundFace.detector``: ``hog``, ``cnn``, ``hog-equalised``,
``hog-rotated``, ``cnn-flattened``; ``assumed`` for ``assume_face``). On a photo HOG
answers, the cascade is HOG: same faces, same cost.

Conventions: boxes and landmarks are pixels of the original photo (x right, y down; box
right/bottom exclusive), boxes clipped to the photo and sorted left to right. A chip is
``dlib.get_face_chip(photo, landmarks, size, padding=0.25)``, the alignment dlib's ResNet was
trained on. A photo whose long side exceeds ``max_side`` is detected on a downscaled copy,
then aligned at full resolution.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from vitrina.errors import DataError, require
from vitrina.faces import models
from vitrina.faces.lighting import equalise, flatten_illumination, flatten_shading
from vitrina.faces.types import Box
from vitrina.registry import Registry

__all__ = [
    "ASSUMED_FACE_MIN_SCORE",
    "CASCADE_STAGES",
    "CHIP_PADDING",
    "CNN_MAX_SIDE",
    "DEFAULT_DETECTOR",
    "DETECTORS",
    "DLIB_CHIP_SIZE",
    "LEGACY_DETECTOR",
    "MIN_PHOTO_SIDE",
    "FaceFinder",
    "FoundFace",
    "cnn_started",
]

DLIB_CHIP_SIZE = 150  # the chip size dlib's ResNet takes
CHIP_PADDING = 0.25  # dlib's default: the chip shows the face plus 25% on each side
MIN_PHOTO_SIDE = 20  # below this no detector finds anything
# A box assumed by ``assume_face`` is a face only when dlib's HOG face detector, run on its
# aligned 150-px chip with a lowered threshold, scores a window there at least this high.
# Measured (dlib 19.24 frontal detector, upsample 0): the assumed chips of all 400 ORL photos
# score -0.85 at the lowest (1st percentile 0.49); black, grey and gradient photos -2.2 or no
# window at all, uniform noise -1.2; centre crops of cats and dogs -0.99 (median).
ASSUMED_FACE_MIN_SCORE = -1.0
#: The cascade's CNN sees the photo downscaled to this long side, at no upsampling: it finds
#: faces from ~80 x (long side / 640) pixels; HOG has already looked for the small ones.
CNN_MAX_SIDE = 640
ROTATIONS = (-15.0, 15.0)  # degrees of the cascade's rotated retry (in-plane head tilt)
ASSUMED = "assumed"  # the detector name of an ``assume_face`` square
DEFAULT_DETECTOR = "cascade"
LEGACY_DETECTOR = "hog"  # the default before the cascade (galleries that recorded none)

#: ``(dlib.rectangle in the detector's pixels, score)``, or with a third item: the name of the
#: detector (or cascade stage) that found it.
Detection = tuple[Any, ...]

#: Face detectors by name: ``detector(rgb uint8 (H, W, 3), upsample, min_score)`` ->
#: ``[(dlib.rectangle, score[, found_by])]`` in the array's pixels.
DETECTORS: Registry[Callable[[np.ndarray, int, float], list[Detection]]] = Registry("face detector")


@DETECTORS.register("hog")
def _detect_hog(img: np.ndarray, upsample: int, min_score: float) -> list[Detection]:
    """HOG + linear SVM: ~10 ms for a 512x512 photo, frontal faces of 80+ pixels (40 with upsample 1)."""
    rects, scores, _ = models.hog_detector().run(img, upsample, min_score)
    return [(r, float(s)) for r, s in zip(rects, scores, strict=True)]


_cnn_started = False  # dlib's CNN ran in this process (or in the one it was forked from)


def cnn_started() -> bool:
    """Whether dlib's CNN detector has run in this process. Its thread pool (dlib's
    ``parallel_for``) does not survive a fork: a worker forked afterwards that runs the CNN
    waits forever, so such a process detects in-process instead of forking workers."""
    return _cnn_started


@DETECTORS.register("cnn")
def _detect_cnn(img: np.ndarray, upsample: int, min_score: float) -> list[Detection]:
    """MMOD CNN: seconds per photo on a CPU; finds turned faces down to ~40 pixels."""
    global _cnn_started
    _cnn_started = True
    found = models.cnn_detector()(img, upsample)
    return [(d.rect, float(d.confidence)) for d in found if d.confidence > min_score]


def _resized(img: np.ndarray, s: float) -> np.ndarray:
    if s == 1.0:
        return img
    h, w = img.shape[:2]
    size = (max(1, round(w * s)), max(1, round(h * s)))
    return np.asarray(
        Image.fromarray(img).resize(size, Image.Resampling.BILINEAR, reducing_gap=3.0)
    )


def _scaled_rect(r: Any, s: float) -> Any:
    """A dlib.rectangle of a copy scaled by ``s``, in the original's pixels."""
    if s == 1.0:
        return r
    dlib = models.dlib_module()
    return dlib.rectangle(
        round(r.left() / s),
        round(r.top() / s),
        round((r.right() + 1) / s) - 1,
        round((r.bottom() + 1) / s) - 1,
    )


def _cnn_upsampling(long_side: int, upsample: int) -> int:
    """dlib's ``upsample`` for the CNN on a photo of this long side: as asked where the
    upsampled copy stays within :data:`CNN_MAX_SIDE`, else none."""
    return upsample if long_side * 2**upsample <= CNN_MAX_SIDE else 0


def _cnn_scaled(img: np.ndarray, min_score: float, upsample: int) -> list[Detection]:
    """The CNN on a copy of at most :data:`CNN_MAX_SIDE` pixels; on a photo small enough,
    with dlib's ``upsample`` (MMOD finds faces from ~80 pixels, ~40 upsampled once)."""
    long_side = max(img.shape[:2])
    s = min(CNN_MAX_SIDE / long_side, 1.0)
    up = _cnn_upsampling(long_side, upsample)
    return [
        (_scaled_rect(r, s), score) for r, score in _detect_cnn(_resized(img, s), up, min_score)
    ]


def _cnn_flattened(img: np.ndarray, upsample: int, min_score: float) -> list[Detection]:
    """The CNN on the photo with its illumination divided out, upsampled once where the photo
    is small; where that finds nothing, twice (a small face in hard light: of 190 hard
    side-lit ORL faces at 92x112 that reach this stage, one more is found)."""
    flat = flatten_illumination(img)
    found = _cnn_scaled(flat, min_score, 1)
    long_side = max(img.shape[:2])
    if found or _cnn_upsampling(long_side, 2) <= _cnn_upsampling(long_side, 1):
        return found
    return _cnn_scaled(flat, min_score, 2)


def _hog_rotated(img: np.ndarray, upsample: int, min_score: float) -> list[Detection]:
    """HOG on the photo turned by each of :data:`ROTATIONS`; a face's box is mapped back to
    an upright box of the same size around its centre (the landmarks then find the tilt)."""
    cv2 = require("cv2", "faces", "face detection")

    dlib = models.dlib_module()
    h, w = img.shape[:2]
    for angle in ROTATIONS:
        m = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), angle, 1.0)
        c, s_ = abs(m[0, 0]), abs(m[0, 1])
        nw, nh = int(h * s_ + w * c + 0.5), int(h * c + w * s_ + 0.5)
        m[0, 2] += nw / 2.0 - w / 2.0
        m[1, 2] += nh / 2.0 - h / 2.0
        turned = cv2.warpAffine(img, m, (nw, nh), flags=cv2.INTER_LINEAR)
        found = _detect_hog(turned, upsample, min_score)
        if not found:
            continue
        back = cv2.invertAffineTransform(m)
        out = []
        for r, score in found:
            cx, cy = (r.left() + r.right()) / 2.0, (r.top() + r.bottom()) / 2.0
            x, y = back @ np.array([cx, cy, 1.0])
            half_w, half_h = r.width() / 2.0, r.height() / 2.0
            rect = dlib.rectangle(
                round(x - half_w), round(y - half_h), round(x + half_w) - 1, round(y + half_h) - 1
            )
            out.append((rect, score))
        return out
    return []


#: The cascade's stages after plain HOG, in order: (name, detector). Each runs only when every
#: stage before it found nothing.
CASCADE_STAGES: tuple[tuple[str, Callable[[np.ndarray, int, float], list[Detection]]], ...] = (
    ("hog", _detect_hog),
    ("cnn", lambda img, up, ms: _cnn_scaled(img, ms, 0)),
    ("hog-equalised", lambda img, up, ms: _detect_hog(equalise(img), up, ms)),
    ("hog-rotated", _hog_rotated),
    # The last resort, upsampled on small photos for faces below the CNN's ~80 pixels. On
    # the 388 frontal ORL faces relit from the left or the right at 0.9 (a hard shadow down
    # the midline), 190 reach this stage: the CNN finds 190 on the copy flattened with a
    # median estimate of the light (every box within IoU 0.5 of HOG's in the original
    # light), 185 with a Gaussian one (this stage until 4 December 2026), 125 on a
    # CLAHE-equalised copy (before 3 December). On 80 photos without faces (cats, dogs,
    # groceries) it found no face, nor did the earlier versions.
    ("cnn-flattened", _cnn_flattened),
)


@DETECTORS.register("cascade")
def _detect_cascade(img: np.ndarray, upsample: int, min_score: float) -> list[Detection]:
    """HOG; where it finds nothing, the CNN downscaled; then equalised and rotated retries
    (module docstring). Each detection names the stage that found it."""
    for name, stage in CASCADE_STAGES:
        found = stage(img, upsample, min_score)
        if found:
            return [(d[0], d[1], name) for d in found]
    return []


@dataclass
class FoundFace:
    """A face found and aligned: box and landmarks in photo pixels, the aligned chip, and the
    detector (cascade stage) that found it."""

    box: Box
    landmarks: np.ndarray  # (5, 2) float32
    chip: np.ndarray  # (S, S, 3) uint8 RGB
    detector: str = ""


@dataclass
class _Photo:
    """A photo ready for detection: full-resolution RGB and what the detector sees."""

    rgb: Image.Image
    det: np.ndarray  # (h, w, 3) uint8; the photo itself unless downscaled
    scale: tuple[float, float]  # original pixels per detector pixel (x, y)

    @property
    def downscaled(self) -> bool:
        return self.scale != (1.0, 1.0)


@dataclass(frozen=True)
class FaceFinder:
    """Detect and align the faces of RGB photos with fixed settings (see
    :class:`~vitrina.faces.pipeline.FacePipeline` for their meaning). Picklable: dlib's models
    load once per process, on first use."""

    detector: str = DEFAULT_DETECTOR
    upsample: int = 1
    max_side: int = 1600
    chip_size: int = DLIB_CHIP_SIZE
    min_score: float = 0.0
    assume_face: bool = False
    equalise_chips: bool = False
    flatten_chips: bool = False

    def load_models(self) -> None:
        """Load (and cache in this process) the dlib models this finder uses."""
        if self.detector in ("hog", "cascade") or self.assume_face:
            models.hog_detector()  # (also judges whether an assumed face holds a face)
        if self.detector in ("cnn", "cascade"):
            models.cnn_detector()
        models.shape_predictor()

    def faces(self, rgb: Image.Image) -> list[FoundFace]:
        """Every face of an RGB photo, left to right. Raises :class:`DataError` for a photo too
        small to hold one."""
        photo = self._prepare(rgb)
        return [
            FoundFace(box, *self._align(photo, rect), detector=found_by)
            for box, rect, found_by in self._find(photo)
        ]

    def detect(self, rgb: Image.Image) -> list[Box]:
        return [box for box, _, _ in self._find(self._prepare(rgb))]

    def detect_with_source(self, rgb: Image.Image) -> list[tuple[Box, str]]:
        """Boxes left to right, each with the detector (cascade stage) that found it."""
        return [(box, found_by) for box, _, found_by in self._find(self._prepare(rgb))]

    def align(self, rgb: Image.Image, box: Box) -> tuple[np.ndarray, np.ndarray]:
        """(landmarks ``(5, 2)`` float32 in photo pixels, chip ``(S, S, 3)`` uint8 RGB)."""
        dlib = models.dlib_module()
        rect = dlib.rectangle(box.left, box.top, box.right - 1, box.bottom - 1)
        return self._align(self._prepare(rgb), rect)

    # ----------------------------------------------------------------- internals
    def _prepare(self, rgb: Image.Image) -> _Photo:
        w, h = rgb.size
        if min(w, h) < MIN_PHOTO_SIDE:
            raise DataError(f"too small to hold a face ({w}x{h} pixels)")
        if self.max_side and max(w, h) > self.max_side:
            s = self.max_side / max(w, h)
            size = (max(1, round(w * s)), max(1, round(h * s)))
            small = rgb.resize(size, Image.Resampling.BILINEAR, reducing_gap=3.0)
            return _Photo(rgb, np.asarray(small), (w / size[0], h / size[1]))
        return _Photo(rgb, np.asarray(rgb), (1.0, 1.0))

    def _find(self, photo: _Photo) -> list[tuple[Box, Any, str]]:
        """(clipped box, unclipped dlib.rectangle for the landmark predictor, found by), left
        to right."""
        dlib = models.dlib_module()
        w, h = photo.rgb.size
        sx, sy = photo.scale
        found: list[tuple[Box, Any, str]] = []
        for d in DETECTORS.get(self.detector)(photo.det, self.upsample, self.min_score):
            r, score = d[0], d[1]
            found_by = str(d[2]) if len(d) > 2 else self.detector
            left, top = round(r.left() * sx), round(r.top() * sy)
            right, bottom = round((r.right() + 1) * sx), round((r.bottom() + 1) * sy)
            box = Box(max(left, 0), max(top, 0), min(right, w), min(bottom, h), score)
            if box.width > 0 and box.height > 0:
                found.append((box, dlib.rectangle(left, top, right - 1, bottom - 1), found_by))
        if not found and self.assume_face:
            # A centred square of 0.8 x the short side: on ORL's crops its vectors lie 0.09
            # (mean) from those of the detector's box; the whole photo, hair included, 0.25.
            side = max(1, round(0.8 * min(w, h)))
            left, top = (w - side) // 2, (h - side) // 2
            rect = dlib.rectangle(left, top, left + side - 1, top + side - 1)
            score = self._face_likeness(photo, rect)
            if score >= ASSUMED_FACE_MIN_SCORE:  # blank, flat and noise photos hold no face
                found.append((Box(left, top, left + side, top + side, score), rect, ASSUMED))
        found.sort(key=lambda item: (item[0].left, item[0].top))
        return found

    def _face_likeness(self, photo: _Photo, rect: Any) -> float:
        """The HOG face detector's best score on the aligned chip of ``rect`` (-inf when no
        window scores above -3: a flat chip has no gradients at all)."""
        _, chip = self._align(photo, rect)
        if chip.shape[0] != DLIB_CHIP_SIZE:  # the detector's 80-px window fits a face at 150
            size = (DLIB_CHIP_SIZE, DLIB_CHIP_SIZE)
            chip = np.asarray(Image.fromarray(chip).resize(size, Image.Resampling.BICUBIC))
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
        return points, self.correct_chip(np.ascontiguousarray(chip, dtype=np.uint8))

    def correct_chip(self, chip: np.ndarray) -> np.ndarray:
        """An aligned chip with this finder's lighting corrections applied (none by default:
        ``flatten_chips``, then ``equalise_chips``)."""
        if self.flatten_chips:  # before equalising: it compares the halves' brightness
            chip = flatten_shading(chip)
        if self.equalise_chips:
            chip = equalise(chip)
        return chip
