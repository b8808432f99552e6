"""``vitrina data ...``: look at a dataset folder before training on it."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from vitrina.cli._common import err, out, pictures_dir_option, print_json, progress_bar

app = typer.Typer(help="Inspect dataset folders.", no_args_is_help=True)


@app.command("inspect")
def inspect_cmd(
    data_dir: Path = typer.Argument(
        ...,
        help="Folder with one sub-folder of images per class, or annotated photos (COCO, YOLO, "
        "Pascal VOC).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON report instead of tables."),
    out_dir: Path | None = pictures_dir_option(
        "samples.png (photos of each class), duplicates.png (identical files side by side) and "
        "sizes.png (the size distribution)"
    ),
) -> None:
    """Count images per class; list unreadable files, exact duplicates and image sizes. For
    annotated photos: boxes per class, box sizes, empty photos, and every box outside its
    photo, of zero size or of an unknown class (named, skipped, counted).

    Examples: vitrina data inspect photos/ --out photos-look/    vitrina data inspect shelves-voc/
    """
    from vitrina.cli.detect import inspect_annotated
    from vitrina.data import inspect_folder

    if inspect_annotated(data_dir, as_json):  # COCO / YOLO / VOC: the detection report
        if out_dir is not None:
            err.print("[yellow]note:[/] --out draws class-folder datasets; nothing drawn here")
        return
    with progress_bar("reading", None, enabled=not as_json) as update:
        report = inspect_folder(data_dir, on_progress=update, out=out_dir)
    for path in report.pictures.values():
        err.print(f"wrote {escape(str(path))}")
    if as_json:
        print_json(report.to_dict())
        return
    t = Table(title=f"{data_dir}: {report.total} images in {len(report.classes)} classes")
    t.add_column("class")
    t.add_column("images", justify="right")
    t.add_column("share", justify="right")
    for name, n in report.classes.items():
        t.add_row(escape(name), str(n), f"{n / max(report.total, 1):.1%}")
    out.print(t)
    stats = report.size_stats()
    if stats:
        w, h = stats["width"], stats["height"]
        out.print(
            f"size (w x h): min {w['min']}x{h['min']}, median {w['median']:.0f}x{h['median']:.0f}, "
            f"max {w['max']}x{h['max']}"
        )
    out.print(
        f"skipped: {report.skipped_hidden} hidden, {report.skipped_non_image} not images"
        + (f", {report.loose_images} images outside class folders" if report.loose_images else "")
    )
    out.print(f"unreadable: {len(report.unreadable)}")
    for p, why in report.unreadable:
        out.print(f"  {escape(str(p))}: {escape(why)}")
    out.print(f"exact duplicates: {len(report.duplicates)} groups")
    for group in report.duplicates:
        out.print("  " + " = ".join(escape(str(p)) for p in group))
    counts = [n for n in report.classes.values()]
    if counts and max(counts) > 3 * max(min(counts), 1):
        err.print("[yellow]note:[/] classes are imbalanced (largest > 3x smallest)")


@app.command("to-market")
def to_market_cmd(
    src: Path = typer.Argument(..., help="Folder with one sub-folder of images per person."),
    dst: Path = typer.Argument(..., help="New or empty folder for the Market-1501 layout."),
    train_ids: int | None = typer.Option(
        None, "--train-ids", help="People in the train split (the rest are test)."
    ),
    train_fraction: float | None = typer.Option(
        None, "--train-fraction", help="Share of people in the train split (default 0.5)."
    ),
    cameras: int = typer.Option(6, "--cameras", help="Pseudo-cameras to spread images over."),
    queries_per_id: int | None = typer.Option(
        None,
        "--queries-per-id",
        help="Query images per test person (default: every image of the query camera, "
        "1 in --cameras; at most all but one).",
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the split and camera assignment."),
) -> None:
    """Copy a folder-per-person set into the Market-1501 layout for re-id training/evaluation.

    People (never images) are split into train and test. Each test person's images on the query camera (camera 1: one image in --cameras, or --queries-per-id N) are queries, the rest the gallery on the other cameras, so every query has matches and a small set gives stable figures. Sources are only read; DST/identities.json maps the new names back.

    Example: vitrina data to-market people/ people-market/ --train-fraction 0.6
    """
    from vitrina.data import to_market

    with progress_bar("copying", None) as update:
        r = to_market(
            src,
            dst,
            train_ids=train_ids,
            train_fraction=train_fraction,
            cameras=cameras,
            queries_per_id=queries_per_id,
            seed=seed,
            on_progress=update,
        )
    t = Table(title=f"{escape(str(dst))}: Market-1501 layout")
    t.add_column("split")
    t.add_column("identities", justify="right")
    t.add_column("images", justify="right")
    t.add_row("train (bounding_box_train)", str(r.train_ids), str(r.train_images))
    t.add_row("query", str(r.query_ids), str(r.query_images))
    t.add_row("gallery (bounding_box_test)", str(r.gallery_ids), str(r.gallery_images))
    out.print(t)
    if r.skipped_train_singletons:
        out.print(f"skipped {r.skipped_train_singletons} train identities with a single image")
    if r.gallery_only_singletons:
        out.print(f"{r.gallery_only_singletons} test identities with a single image: gallery only")


def _register_convert() -> None:
    from vitrina.cli.detect import register_data

    register_data(app)


_register_convert()
