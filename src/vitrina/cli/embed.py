"""``vitrina embed``."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from vitrina.cli._choices import Backend, Pool
from vitrina.cli._common import (
    BACKEND_HELP,
    DEVICE_HELP,
    err,
    out,
    print_json,
    progress_bar,
    ray_option,
    ray_options,
    ray_workers_option,
)


def embed(
    model: str = typer.Argument(
        ..., help="Run folder, or a zoo name with ImageNet weights (efficientnet_lite0)."
    ),
    inputs: list[Path] = typer.Argument(None, help="Image files and/or folders of images."),
    out_path: Path = typer.Option(
        None, "--out", "-o", help="vectors.npy (+ vectors.csv with index,path) or vectors.parquet."
    ),
    layer: list[str] = typer.Option(
        None,
        "--layer",
        "-l",
        help="Layer to embed (repeatable; see --list-layers). "
        "Default: the input of the classifier.",
    ),
    pool: Pool = typer.Option("avg", help="Pooling of feature maps (gem: generalized mean)."),
    normalize: bool = typer.Option(True, "--normalize/--no-normalize", help="L2-normalize."),
    backend: Backend = typer.Option("auto", help=BACKEND_HELP),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    batch_size: int = typer.Option(32, help="Images per forward pass."),
    recursive: bool = typer.Option(False, "--recursive", "-r", help="Descend into sub-folders."),
    list_layers: bool = typer.Option(
        False, "--list-layers", help="Print the model's layers with their output shapes and exit."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary."),
    ray: str = ray_option(),
    ray_workers: int = ray_workers_option(),
) -> None:
    """Embedding vectors for images, one row per readable image.

    Unreadable files are listed on stderr, the rest are written, and the exit code is 1.

    Example: vitrina embed efficientnet_lite0 photos/ --out vectors.npy --layer blocks.5 --layer bn2

    On Ray (many machines, or every core of this one): add --ray or --ray ADDRESS.
    """
    from vitrina.embed.files import embed_files
    from vitrina.errors import VitrinaError

    if list_layers:
        _print_layers(model, as_json)
        return
    if inputs and out_path is None:
        raise VitrinaError("--out is required (vectors.npy or vectors.parquet)")
    embed = embed_files
    on_ray = ray_options(ray, ray_workers)
    if on_ray is not None:
        from functools import partial

        from vitrina.scale import ray_embed_files

        embed = partial(ray_embed_files, ray=on_ray)  # the same options, on Ray
    with progress_bar("embedding", None, enabled=not as_json) as update:
        run = embed(
            model,
            inputs or [],
            out_path,
            layers=layer or (),
            pool=pool,
            normalize=normalize,
            backend=backend,
            device=device,
            batch_size=batch_size,
            recursive=recursive,
            on_progress=update,
        )
    res = run.result
    for p, msg in res.errors:
        err.print(f"[red]unreadable[/] {escape(msg if str(p) in msg else f'{p}: {msg}')}")
    summary = run.summary()
    if as_json:
        print_json(summary)
    else:
        out.print(
            f"{summary['vectors']} vectors of {summary['dim']} ({escape(summary['model'])}) -> "
            + ", ".join(escape(f) for f in summary["files"])
        )
    if res.errors:
        raise typer.Exit(1)


def _print_layers(model: str, as_json: bool) -> None:
    from vitrina.embed.files import describe_layers

    table = describe_layers(model)
    if as_json:
        print_json([{"layer": n, "shape": list(s)} for n, s in table.shapes.items()])
        return
    t = Table(title=f"{escape(table.arch)}: layers (output shape for one input)")
    t.add_column("layer")
    t.add_column("output shape", justify="right")
    for n, s in table.shapes.items():
        t.add_row(escape(n), " x ".join(str(d) for d in s))
    out.print(t)
    out.print(
        f"{table.total} layer names in all: any graph node below these is accepted too "
        "(e.g. a block's last conv); pass one or more with --layer."
    )


def register(app: typer.Typer) -> None:
    app.command("embed")(embed)
