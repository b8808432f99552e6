"""What the face pipeline produces and the gallery consumes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["Box", "Face", "PhotoFaces"]


@dataclass(frozen=True)
class Box:
    """A face box in pixel coordinates of the original photo (right/bottom exclusive)."""

    left: int
    top: int
    right: int
    bottom: int
    score: float = 0.0  # detector confidence (HOG: SVM score; CNN: MMOD confidence)

    @property
    def width(self) -> int:
        return self.right - self.left

    @property
    def height(self) -> int:
        return self.bottom - self.top

    def to_dict(self) -> dict[str, float]:
        return {
            "left": self.left,
            "top": self.top,
            "right": self.right,
            "bottom": self.bottom,
            "score": round(float(self.score), 4),
        }


@dataclass
class Face:
    """One detected face: its box, 5 landmarks (x, y), the aligned chip and its embedding."""

    box: Box
    landmarks: np.ndarray  # (5, 2) float32, original-photo coordinates
    chip: np.ndarray  # (S, S, 3) uint8 RGB, aligned (eyes level, fixed scale)
    vector: np.ndarray  # (D,) float32 (128-d for dlib's ResNet; a run's size otherwise)
    index: int = 0  # position of the face in its photo (left to right)
    detector: str = ""  # what found it: "hog", "cnn", a cascade stage, or "assumed"


@dataclass
class PhotoFaces:
    """The faces of one photo; ``error`` is set (and ``faces`` empty) when it cannot be read."""

    path: Path
    faces: list[Face] = field(default_factory=list)
    size: tuple[int, int] = (0, 0)  # (width, height) of the photo
    error: str | None = None
    sha256: str = ""  # content digest of the photo file
