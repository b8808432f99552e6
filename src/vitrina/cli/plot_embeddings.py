"""``vitrina plot-embeddings``."""

from __future__ import annotations

import random
from pathlib import Path

import typer
from rich.markup import escape

from vitrina.cli._common import BACKEND_HELP, DEVICE_HELP, err, out, progress_bar, refuse_existing


def _starting_point(run: str) -> str | None:
    """The zoo model an embedding/classifier run started from (ImageNet weights), if any."""
    from vitrina.runs import is_run_dir, read_run

    if not is_run_dir(run):
        return None
    info = read_run(run)
    w = info.config.get("weights")
    if w in ("imagenet", "default", "pretrained"):
        return info.arch
    if w and is_run_dir(w):
        return str(w)
    return None


def plot_embeddings(
    data_dir: Path = typer.Argument(
        ...,
        help="Identities or classes: one sub-folder per label, or a Market-1501 folder (its "
        "query/ and bounding_box_test/ images, the identities not trained on, are drawn).",
    ),
    model: list[str] = typer.Option(
        ..., "--model", "-m", help="Run folder or zoo name; repeat to compare models."
    ),
    before: bool = typer.Option(
        True,
        "--before/--no-before",
        help="Also draw the weights a run started from (before training), left of the run.",
    ),
    method: str = typer.Option("tsne", help="tsne (scikit-learn) or umap (umap-learn)."),
    out_path: Path = typer.Option(Path("embeddings.png"), "--out", "-o", help="PNG to write."),
    max_labels: int = typer.Option(20, help="Draw at most this many labels (seeded choice)."),
    max_images: int = typer.Option(2000, help="Draw at most this many images."),
    seed: int = typer.Option(0, help="Seed of the label choice and the projection."),
    backend: str = typer.Option("eager", help=BACKEND_HELP),
    device: str = typer.Option("auto", help=DEVICE_HELP),
) -> None:
    """Draw a 2-D map (t-SNE or UMAP) of a folder's embeddings, coloured by label.

    With a run from `vitrina train-embedding`, the map of its starting weights is drawn next
    to it: before and after training. Each panel also gives the leave-one-out retrieval mAP.

    Example: vitrina plot-embeddings faces/ --model runs/faces-arcface --out map.png
    """
    from vitrina.data.identities import scan_identities
    from vitrina.embed.projection import METHODS, embedding_panels, plot_embedding_map
    from vitrina.errors import VitrinaError
    from vitrina.registry import suggest

    if method not in METHODS:
        raise VitrinaError(f"unknown --method {method!r}{suggest(method, list(METHODS))}")
    refuse_existing(out_path)
    ids = scan_identities(data_dir)
    if ids.layout == "market1501":
        items = [(im.path, im.pid) for im in ids.query + ids.gallery if im.pid > 0]
        names_of = {pid: f"{pid:04d}" for _, pid in items}
    else:
        items = [(im.path, im.label) for im in ids.train]
        names_of = dict(enumerate(ids.names))
    labels = sorted({lab for _, lab in items})
    rng = random.Random(seed)
    chosen = sorted(rng.sample(labels, max_labels)) if len(labels) > max_labels else labels
    keep = {lab: i for i, lab in enumerate(chosen)}
    items = [(p, keep[lab]) for p, lab in items if lab in keep]
    if len(items) > max_images:
        items = sorted(rng.sample(items, max_images))
    specs: list[tuple[str, object]] = []
    for m in model:
        start = _starting_point(m) if before else None
        if start is not None:
            specs.append((f"before: {Path(start).name} (ImageNet)", start))
        specs.append((Path(m).name if Path(m).exists() else m, m))
    total = len(items) * len(specs)
    done_before = 0

    with progress_bar("embedding", total) as update:

        def progress(done: int, _total: int) -> None:
            update(done_before + done)

        panels, errors = [], []
        for title, spec in specs:
            p, e = embedding_panels(
                [p for p, _ in items],
                [lab for _, lab in items],
                [(title, spec)],
                method=method,
                seed=seed,
                backend=backend,
                device=device,
                on_progress=progress,
            )
            panels += p
            errors += [x for x in e if x not in errors]
            done_before += len(items)
    for path, msg in errors:
        err.print(f"[yellow]skipped unreadable[/] {escape(str(path))}: {escape(msg)}")
    plot_embedding_map(panels, [names_of[lab] for lab in chosen], out_path, method=method)
    for panel in panels:
        if panel.mAP is not None:
            out.print(f"{escape(panel.title)}: leave-one-out mAP {panel.mAP:.3f}")
    out.print(f"wrote {escape(str(out_path))} ({len(items)} images, {len(chosen)} labels)")


def register(app: typer.Typer) -> None:
    app.command("plot-embeddings")(plot_embeddings)
