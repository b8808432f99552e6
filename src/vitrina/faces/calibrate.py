"""Calibrate a gallery's decision rule and draw the ROC it was chosen on.

>>> from vitrina.faces.calibrate import calibrate_gallery
>>> run = calibrate_gallery("staff.gallery", "labelled-staff/", far=0.01)   # doctest: +SKIP
>>> print("\\n".join(run.report.lines()))                                   # doctest: +SKIP
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from vitrina.faces.gallery import META_NAME, Gallery
from vitrina.faces.reports import CalibrationReport

__all__ = ["ROC_NAME", "CalibrationRun", "calibrate_gallery"]

ROC_NAME = "calibration-roc.png"


@dataclass
class CalibrationRun:
    """The report, where the rule is stored (``gallery.json``) and the ROC picture (``None``
    when there were no verification pairs to draw)."""

    report: CalibrationReport
    stored_in: Path
    roc: Path | None


def calibrate_gallery(
    gallery: str | os.PathLike[str] | Gallery,
    labelled: str | os.PathLike[str] | None = None,
    *,
    far: float = 0.01,
    light_dims: int = 0,
) -> CalibrationRun:
    """Choose the gallery's decision rule for the false-accept rate ``far`` with
    :meth:`Gallery.calibrate` (on ``labelled``, a folder with a sub-folder of photos per known
    person, or the gallery's own templates) and draw its ROC into ``GALLERY/calibration-roc.png``
    (replaced at each calibration: it belongs to the rule stored beside it). ``light_dims``:
    light directions learned from the enrolled faces and removed from every vector first
    (:mod:`vitrina.faces.light_projection`; 0: none)."""
    from vitrina.report.plots import plot_roc

    g = gallery if isinstance(gallery, Gallery) else Gallery(gallery)
    report = g.calibrate(labelled, far=far, light_dims=light_dims)
    roc = None
    if report.verification is not None:
        roc = plot_roc(
            {"calibration pairs": report.verification}, g.path / ROC_NAME, target_far=far
        )
    return CalibrationRun(report, g.path / META_NAME, roc)
