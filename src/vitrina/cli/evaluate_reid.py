"""``vitrina evaluate-reid``."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from vitrina.cli._choices import Backend, ReidMetric
from vitrina.cli._common import BACKEND_HELP, DEVICE_HELP, err, out, print_json, progress_bar

RANKS = (1, 5, 10)


def evaluate_reid(
    model: str = typer.Argument(..., help="Run folder, or a zoo name with ImageNet weights."),
    data_dir: Path = typer.Argument(
        ...,
        help="Market-1501 style folder: query/ and bounding_box_test/ (`vitrina data "
        "to-market` makes one from a folder per identity).",
    ),
    rerank: bool = typer.Option(
        False, "--rerank", help="Also score with k-reciprocal re-ranking (Zhong et al. 2017)."
    ),
    k1: int = typer.Option(20, help="Re-ranking: k of the k-reciprocal neighbours."),
    k2: int = typer.Option(6, help="Re-ranking: neighbours of the local query expansion."),
    lambda_value: float = typer.Option(
        0.3, "--lambda", help="Re-ranking: weight of the original distance."
    ),
    metric: ReidMetric = typer.Option("euclidean", help="Distance of the L2-normalised vectors."),
    local_weight: float = typer.Option(
        1.0,
        help="Runs with local stripes (AlignedReID): weight of the local distance in the "
        "combined one, global + w x local.",
    ),
    out_dir: Path | None = typer.Option(
        None, "--out", "-o", help="Folder for report.json, cmc.png and ranked.png."
    ),
    sheet_rows: int = typer.Option(20, help="Queries on the ranked-results sheet."),
    backend: Backend = typer.Option("auto", help=BACKEND_HELP),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    batch_size: int = typer.Option(32, help="Images per forward pass."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Re-identification quality: every query against the gallery, Market-1501 protocol.

    Gallery images of the query's identity from the query's own camera are left out (too
    easy), junk images (id -1) too; distractors (id 0000) stay as wrong answers. Prints CMC
    rank-1/5/10, mAP and mINP; --out also draws the CMC curve and a sheet of ranked results
    (right answers framed green, wrong red; the worst queries first).

    A run trained with --local-stripes is scored with the global distance, the local
    (stripe-aligned) distance and their combination, with what each costs per query.

    Example: vitrina evaluate-reid runs/people-triplet market/ --rerank --out eval/
    """
    from vitrina.embed.reid import evaluate_reid as run

    with progress_bar("embedding", None, enabled=not as_json) as update:
        ev = run(
            data_dir,
            model,
            rerank=rerank,
            metric=metric,
            k1=k1,
            k2=k2,
            lambda_value=lambda_value,
            local_weight=local_weight,
            backend=backend,
            device=device,
            batch_size=batch_size,
            out_dir=out_dir,
            sheet_rows=sheet_rows,
            on_progress=update,
        )
    reports = ev.reports
    for m in ev.unreadable:
        err.print(f"[red]unreadable[/] {escape(m)}")
    if as_json:
        print_json({name: _summary(r) for name, r in reports.items()})
        return
    rep = ev.report
    t = Table(
        title=f"re-identification on {escape(str(data_dir))} ({escape(rep.info['model'])}): "
        f"{rep.n_queries} queries, {rep.gallery_size} gallery images"
    )
    t.add_column("")
    for k in RANKS:
        t.add_column(f"rank-{k}", justify="right")
    t.add_column("mAP", justify="right")
    t.add_column("mINP", justify="right")
    if ev.parts:
        t.add_column("ms / query", justify="right")
    for name, r in reports.items():
        cost = (
            [f"{ev.ms_per_query[name]:.2f}" if name in ev.ms_per_query else ""] if ev.parts else []
        )
        t.add_row(name, *(f"{r.cmc[k]:.4f}" for k in RANKS), f"{r.mAP:.4f}", f"{r.mINP:.4f}", *cost)
    out.print(t)
    if ev.parts:
        out.print(
            f"combined = {escape(rep.info['local']['combined'])}; ms / query: computing and "
            "ranking that distance (the embedding pass is shared)"
        )
    if rep.no_match:
        out.print(f"{rep.no_match} queries have no valid match in the gallery (not scored)")
    if ev.files:
        out.print("wrote " + ", ".join(escape(str(f)) for f in ev.files))


def _summary(r) -> dict:  # type: ignore[no-untyped-def]
    d = r.to_dict()
    return {
        k: d[k]
        for k in ("mAP", "mINP", "cmc", "metric", "n_queries", "no_match", "gallery_size", "info")
    }


def register(app: typer.Typer) -> None:
    app.command("evaluate-reid")(evaluate_reid)
