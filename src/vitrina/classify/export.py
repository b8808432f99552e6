"""Export a model (run folder or zoo name) to ONNX, checked against PyTorch on real images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vitrina.classify.classifier import load
from vitrina.data import iter_image_files
from vitrina.engine import Logits, batch_inputs
from vitrina.engine.onnx import ONNX_ATOL, export_checked
from vitrina.errors import VitrinaError
from vitrina.runs import is_run_dir, read_run

__all__ = ["FORMATS", "export_model"]

#: The formats :func:`export_model` writes.
FORMATS = ("onnx",)


def export_model(
    source: str | Path,
    out: str | Path,
    *,
    fmt: str = "onnx",
    images: str | Path | None = None,
    atol: float = ONNX_ATOL,
    max_images: int = 16,
) -> dict[str, Any]:
    """Write ``out`` (dynamic batch) only if ONNX Runtime matches PyTorch on up to
    ``max_images`` real images from ``images`` (default: the run's training data)."""
    if fmt not in FORMATS:
        raise VitrinaError(f"--format {fmt!r} is not supported (supported: {', '.join(FORMATS)})")
    clf = load(source)
    folder = Path(images) if images is not None else None
    if folder is None and is_run_dir(source):
        root = read_run(source).data.get("root")
        folder = Path(root) if root else None
    if folder is None or not folder.is_dir():
        raise VitrinaError(
            f"{source}: no images to check the export on; pass --images DIR with a few real photos"
        )
    paths, _, _ = iter_image_files(folder, recursive=True)
    batch, used = batch_inputs(Logits(), clf.model.preprocess, paths, limit=max_images)
    if not used:
        raise VitrinaError(f"{folder}: no readable image to check the export on")
    report = export_checked(clf.model, out, batch, atol=atol)
    return {"file": str(out), "images": len(used), **report}
