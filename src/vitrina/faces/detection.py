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

**The landmarks** (``flatten_landmarks``, on by default): dlib's 5-point predictor reads
brightness differences, so a hard shadow's edge across a face pulls the eye and nose points
onto it and the chip comes out misaligned. Where the light varies across the middle of the
face box by more than ``LANDMARK_LIGHT_ONSET`` (:func:`~vitrina.faces.lighting.light_spread`
of :func:`~vitrina.faces.lighting.estimate_light` on the face and half its size around it),
the points are also found on that crop with its light divided out
(:func:`~vitrina.faces.lighting.flatten_illumination`) and blended in, fully from
``LANDMARK_LIGHT_FULL`` on. A face in even light keeps its plain points, bit for bit, and so
does a face in an assumed square (``assume_face``: not a face box, and its margin's hair and
background would read as uneven light); the chip is always cut from the photo itself. Which
points align a face is, like which detector found it, not part of the vectors' fingerprint:
they stay comparable. Measured on ORL relit from the left at 0.9 (nearest of 30 enrolled
people, 3 photos each, 10 choices of people): rank-1 92% with the plain points, 99% with
these; from above at 0.9, 41% and 87% (README, "Faces in hard light").

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
from vitrina.faces.lighting import (
    equalise,
    estimate_light,
    flatten_illumination,
    flatten_shading,
    light_spread,
)
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


_MIN_CROP = 8  # pixels: a smaller crop around a face box is no face to flatten
#: ``flatten_landmarks`` keeps the plain landmarks of a face whose light varies over the
#: middle of its box by less than ``LANDMARK_LIGHT_ONSET``
#: (:func:`~vitrina.faces.lighting.light_spread`), takes those found on the flattened face
#: from ``LANDMARK_LIGHT_FULL`` on, and blends the two between. Measured on the middle of ORL's face boxes: in the photos' own light the spread's
#: median is 0.38 and 95% are below 0.64; relit from the left at 0.7 the median is 1.16, at
#: 0.9 2.48; from above at 0.7 1.31; from the centre at 0.9 0.65 (no edge across the face).
LANDMARK_LIGHT_ONSET = 0.7
LANDMARK_LIGHT_FULL = 1.4
_LIGHT_MARGIN = 0.2  # the light is judged on the box less this fraction of it on each side
_LIGHT_SIDE = 256  # pixels: larger face crops have their light estimated on a smaller copy


def landmarks_crop(shape: tuple[int, ...], rect: Any) -> tuple[int, int, int, int]:
    """``(x0, y0, x1, y1)``: the part of a photo of ``shape`` ``(h, w, ...)`` whose light
    ``flatten_landmarks`` divides out before the landmarks are found: the face box with half
    its size on each side, clipped to the photo. The light is estimated over a third of that
    crop's long side (:func:`~vitrina.faces.lighting.estimate_light`): about two thirds of
    the face, whatever the photo's size, so a shadow across the face is removed and its
    features (smaller) are kept."""
    h, w = shape[:2]
    m = max(rect.width(), rect.height()) // 2
    x0, y0 = max(rect.left() - m, 0), max(rect.top() - m, 0)
    x1, y1 = min(rect.right() + 1 + m, w), min(rect.bottom() + 1 + m, h)
    return x0, y0, x1, y1


def _light_of(crop: np.ndarray) -> np.ndarray:
    """:func:`~vitrina.faces.lighting.estimate_light` of a face crop, estimated on a copy at
    most ``_LIGHT_SIDE`` pixels long and enlarged back (the light is smooth: a 1,500-pixel
    crop of a large face costs what a small one does)."""
    h, w = crop.shape[:2]
    if max(h, w) <= _LIGHT_SIDE:
        return estimate_light(crop)
    cv2 = require("cv2", "faces", "face lighting correction")
    s = _LIGHT_SIDE / max(h, w)
    small = cv2.resize(
        crop, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA
    )
    return cv2.resize(estimate_light(small), (w, h), interpolation=cv2.INTER_LINEAR)


