"""``vitrina evaluate-retrieval``."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from vitrina.cli._choices import Backend, Pool, RetrievalMetric
from vitrina.cli._common import BACKEND_HELP, DEVICE_HELP, err, out, print_json, progress_bar

KS = (1, 5, 10)


def evaluate_retrieval(
    data_dir: Path = typer.Argument(..., help="Class-folder tree: DIR/<label>/<image>."),
    model: str = typer.Option(
        ..., "--model", "-m", help="Run folder, or a zoo name with ImageNet weights."
    ),
    layer: list[str] = typer.Option(
        None,
        "--layer",
        "-l",
        help="Layer to embed (repeatable; `vitrina embed MODEL "
        "--list-layers`). Default: the input of the classifier.",
    ),
    pool: Pool = typer.Option("avg", help="Pooling of feature maps (gem: generalized mean)."),
    normalize: bool = typer.Option(True, "--normalize/--no-normalize", help="L2-normalize."),
    metric: RetrievalMetric = typer.Option(
        "cosine", help="cosine (similarity) or euclidean (distance)."
    ),
    out_dir: Path = typer.Option(
        None, "--out", "-o", help="Folder for report.json and retrieval.png."
    ),
    backend: Backend = typer.Option("auto", help=BACKEND_HELP),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    batch_size: int = typer.Option(32, help="Images per forward pass."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """How well an embedding retrieves images of the same label: each image queries all the
    others; precision@k, recall@k, mAP and CMC.

    Example: vitrina evaluate-retrieval photos/ --model efficientnet_lite0 --layer blocks.5 --out eval/
    """
    from vitrina.embed import EmbeddingSpec
    from vitrina.embed.evaluate import REPORT_FILES
    from vitrina.embed.evaluate import evaluate_retrieval as run

    spec = EmbeddingSpec(model, tuple(layer or ()), pool=pool, normalize=normalize)
    with progress_bar("embedding", None, enabled=not as_json) as update:
        rep = run(
            data_dir,
            spec,
            metric=metric,
            ks=KS,
            backend=backend,
            device=device,
            batch_size=batch_size,
            out_dir=out_dir,
            on_progress=update,
        )
    files = [out_dir / name for name in REPORT_FILES] if out_dir is not None else []
    for m in rep.unreadable:
        err.print(f"[red]unreadable[/] {escape(m)}")
    if as_json:
        print_json(rep.to_dict())
        return
    t = Table(
        title=f"retrieval on {escape(str(data_dir))} ({escape(rep.info['model'])}, {metric}): "
        f"mAP {rep.mAP:.4f}, {rep.n_queries} queries, {rep.no_relevant} excluded"
    )
    t.add_column("")
    for k in KS:
        t.add_column(f"@{k}", justify="right")
    for name, values in (("precision", rep.precision), ("recall", rep.recall), ("CMC", rep.cmc)):
        t.add_row(name, *(f"{values[k]:.4f}" for k in KS))
    out.print(t)
    if rep.no_relevant:
        out.print(f"{rep.no_relevant} queries have no other image of their label (not scored)")
    if files:
        out.print("wrote " + ", ".join(escape(str(f)) for f in files))


def register(app: typer.Typer) -> None:
    app.command("evaluate-retrieval")(evaluate_retrieval)
