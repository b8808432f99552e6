"""``vitrina data ...``: look at a dataset folder before training on it."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from vitrina.cli._common import err, out, print_json, progress_bar

app = typer.Typer(help="Inspect dataset folders.", no_args_is_help=True)


@app.command("inspect")
def inspect_cmd(
    data_dir: Path = typer.Argument(..., help="Folder with one sub-folder of images per class."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON report instead of tables."),
) -> None:
    """Count images per class; list unreadable files, exact duplicates and image sizes.

    Example: vitrina data inspect photos/
    """
    from vitrina.data import inspect_folder

    with progress_bar("reading", None, enabled=not as_json) as update:
        report = inspect_folder(data_dir, on_progress=update)
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