def _uneven_light(
    img: np.ndarray, rect: Any
) -> tuple[tuple[int, int, np.ndarray, np.ndarray], float] | None:
    """``((x0, y0, crop, its light), blend weight)`` for the face in ``rect``, or ``None``
    where its light is even enough (weight 0) or the box lies (almost) outside the photo."""
    x0, y0, x1, y1 = landmarks_crop(img.shape, rect)
    if x1 - x0 < _MIN_CROP or y1 - y0 < _MIN_CROP:
        return None
    crop = np.ascontiguousarray(img[y0:y1, x0:x1])
    light = _light_of(crop)
    # the light on the middle of the box (the face's skin, whatever the box's margin): hair
    # and background beside the face are dark in any light
    mx, my = round(_LIGHT_MARGIN * rect.width()), round(_LIGHT_MARGIN * rect.height())
    top, left = max(rect.top() + my - y0, 0), max(rect.left() + mx - x0, 0)
    bottom = max(rect.bottom() + 1 - my - y0, top)
    right = max(rect.right() + 1 - mx - x0, left)
    span = LANDMARK_LIGHT_FULL - LANDMARK_LIGHT_ONSET
    spread = light_spread(light[top:bottom, left:right])
    weight = float(np.clip((spread - LANDMARK_LIGHT_ONSET) / span, 0.0, 1.0))
    return None if weight == 0 else ((x0, y0, crop, light), weight)


def landmark_light_weight(img: np.ndarray, rect: Any) -> float:
    """How much of ``flatten_landmarks``' points a face in ``rect`` (a ``dlib.rectangle``) of
    the ``(H, W, 3)`` uint8 photo ``img`` takes: 0 in even light (its plain points), 1 from
    ``LANDMARK_LIGHT_FULL`` on."""
    lit = _uneven_light(img, rect)
    return 0.0 if lit is None else lit[1]


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
    flatten_landmarks: bool = False
    flatten_rows: bool = False

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
            FoundFace(box, *self._align(photo, rect, found_by != ASSUMED), detector=found_by)
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
        _, chip = self._align(photo, rect, flatten=False)  # an assumed square, not a face box
        if chip.shape[0] != DLIB_CHIP_SIZE:  # the detector's 80-px window fits a face at 150
            size = (DLIB_CHIP_SIZE, DLIB_CHIP_SIZE)
            chip = np.asarray(Image.fromarray(chip).resize(size, Image.Resampling.BICUBIC))
        _, scores, _ = models.hog_detector().run(chip, 0, -3.0)
        return float(max(scores)) if len(scores) else float("-inf")

    def _align(
        self, photo: _Photo, rect: Any, flatten: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
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
        shape = self._landmarks(img, rect, flatten)
        points = np.array([(p.x + dx, p.y + dy) for p in shape.parts()], dtype=np.float32)
        chip = dlib.get_face_chip(img, shape, size=self.chip_size, padding=CHIP_PADDING)
        return points, self.correct_chip(np.ascontiguousarray(chip, dtype=np.uint8))

    def _landmarks(self, img: np.ndarray, rect: Any, flatten: bool) -> Any:
        """dlib's 5 landmarks of the face in ``rect``; with ``flatten_landmarks`` (and
        ``flatten``: a detector's box), where the face is unevenly lit, blended with those
        found on a copy with its light divided out (module docstring)."""
        predictor = models.shape_predictor()
        plain = predictor(img, rect)
        if not (self.flatten_landmarks and flatten):
            return plain
        lit = _uneven_light(img, rect)
        if lit is None:
            return plain
        (x0, y0, crop, light), weight = lit
        dlib = models.dlib_module()
        inner = dlib.rectangle(
            rect.left() - x0, rect.top() - y0, rect.right() - x0, rect.bottom() - y0
        )
        flat = predictor(flatten_illumination(crop, light=light), inner)
        points = dlib.points()
        for p, q in zip(plain.parts(), flat.parts(), strict=True):
            x = (1 - weight) * p.x + weight * (q.x + x0)
            y = (1 - weight) * p.y + weight * (q.y + y0)
            points.append(dlib.point(round(x), round(y)))
        return dlib.full_object_detection(rect, points)

    def correct_chip(self, chip: np.ndarray) -> np.ndarray:
        """An aligned chip with this finder's lighting corrections applied (none by default:
        ``flatten_chips``: columns, then rows with ``flatten_rows``; then ``equalise_chips``)."""
        if self.flatten_chips:  # before equalising: it compares the halves' brightness
            chip = flatten_shading(chip)
            if self.flatten_rows:
                chip = flatten_shading(chip, rows=True)
        if self.equalise_chips:
            chip = equalise(chip)
        return chip
