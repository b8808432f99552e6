"""Lighting of face photos: contrast equalisation and illumination flattening (what the detector
cascade retries with), the corrections of aligned chips (``equalise_chips``, ``flatten_chips``),
and relighting, to measure how recognition holds up when a face is lit from one side or from
the front (benchmarks and tests).

All functions take and return ``(H, W, 3)`` uint8 RGB arrays and never change their input.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from vitrina.errors import require

__all__ = [
    "LIGHTINGS",
    "equalise",
    "estimate_light",
    "flatten_illumination",
    "flatten_shading",
    "imbalance",
    "light_spread",
    "relight",
    "symmetrise",
]

#: The relightings :func:`relight` makes: darkened from the left or right side with a linear
#: gradient, lit from above (a ceiling lamp: bright brow, chin in shadow), or lit from the
#: centre (bright, clipped middle; dark edges).
LIGHTINGS = ("left", "right", "top", "centre")

#: :func:`flatten_shading` and :func:`symmetrise` leave a chip whose halves differ by less than
#: ``SHADOW_ONSET`` (in :func:`imbalance`) as it is and correct it fully from ``SHADOW_FULL`` on,
#: blending linearly between. Measured on ORL's aligned chips: in the photos' own light the
#: median is 0.07 and 95% are below 0.20; relit from the left at 0.7 the median is 0.38, at
#: 0.9 0.55.
SHADOW_ONSET = 0.2
SHADOW_FULL = 0.4
_SHADING_WINDOW = 0.1  # column means are smoothed over this fraction of the chip's width
_MAX_GAIN = 8.0  # a column is brightened at most this much (a 0.1x shadow is 10x darker)

_ILLUMINATION_SCALE = 0.35  # flatten_illumination's median window: this fraction of the long side
_ILLUMINATION_SMOOTH = 0.03  # ... then a Gaussian blur of this fraction (the median's blockiness)
_LOG_256 = float(np.log(256.0))  # log1p of the brightest 8-bit value

_CLAHE_CLIP = 2.0  # OpenCV's default clip limit
_CLAHE_TILE = 4  # tiles per side: a face chip's eye, cheek and mouth regions each get their own


def equalise(rgb: np.ndarray, *, tiles: int = _CLAHE_TILE) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation (CLAHE) of the luminance (L of
    CIELAB, colours kept): a shadowed half of a face gets the local contrast of the lit one."""
    cv2 = require("cv2", "faces", "face lighting correction")

    a = np.ascontiguousarray(rgb, dtype=np.uint8)
    lab = cv2.cvtColor(a, cv2.COLOR_RGB2LAB)
    clahe = cv2.createCLAHE(clipLimit=_CLAHE_CLIP, tileGridSize=(tiles, tiles))
    lab[..., 0] = clahe.apply(np.ascontiguousarray(lab[..., 0]))
    return cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)


def estimate_light(rgb: np.ndarray, *, scale: float = _ILLUMINATION_SCALE) -> np.ndarray:
    """The light falling on a photo: ``(H, W)`` float32, in log luminance (natural log of
    1 + the mean of R, G, B), estimated by a median filter over a window of ``scale`` x the
    photo's long side, lightly smoothed (:func:`flatten_illumination` divides it out).

    A median keeps the step of a hard shadow's edge, which is longer than its window, and
    drops a face's features, which are smaller: a Gaussian blur (until December 2026) smears
    the step, and the difference then draws a bright ridge down the face where the shadow
    ends. Of 190 hard side-lit ORL faces that reached the detector cascade's last stage, the
    Gaussian estimate hid 5 from the CNN; the median, 1."""
    cv2 = require("cv2", "faces", "face lighting correction")

    lum = np.asarray(rgb, dtype=np.float32).mean(axis=2)
    log = np.log1p(lum)
    long_side = max(lum.shape)
    window = max(3, int(scale * long_side) | 1)  # odd, as medianBlur needs
    # OpenCV's median filter takes any window on 8-bit images (in constant time per pixel):
    # the log luminance in 256 steps of ~2% brightness is ample for the light's estimate.
    steps = np.clip(np.rint(log * (255.0 / _LOG_256)), 0, 255).astype(np.uint8)
    light = cv2.medianBlur(steps, window).astype(np.float32) * (_LOG_256 / 255.0)
    return cv2.GaussianBlur(light, (0, 0), max(1.0, _ILLUMINATION_SMOOTH * long_side))


