"""``vitrina search``: the photos most like a query photo, from an index."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from vitrina.cli._choices import Backend, IndexMetric
from vitrina.cli._common import BACKEND_HELP, DEVICE_HELP, err, out, print_json, progress_bar


def search(
    index: Path = typer.Argument(..., help="Index folder made by `vitrina index build`."),
    queries: list[Path] = typer.Argument(..., help="Query photos."),
    k: int = typer.Option(10, "-k", "--k", help="Results per query."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    sheet: Path | None = typer.Option(
        None, "--sheet", help="Write a contact sheet PNG (a row per query)."
    ),
    html_out: Path | None = typer.Option(None, "--html", help="Write a self-contained HTML page."),
    metric: IndexMetric | None = typer.Option(
        None, "--metric", help="Only a check: the metric is fixed when the index is built."
    ),
    model: str | None = typer.Option(
        None, "--model", "-m", help="Only a check: must be the index's model."
    ),
    explain_dir: Path | None = typer.Option(
        None,
        "--explain",
        help="Write why the top results match: for each, the query and the result with the "
        "regions that drive their similarity (Grad-CAM on the embedding) side by side.",
    ),
    explain_top: int = typer.Option(3, help="Results per query explained with --explain."),
    backend: Backend = typer.Option("auto", help=BACKEND_HELP),
    device: str = typer.Option("auto", help=DEVICE_HELP),
) -> None:
    """Find the K photos in INDEX most like each query photo.

    Example: vitrina search photos.index query.jpg -k 10 --sheet results.png --html results.html

    Why do they match? vitrina search photos.index query.jpg --explain why/
    """
    from vitrina.search.query import search_photos, write_result_pages

    with progress_bar("embedding", len(queries), enabled=not as_json) as update:
        run = search_photos(
            index,
            queries,
            k=k,
            model=model,
            metric=metric,
            backend=backend,
            device=device,
            on_progress=update,
        )
    idx, results = run.index, run.results
    if idx.recovered:
        err.print(f"[yellow]repaired:[/] {escape(idx.recovered)}")
    if as_json:
        print_json(
            {
                "index": str(index),
                "metric": idx.metric,
                "kind": idx.kind,
                "recall": idx.info()["recall"],
                "results": [r.to_dict() for r in results],
            }
        )
    else:
        sim_name = "cosine sim" if idx.metric == "cosine" else "1/(1+d)"
        for r in results:
            if r.error:
                err.print(f"[red]unreadable[/] {escape(r.error)}")
                continue
            t = Table(title=f"{escape(r.query)}")
            t.add_column("rank", justify="right")
            t.add_column(sim_name, justify="right")
            t.add_column("distance", justify="right")
            t.add_column("label")
            t.add_column("path")
            for h in r.hits:
                t.add_row(
                    str(h.rank),
                    f"{h.similarity:.4f}",
                    f"{h.distance:.4f}",
                    escape(h.label),
                    escape(h.path),
                )
            out.print(t)
        if idx.kind != "exact" and idx.info()["recall"]:
            rec = idx.info()["recall"]["recall_at_10"]
            err.print(
                f"[dim]{idx.kind} index: measured recall@10 {rec:.3f} against exact search[/]"
            )
    if sheet or html_out:
        written = write_result_pages(run, sheet=sheet, html=html_out)
        for key, what in (("sheet", "contact sheet"), ("html", "html")):
            if key in written:
                err.print(f"{what}: {escape(str(written[key]))}")
    if explain_dir is not None:
        from vitrina.explain.similarity import explain_matches

        with progress_bar("explaining", None, enabled=not as_json, unit=None) as update:
            figures = explain_matches(
                run.embedder.model, results, explain_dir, top=explain_top, on_progress=update
            )
        err.print(f"why they match: {len(figures)} pairs in {escape(str(explain_dir))}")
    if any(r.error for r in results):
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("search")(search)
