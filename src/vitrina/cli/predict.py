"""``vitrina predict``."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from vitrina.cli._choices import Backend
from vitrina.cli._common import BACKEND_HELP, DEVICE_HELP, err, out, print_json


def predict(
    model: str = typer.Argument(
        ..., help="Run folder, or a zoo name with ImageNet weights (efficientnet_lite0)."
    ),
    images: list[Path] = typer.Argument(
        ..., help="Image files, or folders (every image in them, sub-folders too)."
    ),
    top_k: int = typer.Option(3, help="How many labels per image."),
    backend: Backend = typer.Option("auto", help=BACKEND_HELP),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Top-k labels with probabilities for each image.

    Example: vitrina predict runs/shop photo1.jpg photo2.jpg --top-k 3
    """
    from vitrina.classify.classifier import load
    from vitrina.errors import VitrinaError

    clf = load(model, deferred=True)
    paths = _expand_folders(images)
    if not paths:
        raise VitrinaError(f"{', '.join(map(str, images))}: no images in these folders")
    preds = clf.predict(paths, top_k=top_k, backend=backend, device=device)
    if as_json:
        print_json([p.to_dict() for p in preds])
    else:
        for p in preds:
            if p.error:
                err.print(f"[red]unreadable[/] {escape(p.error)}")
                continue
            tops = "  ".join(f"{escape(lbl)} {prob:.3f}" for lbl, prob in p.top)
            out.print(f"{escape(str(p.path))}: {tops}")
    if any(p.error for p in preds):
        raise typer.Exit(1)


def _expand_folders(items: list[Path]) -> list[Path]:
    """Folders replaced by the images in them; anything else kept, so that a missing or bad
    file is answered as such (one line each) and the rest still predicted."""
    from vitrina.data import iter_image_files

    found: list[Path] = []
    for p in items:
        found += iter_image_files(p, recursive=True)[0] if p.is_dir() else [p]
    return found


def register(app: typer.Typer) -> None:
    app.command("predict")(predict)