def flatten_illumination(
    rgb: np.ndarray, *, scale: float = _ILLUMINATION_SCALE, light: np.ndarray | None = None
) -> np.ndarray:
    """The photo's reflectance with its illumination divided out (homomorphic filtering): the
    log of the luminance minus :func:`estimate_light` (or ``light``, computed by it before),
    stretched between its 1st and 99th percentiles to 0-255, as grey RGB. A face half in
    black shadow and half overexposed comes out evenly lit: what the detector cascade's last
    stage looks at (:mod:`vitrina.faces.detection`), and where ``flatten_landmarks`` finds
    the landmarks of a face in uneven light. Colour is dropped (the detectors do not need it)
    and a flat photo stays flat."""
    lum = np.asarray(rgb, dtype=np.float32).mean(axis=2)
    if light is None:
        light = estimate_light(rgb, scale=scale)
    detail = np.log1p(lum) - light
    lo, hi = np.percentile(detail, [1, 99])
    if hi - lo < 1e-3:  # no detail anywhere (a flat photo): mid-grey, not amplified noise
        grey = np.full(lum.shape, 128, np.uint8)
    else:
        grey = (np.clip((detail - lo) / (hi - lo), 0.0, 1.0) * 255).round().astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


def light_spread(light: np.ndarray) -> float:
    """How unevenly a region is lit: the 95th minus the 5th percentile of its
    :func:`estimate_light` (log units: 0.7 is a factor of 2); 0 for an empty region. What it
    reads on faces in their own light and relit: ``vitrina.faces.detection``'s
    ``LANDMARK_LIGHT_ONSET`` (measured on the middle of ORL's face boxes; over whole boxes,
    dark hair and backgrounds read as uneven light too)."""
    a = np.asarray(light, dtype=np.float32)
    if a.size == 0:
        return 0.0
    lo, hi = np.percentile(a, [5, 95])
    return float(hi - lo)


def relight(
    rgb: np.ndarray, strength: float, kind: Literal["left", "right", "top", "centre"] = "left"
) -> np.ndarray:
    """The photo relit, as by a lamp beside the face or in front of it.

    ``left`` / ``right``: that half darkened to ``1 - strength`` of its brightness, the other
    half lit to ``1 + strength`` (clipped where it overflows), the two joined by a sigmoid
    across the middle whose width, ``0.02 + 0.25 x (1 - strength)`` of the photo's width,
    narrows as the light gets harder: at 0.9 the shadow's edge runs down the face's midline
    like a hard shadow's. ``top``: the same from above, the bottom darkened (a ceiling lamp
    over a door). ``centre``: ``1 + strength`` at the centre falling linearly to
    ``(1 + strength) x (1 - strength)`` at the corners (a bright, clipped middle, dark edges).
    ``strength`` in [0, 1): 0 leaves the photo unchanged."""
    if kind not in LIGHTINGS:
        raise ValueError(f"kind must be one of {', '.join(LIGHTINGS)}, not {kind!r}")
    if not 0 <= strength < 1:
        raise ValueError(f"strength must be in [0, 1), not {strength}")
    a = np.asarray(rgb, dtype=np.float32)
    if strength == 0:
        return np.asarray(rgb, dtype=np.uint8).copy()
    h, w = a.shape[:2]
    x = np.linspace(0.0, 1.0, w, dtype=np.float32)[None, :]
    y = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None]
    if kind in ("left", "right", "top"):
        width = 0.02 + 0.25 * (1.0 - strength)
        along = y if kind == "top" else x
        lit = 1.0 / (1.0 + np.exp(-(along - 0.5) / width))  # 0 on the left (top), 1 right
        if kind in ("right", "top"):
            lit = 1.0 - lit
        gain = np.broadcast_to(1.0 - strength + 2.0 * strength * lit, (h, w))
    else:
        r = np.clip(np.sqrt((x - 0.5) ** 2 + (y - 0.5) ** 2) / np.sqrt(0.5), 0.0, 1.0)
        gain = (1.0 + strength) * (1.0 - strength * r)
    return np.clip(a * gain[..., None] + 0.5, 0, 255).astype(np.uint8)


def _halves(rgb: np.ndarray) -> tuple[float, float]:
    """Mean luminance of the left and right half of an aligned chip's face region (rows 15%
    to 95%, columns 10% to 90%: the padding around the face is background)."""
    a = np.asarray(rgb, dtype=np.float32)
    lum = a.mean(axis=2) if a.ndim == 3 else a
    h, w = lum.shape
    face = lum[int(0.15 * h) : int(0.95 * h), int(0.10 * w) : w - int(0.10 * w)]
    mid = face.shape[1] // 2
    return float(face[:, :mid].mean()), float(face[:, face.shape[1] - mid :].mean())


