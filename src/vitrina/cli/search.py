"""``vitrina search``: the photos most like a query photo, from an index."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

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
    metric: str | None = typer.Option(
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
    backend: str = typer.Option("auto", help=BACKEND_HELP),
    device: str = typer.Option("auto", help=DEVICE_HELP),
) -> None:
    """Find the K photos in INDEX most like each query photo.

    Example: vitrina search photos.index query.jpg -k 10 --sheet results.png --html results.html

    Why do they match? vitrina search photos.index query.jpg --explain why/
    """
    from vitrina.errors import VitrinaError
    from vitrina.search.index import Index

    if k < 1:
        raise VitrinaError(f"-k must be at least 1, got {k}")
    idx = Index.open(index, backend=backend, device=device)
    if idx.recovered:
        err.print(f"[yellow]repaired:[/] {escape(idx.recovered)}")
    if metric is not None and metric != idx.metric:
        raise VitrinaError(
            f"{index}: built with the {idx.metric} metric; the metric is fixed when an index is "
            f"built (the vectors and structure depend on it): drop --metric, or build another "
            f"index with --metric {metric}"
        )
    embedder = None
    if model is not None:
        from vitrina.embed import Embedder, EmbeddingSpec

        spec = idx.spec
        embedder = Embedder(
            EmbeddingSpec(model, layers=spec.layers if spec else ()), backend=backend, device=device
        )
    with progress_bar("embedding", len(queries), enabled=not as_json) as update:
        results = idx.search(queries, k=k, embedder=embedder, on_progress=update)
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
        from vitrina.report.sheets import SheetRow, Tile, write_contact_sheet, write_html

        dist = "d" if idx.metric == "cosine" else "L2"
        rows = [
            SheetRow(
                Path(r.query).name,
                [Tile(r.query, "query")]
                + [Tile(h.path, f"#{h.rank} {dist}={h.distance:.3f}\n{h.label}") for h in r.hits],
            )
            for r in results
            if not r.error
        ]
        if sheet:
            write_contact_sheet(rows, sheet)
            err.print(f"contact sheet: {escape(str(sheet))}")
        if html_out:
            write_html(
                rows,
                html_out,
                title=f"search in {index}",
                errors=[r.error for r in results if r.error],
            )
            err.print(f"html: {escape(str(html_out))}")
    if explain_dir is not None:
        from vitrina.explain.similarity import write_match_explanations

        model = (embedder or idx.embedder).model
        n = 0
        with progress_bar("explaining", None, enabled=not as_json, unit=None) as update:
            for r in results:
                if r.error:
                    continue
                for h in r.hits[:explain_top]:
                    write_match_explanations(model, r.query, h.path, h.rank, explain_dir)
                    n += 1
                    update(n)
        err.print(f"why they match: {n} pairs in {escape(str(explain_dir))}")
    if any(r.error for r in results):
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("search")(search)
