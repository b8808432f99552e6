"""``vitrina explain atlas``: the activation atlas of a layer over many photos."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from vitrina.cli._choices import AtlasLayout
from vitrina.cli._common import err, out


def atlas(
    model: str = typer.Argument(..., help="Run folder or zoo name (ImageNet weights)."),
    photos: list[Path] = typer.Argument(..., help="Photos or folders of photos (recursive)."),
    layer: str = typer.Option(
        ..., "--layer", "-l", help="A convolutional layer (see explain neuron --list-layers)."
    ),
    grid: int = typer.Option(20, help="Cells per side of the grid over the layout."),
    positions: int = typer.Option(16, help="Spatial positions sampled per photo."),
    min_count: int = typer.Option(3, help="Activations a cell needs to be drawn."),
    size: int = typer.Option(48, help="Side of each cell's feature visualisation (pixels)."),
    steps: int = typer.Option(64, help="Optimisation steps of each visualisation."),
    layout: AtlasLayout = typer.Option(
        "umap", help="2-D layout: umap (the paper's; compiles ~1 min on first use) or tsne."
    ),
    max_photos: int = typer.Option(1000, help="Use at most this many photos (a seeded sample)."),
    seed: int = typer.Option(0, help="Seed: the same photos and seed give the same atlas."),
    num_workers: int | None = typer.Option(None, "--workers", help="Image decoding processes."),
    out_path: Path = typer.Option(
        Path("atlas.png"), "--out", "-o", help="PNG to write (and a .json beside it)."
    ),
) -> None:
    """The activation atlas (Carter et al., 2019): activations of a layer over many photos,
    laid out in 2-D with UMAP; a grid over the layout; for each cell the feature
    visualisation of its mean activation direction, with the cell's most typical photo
    patches beside it.

    A 20x20 grid of 48-pixel icons takes a few minutes on a CPU (UMAP's first call also
    compiles for about a minute).

    Example: vitrina explain atlas efficientnet_lite0 photos/ --layer blocks.5
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from vitrina.explain.atlas import atlas_files

    labels = {
        "activations": "reading activations",
        "layout": "UMAP layout" if layout == "umap" else "t-SNE layout",
        "icons": "drawing cells",
    }
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        console=err,
        transient=True,
    ) as bar:
        tasks: dict[str, int] = {}

        def step(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(labels.get(stage, stage), total=total)
            bar.update(tasks[stage], completed=done, total=total)

        result, png, meta = atlas_files(
            model,
            photos,
            layer,
            out_path,
            grid=grid,
            positions=positions,
            min_count=min_count,
            size=size,
            steps=steps,
            layout=layout,
            max_photos=max_photos,
            seed=seed,
            num_workers=num_workers,
            on_progress=step,
        )
    for line in result.bad:
        err.print(f"skipped {escape(line)}")
    out.print(
        f"wrote {escape(str(png))} ({len(result.cells)} cells of a {grid}x{grid} grid, "
        f"{result.settings['vectors']} activations of layer {escape(result.layer)}) "
        f"and {escape(str(meta))}"
    )


def register(root: typer.Typer) -> None:
    from vitrina.cli.explain import app

    app.command("atlas")(atlas)
