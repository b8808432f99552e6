"""``vitrina dedupe``: groups of near-duplicate photos (nothing is deleted)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from vitrina.cli._choices import Backend
from vitrina.cli._common import BACKEND_HELP, DEVICE_HELP, err, out, print_json, progress_bar

#: vitrina.search.dedupe.DEFAULT_THRESHOLD (written out: importing vitrina.search costs every
#: command's start-up; tests/test_cli_contract.py holds the two equal).
DEFAULT_THRESHOLD = 0.88


def dedupe(
    folder: Path = typer.Argument(..., help="Folder of photos (searched recursively)."),
    model: str = typer.Option(
        ...,
        "--model",
        "-m",
        help="Run folder or zoo name with ImageNet weights (efficientnet_lite0).",
    ),
    threshold: float = typer.Option(
        DEFAULT_THRESHOLD,
        help="Cosine similarity at or above which two photos are near-duplicates "
        f"(default {DEFAULT_THRESHOLD}: measured for efficientnet_lite0, see README).",
    ),
    csv_out: Path | None = typer.Option(None, "--out", "-o", help="Write the groups as CSV."),
    sheet: Path | None = typer.Option(
        None, "--sheet", help="Write a contact sheet PNG (a row per group)."
    ),
    move_to: Path | None = typer.Option(
        None,
        "--move-to",
        help="Move all but the first photo of each group here (verified, never overwrites).",
    ),
    backend: Backend = typer.Option("auto", help=BACKEND_HELP),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Find groups of near-duplicate photos. Nothing is touched unless --move-to is given.

    Exact copies (same bytes) always group. The first photo of a group (most pixels, then
    biggest file) is the one kept.

    Example: vitrina dedupe photos --model efficientnet_lite0 --out dupes.csv --sheet dupes.png
    """
    from vitrina.search.dedupe import find_duplicates, move_duplicates, write_csv, write_sheet

    with progress_bar("embedding", None, enabled=not as_json) as update:
        report = find_duplicates(
            folder,
            model=model,
            threshold=threshold,
            backend=backend,
            device=device,
            on_progress=update,
        )
    if move_to is not None and report.groups:
        with progress_bar("moving", report.duplicates, enabled=not as_json, unit=None) as update:
            move_duplicates(report, move_to, on_progress=update)
    if csv_out:
        write_csv(report, csv_out)
    if sheet:
        write_sheet(report, sheet)
    if as_json:
        print_json(report.to_dict())
    else:
        for path, msg in report.errors:
            err.print(f"[yellow]unreadable[/] {escape(path)}: {escape(msg)}")
        if report.groups:
            t = Table(
                title=f"{len(report.groups)} groups of near-duplicates (threshold {threshold})"
            )
            t.add_column("group", justify="right")
            t.add_column("similarity", justify="right")
            t.add_column("path")
            t.add_column("")
            for gi, g in enumerate(report.groups, 1):
                for mi, m in enumerate(g):
                    note = "kept" if mi == 0 else ("same bytes" if m.exact else "")
                    if m.moved_to:
                        note = f"moved to {m.moved_to}"
                    t.add_row(
                        str(gi) if mi == 0 else "",
                        f"{m.similarity:.3f}",
                        escape(m.path),
                        escape(note),
                    )
            out.print(t)
        moved = sum(1 for g in report.groups for m in g if m.moved_to)
        line = (
            f"{report.images} photos, {len(report.groups)} groups, {report.duplicates} duplicates"
        )
        line += (
            f"; moved {moved} to {move_to}"
            if move_to is not None
            else "; nothing moved (use --move-to DIR)"
        )
        out.print(escape(line))
        for what, path in (("csv", csv_out), ("contact sheet", sheet)):
            if path:
                err.print(f"{what}: {escape(str(path))}")


def register(app: typer.Typer) -> None:
    app.command("dedupe")(dedupe)
