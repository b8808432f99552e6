"""Lighting of face photos: contrast equalisation (what the detector cascade retries with and
what ``normalize_chips`` applies to aligned chips), and relighting, to measure how recognition
holds up when a face is lit from one side or from the front (benchmarks and tests).

All functions take and return ``(H, W, 3)`` uint8 RGB arrays and never change their input.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from vitrina.errors import require

__all__ = ["LIGHTINGS", "equalise", "relight"]

#: The relightings :func:`relight` makes: darkened from the left or right side with a linear
#: gradient, or lit from the centre (bright, clipped middle; dark edges).
LIGHTINGS = ("left", "right", "centre")

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


def relight(
    rgb: np.ndarray, strength: float, kind: Literal["left", "right", "centre"] = "left"
) -> np.ndarray:
    """The photo relit, as by a lamp beside the face or in front of it.

    ``left`` / ``right``: that half darkened to ``1 - strength`` of its brightness, the other
    half lit to ``1 + strength`` (clipped where it overflows), the two joined by a sigmoid
    across the middle whose width, ``0.02 + 0.25 x (1 - strength)`` of the photo's width,
    narrows as the light gets harder: at 0.9 the shadow's edge runs down the face's midline
    like a hard shadow's. ``centre``: ``1 + strength`` at the centre falling linearly to
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
    if kind in ("left", "right"):
        width = 0.02 + 0.25 * (1.0 - strength)
        lit = 1.0 / (1.0 + np.exp(-(x - 0.5) / width))  # 0 on the left, 1 on the right
        if kind == "right":
            lit = 1.0 - lit
        gain = np.broadcast_to(1.0 - strength + 2.0 * strength * lit, (h, w))
    else:
        r = np.clip(np.sqrt((x - 0.5) ** 2 + (y - 0.5) ** 2) / np.sqrt(0.5), 0.0, 1.0)
        gain = (1.0 + strength) * (1.0 - strength * r)
    return np.clip(a * gain[..., None] + 0.5, 0, 255).astype(np.uint8)
