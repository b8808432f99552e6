"""``vitrina detect export``: a detection run as an ONNX file, checked against PyTorch.

The file takes one letterboxed, normalised photo ``x`` of shape ``(1, 3, H, W)`` (the run's
``preprocess``: input size, mean, std; padding grey 114, centred) and returns ``y``, its boxes
``(N, 6)`` = ``[x1, y1, x2, y2, score, label]`` in input pixels after score threshold and
non-maximum suppression (torchvision's detectors export one image at a time). It is written
only if ONNX Runtime gives the same boxes as PyTorch on real photos: the same count per photo,
paired at IoU >= 0.9 with the same label, scores within ``atol``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vitrina.data import iter_image_files
from vitrina.detect.task import DetectionTask
from vitrina.engine import BOXES, batch_inputs
from vitrina.engine.onnx import ONNX_ATOL, export_checked
from vitrina.errors import RunFolderError, VitrinaError
from vitrina.runs import load_model, read_run

__all__ = ["export_detector"]


def export_detector(
    run: str | Path,
    out: str | Path,
    *,
    images: str | Path | None = None,
    max_images: int = 8,
    atol: float = ONNX_ATOL,
) -> dict[str, Any]:
    """Export the detection ``run`` to ``out`` (see the module docstring), checked on up to
    ``max_images`` photos of ``images`` (default: the photos the run was trained on)."""
    info = read_run(run)
    if info.task != "detection":
        raise RunFolderError(f"{run}: a {info.task} run; `vitrina export` exports it")
    folder = Path(images) if images is not None else Path(info.data.get("root") or "")
    if not str(folder) or not folder.is_dir():
        raise VitrinaError(
            f"{run}: no photos to check the export on; pass --images DIR with a few real photos"
        )
    model = load_model(run)
    paths, _, _ = iter_image_files(folder, recursive=True)
    batch, used = batch_inputs(DetectionTask(), model.preprocess, paths, limit=max_images)
    if not used:
        raise VitrinaError(f"{folder}: no readable photo to check the export on")
    report = export_checked(model, out, batch, output=BOXES, atol=atol)
    return {"file": str(out), "images": len(used), **report}