def imbalance(rgb: np.ndarray) -> float:
    """How much one half of an aligned face chip is darker than the other: ``(lit - dark) /
    (lit + dark)`` of the two halves' mean luminance; 0 for an evenly lit face, towards 1
    for a face half in black shadow."""
    left, right = _halves(rgb)
    total = left + right
    return 0.0 if total <= 0 else abs(left - right) / total


def _weight(rgb: np.ndarray, onset: float, full: float) -> float:
    if not 0 <= onset < full:
        raise ValueError(f"need 0 <= onset < full, got onset={onset}, full={full}")
    return float(np.clip((imbalance(rgb) - onset) / (full - onset), 0.0, 1.0))


def flatten_shading(
    rgb: np.ndarray,
    *,
    onset: float = SHADOW_ONSET,
    full: float = SHADOW_FULL,
    rows: bool = False,
) -> np.ndarray:
    """An aligned face chip with a shadow falling from one side (``rows=True``: from above or
    below) evened out.

    A lamp beside the face darkens it column by column; each column of the chip is brightened
    (or dimmed) by the ratio of the face region's median column brightness to its own (column
    means over rows 15% to 95%, smoothed over a tenth of the width; gains within [1/2, 8]).
    The correction is applied with weight ``(imbalance - onset) / (full - onset)`` clipped to
    [0, 1] (:func:`imbalance`): a chip lit evenly enough is returned unchanged, so faces in
    ordinary light give the same vectors as without it.

    ``rows=True`` does the same to the chip's rows (the chip transposed: a ceiling lamp's
    bright brow and dark chin). In ORL's own light the top/bottom imbalance of the aligned
    chips has median 0.10 and 95% are below 0.23 (a face's brow is brighter than its mouth
    and chin); lit from above at 0.7 the median is 0.52, at 0.9 0.82."""
    if rows:
        t = np.ascontiguousarray(np.swapaxes(np.asarray(rgb, dtype=np.uint8), 0, 1))
        return np.ascontiguousarray(np.swapaxes(flatten_shading(t, onset=onset, full=full), 0, 1))
    a = np.asarray(rgb, dtype=np.uint8)
    weight = _weight(a, onset, full)
    if weight == 0:
        return a.copy()
    f = a.astype(np.float32)
    lum = f.mean(axis=2) if f.ndim == 3 else f
    h, w = lum.shape
    cols = lum[int(0.15 * h) : int(0.95 * h)].mean(axis=0)
    k = max(3, int(_SHADING_WINDOW * w))  # a moving average, edges repeated
    padded = np.pad(cols, (k // 2, k - 1 - k // 2), mode="edge")
    cols = np.convolve(padded, np.full(k, 1.0 / k, dtype=np.float32), mode="valid")
    gain = np.clip(np.median(cols) / np.maximum(cols, 1.0), 0.5, _MAX_GAIN)
    gain = 1.0 + weight * (gain - 1.0)
    gain = gain[None, :, None] if f.ndim == 3 else gain[None, :]
    return np.clip(f * gain + 0.5, 0, 255).astype(np.uint8)


def symmetrise(
    rgb: np.ndarray, *, onset: float = SHADOW_ONSET, full: float = SHADOW_FULL
) -> np.ndarray:
    """An aligned face chip with its shadowed half rebuilt from the mirror image of its lit half.

    dlib's alignment puts the face's midline at the chip's vertical centre, and faces are near
    symmetric: a hard shadow destroys one half but leaves the other intact. The dark half is
    blended towards the mirrored lit half with weight ``(imbalance - onset) / (full - onset)``
    clipped to [0, 1] (:func:`imbalance`): a chip lit evenly enough is returned unchanged, a
    chip half in shadow gets two lit halves. The column on the midline (odd widths) is kept.

    Measured, not used by the pipeline: dlib's ResNet names mirrored faces worse than shadowed
    ones (ORL relit from the left at 0.9: 11% named against 36%; README, "Faces in hard
    light"), so :func:`flatten_shading` is the chip correction on offer."""
    a = np.asarray(rgb, dtype=np.uint8)
    weight = _weight(a, onset, full)
    out = a.copy()
    if weight == 0:
        return out
    left, right = _halves(a)
    w = a.shape[1]
    mid = w // 2
    mirror = a[:, ::-1].astype(np.float32)
    dark = slice(0, mid) if left < right else slice(w - mid, w)
    blended = (1 - weight) * a[:, dark].astype(np.float32) + weight * mirror[:, dark]
    out[:, dark] = np.clip(blended + 0.5, 0, 255).astype(np.uint8)
    return out
