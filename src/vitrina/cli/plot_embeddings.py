"""``vitrina plot-embeddings``."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from vitrina.cli._choices import Backend, Projection
from vitrina.cli._common import BACKEND_HELP, DEVICE_HELP, err, out, progress_bar


def plot_embeddings(
    data_dir: Path = typer.Argument(
        ...,
        help="Identities or classes: one sub-folder per label, or a Market-1501 folder (its "
        "query/ and bounding_box_test/ images, the identities not trained on, are drawn).",
    ),
    model: list[str] = typer.Option(
        ..., "--model", "-m", help="Run folder or zoo name; repeat to compare models."
    ),
    before: bool = typer.Option(
        True,
        "--before/--no-before",
        help="Also draw the weights a run started from (before training), left of the run.",
    ),
    method: Projection = typer.Option("tsne", help="tsne (scikit-learn) or umap (umap-learn)."),
    out_path: Path = typer.Option(Path("embeddings.png"), "--out", "-o", help="PNG to write."),
    max_labels: int = typer.Option(20, help="Draw at most this many labels (seeded choice)."),
    max_images: int = typer.Option(2000, help="Draw at most this many images."),
    seed: int = typer.Option(0, help="Seed of the label choice and the projection."),
    backend: Backend = typer.Option("eager", help=BACKEND_HELP),
    device: str = typer.Option("auto", help=DEVICE_HELP),
) -> None:
    """Draw a 2-D map (t-SNE or UMAP) of a folder's embeddings, coloured by label.

    With a run from `vitrina train-embedding`, the map of its starting weights is drawn next
    to it: before and after training. Each panel also gives the leave-one-out retrieval mAP.

    Example: vitrina plot-embeddings faces/ --model runs/faces-arcface --out map.png
    """
    from vitrina.embed.projection import plot_embeddings as run

    with progress_bar("embedding", None) as update:
        drawn = run(
            data_dir,
            model,
            out_path,
            before=before,
            method=method,
            max_labels=max_labels,
            max_images=max_images,
            seed=seed,
            backend=backend,
            device=device,
            on_progress=update,
        )
    for path, msg in drawn.errors:
        err.print(f"[yellow]skipped unreadable[/] {escape(str(path))}: {escape(msg)}")
    for panel in drawn.panels:
        if panel.mAP is not None:
            out.print(f"{escape(panel.title)}: leave-one-out mAP {panel.mAP:.3f}")
    out.print(f"wrote {escape(str(drawn.path))} ({drawn.images} images, {len(drawn.names)} labels)")


def register(app: typer.Typer) -> None:
    app.command("plot-embeddings")(plot_embeddings)
