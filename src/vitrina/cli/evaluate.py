"""``vitrina evaluate``."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from vitrina.cli._choices import Backend
from vitrina.cli._common import (
    BACKEND_HELP,
    DEVICE_HELP,
    err,
    out,
    pictures_dir_option,
    print_json,
    progress_bar,
)


def evaluate(
    run_dir: Path = typer.Argument(..., help="Run folder made by `vitrina train`."),
    data_dir: Path = typer.Argument(..., help="Labelled class-folder tree to test on."),
    top_k: int = typer.Option(5, help="Also report top-k accuracy."),
    backend: Backend = typer.Option("auto", help=BACKEND_HELP),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    batch_size: int = typer.Option(16, help="Images per forward pass."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    out_dir: Path | None = pictures_dir_option(
        "confusion.png, per_class.png (precision and recall bars) and mistakes.png (the most "
        "confident mistakes: photo, true label, predicted label, confidence)"
    ),
) -> None:
    """Accuracy, top-k, per-class precision/recall/F1 and the confusion matrix.

    Example: vitrina evaluate runs/shop DATA/test --out runs/shop/evaluation
    """
    from vitrina.classify.classifier import load

    clf = load(run_dir)
    with progress_bar("evaluating", None, enabled=not as_json) as update:
        rep = clf.evaluate(
            data_dir,
            top_k=top_k,
            backend=backend,
            device=device,
            batch_size=batch_size,
            on_progress=update,
            out=out_dir,
        )
    for path in rep.pictures.values():
        err.print(f"wrote {escape(str(path))}")
    if as_json:
        print_json(rep.to_dict())
        return
    t = Table(
        title=f"{rep.n} images: accuracy {rep.accuracy:.4f}"
        + "".join(f", top-{k} {v:.4f}" for k, v in rep.top_k.items() if k != 1)
    )
    for col in ("class", "precision", "recall", "f1", "support"):
        t.add_column(col, justify="left" if col == "class" else "right")
    for i, c in enumerate(rep.classes):
        t.add_row(
            escape(c),
            f"{rep.precision[i]:.3f}",
            f"{rep.recall[i]:.3f}",
            f"{rep.f1[i]:.3f}",
            str(rep.support[i]),
        )
    out.print(t)
    cm = Table(title="confusion (rows: true, columns: predicted)")
    cm.add_column("")
    for c in rep.classes:
        cm.add_column(escape(c), justify="right")
    for i, c in enumerate(rep.classes):
        cm.add_row(escape(c), *[str(int(v)) for v in rep.confusion[i]])
    out.print(cm)
    if rep.unreadable:
        out.print(f"{len(rep.unreadable)} unreadable images skipped:")
        for m in rep.unreadable:
            out.print(f"  {escape(m)}")


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate)
