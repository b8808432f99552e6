"""``vitrina sort``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.markup import escape
from rich.table import Table

from vitrina.cli._choices import Backend
from vitrina.cli._common import (
    BACKEND_HELP,
    DEVICE_HELP,
    err,
    out,
    progress_bar,
    ray_option,
    ray_options,
    ray_workers_option,
    report_option,
    sheet_option,
)

if TYPE_CHECKING:
    from vitrina.classify.sort import SortItem, SortSummary


def sort(
    photos_dir: Path = typer.Argument(..., help="Folder of photos to sort."),
    model: str = typer.Option(..., "--model", "-m", help="Run folder made by `vitrina train`."),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Where the class folders go."),
    min_confidence: float = typer.Option(
        0.5, help="Photos whose top probability is below this go to unsure/."
    ),
    copy: bool = typer.Option(False, "--copy", help="Copy photos (the default)."),
    move: bool = typer.Option(
        False, "--move", help="Move photos (copy, sync, verify, then delete)."
    ),
    link: bool = typer.Option(False, "--link", help="Make symbolic links to the photos."),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Show where each photo would go; change nothing."
    ),
    recursive: bool = typer.Option(False, "--recursive", "-r", help="Include sub-folders."),
    backend: Backend = typer.Option("auto", help=BACKEND_HELP),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    batch_size: int = typer.Option(16, help="Images per forward pass."),
    as_json: bool = typer.Option(False, "--json", help="Print every placement as JSON."),
    ray: str = ray_option(),
    ray_workers: int = ray_workers_option(),
    report: Path | None = report_option(
        "every folder's photos, least confident first, unsure/ and unreadable/ set apart, "
        "with counts"
    ),
    sheet: Path | None = sheet_option("a row of the least confident photos per folder"),
) -> None:
    """Sort photos into OUT/<class>/, OUT/unsure/ and OUT/unreadable/.

    Never overwrites (a clash gets a -1 suffix); writes OUT/manifest.csv (source, destination,
    label, confidence, top 3). Running the same command again finishes an interrupted job
    without duplicating anything.

    Example: vitrina sort new_photos/ --model runs/shop --out sorted/ --min-confidence 0.7
    --report sorted/report.html

    On Ray (many machines, or every core of this one): add --ray or --ray ADDRESS.
    """
    from vitrina.classify.sort import sort_folder

    run = sort_folder
    on_ray = ray_options(ray, ray_workers)
    if on_ray is not None:
        from functools import partial

        from vitrina.scale import ray_sort_folder

        run = partial(ray_sort_folder, ray=on_ray)  # the same options, on Ray

    chosen = [m for m, on in (("copy", copy), ("move", move), ("link", link)) if on]
    if len(chosen) > 1:
        err.print("error: choose one of --copy, --move, --link")
        raise typer.Exit(2)
    method = chosen[0] if chosen else "copy"
    rows = _JsonList() if as_json else None

    def show(item: SortItem) -> None:  # streamed: memory stays flat over any folder
        if rows is not None:
            rows.add(item.row())
        elif dry_run:
            print(f"{item.source} -> {item.destination}  ({item.confidence:.2f})", flush=False)

    try:
        with progress_bar("sorting", None, enabled=not as_json) as update:
            summary = run(
                photos_dir,
                model,
                out_dir,
                min_confidence=min_confidence,
                method=method,
                dry_run=dry_run,
                recursive=recursive,
                backend=backend,
                device=device,
                batch_size=batch_size,
                on_progress=lambda d, n: update(d, n),
                on_item=show,
                keep_items=False,
                report=report,
                sheet=sheet,
            )
    finally:
        if rows is not None:
            rows.close()  # valid JSON even when the sort stopped on an error
    for line in summary.repaired:
        err.print(f"[yellow]repaired[/] {escape(line)}")
    if rows is None:
        _print_table(summary, out_dir, method, dry_run)
    if summary.in_subfolders:
        err.print(
            f"[yellow]{escape(str(photos_dir))}: no photos directly in it; "
            f"{summary.in_subfolders} lie in its sub-folders: add --recursive (-r) to sort them[/]"
        )
    for it in summary.unreadable:
        err.print(f"[yellow]unreadable[/] {escape(it.error)}")
    for line in summary.problems:
        err.print(f"[red]{escape(line)}[/]")
    for path in summary.pictures:
        err.print(f"wrote {escape(str(path))}")
    if summary.backend:
        err.print(f"[dim]backend: {escape(summary.backend)}[/]")
    if summary.problems:
        err.print(f"[red]{len(summary.problems)} photo(s) not placed[/] (listed above)")
        raise typer.Exit(1)


def _print_table(summary: SortSummary, out_dir: Path, method: str, dry_run: bool) -> None:
    verb = (
        "would place" if dry_run else {"copy": "copied", "move": "moved", "link": "linked"}[method]
    )
    t = Table(title=f"{verb} {summary.placed} photos into {out_dir}")
    t.add_column("folder")
    t.add_column("photos", justify="right")
    for folder, n in summary.counts.items():
        t.add_row(escape(folder), str(n))
    out.print(t)
    if summary.skipped_done:
        out.print(f"{summary.skipped_done} photos were already sorted by an earlier run")
    if not dry_run and (summary.placed or summary.errors):
        out.print(f"manifest: {summary.manifest}")


class _JsonList:
    """A JSON list written item by item (the output of --json, without holding it)."""

    def __init__(self) -> None:
        self.n = 0

    def add(self, obj: object) -> None:
        sys.stdout.write(("[\n" if not self.n else ",\n") + json.dumps(obj, default=str))
        self.n += 1

    def close(self) -> None:
        sys.stdout.write("[]\n" if not self.n else "\n]\n")


def register(app: typer.Typer) -> None:
    app.command("sort")(sort)
