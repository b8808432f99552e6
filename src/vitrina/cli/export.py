"""``vitrina export``."""

from __future__ import annotations

from pathlib import Path

import typer

from vitrina.cli._choices import ExportFormat
from vitrina.cli._common import out, print_json


def export(
    model: str = typer.Argument(..., help="Run folder, or a zoo name with ImageNet weights."),
    out_file: Path = typer.Option(
        ..., "--out", "-o", help="The .onnx file to write (must not exist)."
    ),
    fmt: ExportFormat = typer.Option("onnx", "--format", help="Export format."),
    images: Path | None = typer.Option(
        None,
        help="Folder of real images to check the export on (default: the run's training data).",
    ),
    atol: float = typer.Option(1e-3, help="Largest allowed |logit difference| against PyTorch."),
    as_json: bool = typer.Option(False, "--json", help="Print the check as JSON."),
) -> None:
    """Export a model to ONNX (dynamic batch size) and check it against PyTorch.

    The exported file is run with ONNX Runtime on real images next to the PyTorch model;
    if the outputs differ beyond --atol or any top-1 differs, nothing is written.

    Example: vitrina export runs/pets --out pets.onnx
    """
    from vitrina.classify.export import export_model

    report = export_model(model, out_file, fmt=fmt, images=images, atol=atol)
    if as_json:
        print_json(report)
        return
    out.print(
        f"wrote {out_file}: checked on {report['images']} images, max |diff| "
        f"{report['max_abs_diff']:.2e}, top-1 agreement {report['top1_agreement']:.0%}"
    )


def register(app: typer.Typer) -> None:
    app.command("export")(export)
