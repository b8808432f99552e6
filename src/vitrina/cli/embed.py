"""``vitrina embed``."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from vitrina.cli._common import (
    BACKEND_HELP,
    DEVICE_HELP,
    err,
    out,
    print_json,
    progress_bar,
    refuse_existing,
)


def collect_images(inputs: list[Path], recursive: bool) -> list[Path]:
    """Files as given; folders expanded to their images (sorted), in argument order."""
    from vitrina.data import iter_image_files
    from vitrina.errors import VitrinaError

    paths: list[Path] = []
    for p in inputs:
        if p.is_dir():
            paths += iter_image_files(p, recursive=recursive)[0]
        elif p.exists() or p.is_symlink():
            paths.append(p)
        else:
            raise VitrinaError(f"{p}: no such file or folder")
    return paths


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
    pool: str = typer.Option("avg", help="Pooling of feature maps: avg, max, gem."),
    normalize: bool = typer.Option(True, "--normalize/--no-normalize", help="L2-normalize."),
    backend: str = typer.Option("auto", help=BACKEND_HELP),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    batch_size: int = typer.Option(32, help="Images per forward pass."),
    recursive: bool = typer.Option(False, "--recursive", "-r", help="Descend into sub-folders."),
    list_layers: bool = typer.Option(
        False, "--list-layers", help="Print the model's layers with their output shapes and exit."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary."),
) -> None:
    """Embedding vectors for images, one row per readable image.

    Unreadable files are listed on stderr, the rest are written, and the exit code is 1.

    Example: vitrina embed efficientnet_lite0 photos/ --out vectors.npy --layer blocks.5 --layer bn2
    """
    from vitrina.embed import Embedder, EmbeddingSpec
    from vitrina.errors import VitrinaError

    if list_layers:
        _print_layers(model, as_json)
        return
    if not inputs:
        raise VitrinaError("no images given: vitrina embed MODEL DIR_OR_FILES... --out vectors.npy")
    if out_path is None:
        raise VitrinaError("--out is required (vectors.npy or vectors.parquet)")
    from vitrina.embed.output import output_files, write_vectors

    refuse_existing(*output_files(out_path))  # before spending minutes on the model
    paths = collect_images(list(inputs), recursive)
    if not paths:
        hint = "" if recursive else " (--recursive descends into sub-folders)"
        raise VitrinaError(f"no images in {', '.join(str(p) for p in inputs)}{hint}")
    spec = EmbeddingSpec(model, tuple(layer or ()), pool=pool, normalize=normalize)
    emb = Embedder(spec, backend=backend, device=device, batch_size=batch_size)
    with progress_bar("embedding", len(paths), enabled=not as_json) as update:
        res = emb.embed_paths(paths, on_progress=update)
    for p, msg in res.errors:
        err.print(f"[red]unreadable[/] {escape(msg if str(p) in msg else f'{p}: {msg}')}")
    if not len(res.paths):
        raise VitrinaError(f"none of the {len(paths)} images could be read; nothing written")
    meta = {"spec": emb.spec.to_dict(), "fingerprint": emb.fingerprint, "model": emb.model_label}
    files = write_vectors(res, out_path, meta=meta)
    summary = {
        "files": [str(f) for f in files],
        "vectors": len(res.paths),
        "dim": emb.dim,
        "unreadable": len(res.errors),
        "model": emb.model_label,
        "fingerprint": emb.fingerprint,
        "backend": emb.engine.backend_name,
    }
    if as_json:
        print_json(summary)
    else:
        out.print(
            f"{len(res.paths)} vectors of {emb.dim} ({escape(emb.model_label)}) -> "
            + ", ".join(escape(str(f)) for f in files)
        )
    if res.errors:
        raise typer.Exit(1)


def _print_layers(model: str, as_json: bool) -> None:
    from vitrina.embed import layer_shapes, list_layers, load_source
    from vitrina.embed.layers import module_layers

    source = load_source(model)[0]
    shapes = layer_shapes(source, module_layers(source))
    total = len(list_layers(source))
    if as_json:
        print_json([{"layer": n, "shape": list(s)} for n, s in shapes.items()])
        return
    t = Table(title=f"{escape(source.arch)}: layers (output shape for one input)")
    t.add_column("layer")
    t.add_column("output shape", justify="right")
    for n, s in shapes.items():
        t.add_row(escape(n), " x ".join(str(d) for d in s))
    out.print(t)
    out.print(
        f"{total} layer names in all: any graph node below these is accepted too "
        "(e.g. a block's last conv); pass one or more with --layer."
    )


def register(app: typer.Typer) -> None:
    app.command("embed")(embed)
