"""``vitrina index ...``: build and maintain a search index (faiss + SQLite) over photos."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from vitrina.cli._choices import Backend, IndexKind, IndexMetric
from vitrina.cli._common import (
    BACKEND_HELP,
    DEVICE_HELP,
    err,
    out,
    print_json,
    progress_bar,
    ray_option,
    ray_options,
    ray_workers_option,
)

app = typer.Typer(
    help="Build and maintain an image search index. Example: vitrina index build photos "
    "--model efficientnet_lite0 --out photos.index",
    no_args_is_help=True,
)

KIND_HELP = (
    "exact (brute force), hnsw or ivf (approximate, recall measured), or auto: exact below "
    "50,000 photos, hnsw from there on."
)


def _report_add(report, verb: str = "added") -> None:
    for path, reason in report.unreadable:
        err.print(f"[yellow]unreadable[/] {escape(path)}: {escape(reason)}")
    for path, there in report.duplicates:
        err.print(
            f"[dim]skipped (same content already indexed as {escape(there)}):[/] {escape(path)}"
        )
    line = f"{verb} {len(report.added)} photos"
    if report.updated:
        line += f", re-indexed {len(report.updated)} changed"
    if report.duplicates:
        line += f", skipped {len(report.duplicates)} duplicates"
    if report.unreadable:
        line += f", {len(report.unreadable)} unreadable"
    out.print(line)


def _recall_line(info: dict) -> str:
    rec = info.get("recall")
    if info["kind"] == "exact":
        return "exact search (recall 1.0)"
    if not rec:
        return f"{info['kind']} (recall not measured yet: index empty)"
    knob = {k: v for k, v in info["params"].items() if k in ("efSearch", "nprobe")}
    knobs = ", ".join(f"{k}={v}" for k, v in knob.items())
    return (
        f"{info['kind']} ({knobs}): recall@10 {rec['recall_at_10']:.3f} against exact search "
        f"on {rec['queries']} stored vectors as queries (at {rec['at_count']:,} items)"
    )


def _open(index: Path, backend: str = "auto", device: str = "auto"):
    from vitrina.search import Index

    idx = Index.open(index, backend=backend, device=device)
    if idx.recovered:
        err.print(f"[yellow]repaired:[/] {escape(idx.recovered)}")
    return idx


@app.command("build")
def build_cmd(
    folder: Path = typer.Argument(..., help="Folder of photos (searched recursively)."),
    model: str = typer.Option(
        ...,
        "--model",
        "-m",
        help="Run folder or zoo name with ImageNet weights (efficientnet_lite0).",
    ),
    out_dir: Path = typer.Option(
        ..., "--out", "-o", help="New index folder (must not exist or be empty)."
    ),
    layer: list[str] = typer.Option(
        [], "--layer", help="Embed these layers (repeatable); default: the model's embedding."
    ),
    metric: IndexMetric = typer.Option("cosine", help="Fixed for the index's life."),
    kind: IndexKind = typer.Option("auto", help=KIND_HELP),
    backend: Backend = typer.Option("auto", help=BACKEND_HELP),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    batch_size: int = typer.Option(32, help="Images per forward pass."),
    as_json: bool = typer.Option(False, "--json", help="Print the index info as JSON."),
    ray: str = ray_option(),
    ray_workers: int = ray_workers_option(),
) -> None:
    """Embed every photo under FOLDER and write a search index.

    Example: vitrina index build photos --model efficientnet_lite0 --out photos.index

    On Ray (many machines, or every core of this one): add --ray or --ray ADDRESS; the
    index itself is written by this process, as without Ray.
    """
    from vitrina.search import Index

    build = Index.build
    on_ray = ray_options(ray, ray_workers)
    if on_ray is not None:
        from functools import partial

        from vitrina.scale import ray_index_build

        build = partial(ray_index_build, ray=on_ray)  # the same options, on Ray
    with progress_bar("embedding", None, enabled=not as_json) as update:
        idx = build(
            folder,
            out_dir,
            model=model,
            layers=layer,
            metric=metric,
            kind=kind,
            backend=backend,
            device=device,
            batch_size=batch_size,
            on_progress=update,
        )
    info = idx.info()
    if as_json:
        print_json({"info": info, "report": idx.build_report.to_dict()})
        return
    _report_add(idx.build_report, "indexed")
    out.print(
        f"index: {escape(str(out_dir))}  ({info['count']} photos, {info['dim']}-d, {info['metric']}, {escape(info['model'] or '')})"
    )
    out.print(_recall_line(info))
    out.print(f"next: vitrina search {escape(str(out_dir))} QUERY.jpg -k 10")


@app.command("add")
def add_cmd(
    index: Path = typer.Argument(..., help="Index folder."),
    paths: list[Path] = typer.Argument(..., help="Photos or folders to add."),
    backend: Backend = typer.Option("auto", help=BACKEND_HELP),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Add photos; content already indexed (same sha256) is skipped.

    Example: vitrina index add photos.index new/ extra.jpg
    """
    idx = _open(index, backend, device)
    with progress_bar("embedding", None, enabled=not as_json) as update:
        report = idx.add(paths, on_progress=update)
    if as_json:
        print_json({"report": report.to_dict(), "info": idx.info()})
        return
    _report_add(report)
    info = idx.info()
    out.print(f"index now holds {info['count']} photos; {_recall_line(info)}")


@app.command("remove")
def remove_cmd(
    index: Path = typer.Argument(..., help="Index folder."),
    items: list[str] = typer.Argument(
        ..., help="Paths (a folder: all under it) or sha256 hashes (>= 8 hex digits)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Remove photos from the index (the files themselves are not touched).

    Example: vitrina index remove photos.index old/ 3f2a9c1b
    """
    idx = _open(index)
    report = idx.remove(items)
    if as_json:
        print_json({"report": report.to_dict(), "count": len(idx)})
    else:
        for item in report.not_found:
            err.print(f"[yellow]not in the index:[/] {escape(item)}")
        out.print(f"removed {len(report.removed)} photos; index now holds {len(idx)}")
    if report.not_found and not report.removed:
        raise typer.Exit(1)


@app.command("info")
def info_cmd(
    index: Path = typer.Argument(..., help="Index folder."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """What an index holds: model, size, metric, kind, measured recall.

    Example: vitrina index info photos.index --json
    """
    idx = _open(index)
    info = idx.info()
    if as_json:
        print_json(info)
        return
    t = Table(title=f"index {escape(str(index))}", show_header=False)
    t.add_column("field")
    t.add_column("value")
    rows = [
        ("photos", f"{info['count']:,}"),
        ("model", info["model"] or "(raw vectors)"),
        ("fingerprint", info["fingerprint"] or "-"),
        ("vectors", f"{info['dim']}-d, {info['metric']}"),
        ("structure", _recall_line(info)),
        ("kind requested", f"{info['kind_requested']}  ({info['auto_rule']})"),
        ("labels", ", ".join(f"{k or '(top)'}: {v}" for k, v in list(info["labels"].items())[:12])),
        ("on disk", f"{info['bytes_on_disk'] / 1e6:.1f} MB"),
        ("format", f"{info['format_version']}: vectors in {info['vectors_stored_in']}"),
        ("removed, pending compaction", f"{info['removed_pending_compaction']:,}"),
        ("generation", str(info["generation"])),
    ]
    for k, v in rows:
        t.add_row(k, escape(str(v)))
    out.print(t)


@app.command("compact")
def compact_cmd(
    index: Path = typer.Argument(..., help="Index folder."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Rebuild an HNSW index without the photos removed from it.

    A removal from an HNSW index leaves a tombstone that searches skip; the graph is rebuilt
    by itself once tombstones pass 10% of it. Run this to rebuild now (exact and IVF indexes
    remove at once and have nothing to compact).

    Example: vitrina index compact photos.index
    """
    idx = _open(index)
    dropped = idx.compact()
    if as_json:
        print_json({"tombstones_dropped": dropped, "info": idx.info()})
        return
    out.print(
        f"rebuilt without {dropped:,} removed photos; index holds {len(idx):,}"
        if dropped
        else "nothing to compact: no removed photos pending"
    )


@app.command("upgrade")
def upgrade_cmd(
    index: Path = typer.Argument(..., help="Index folder."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Convert an index made by an older vitrina (format 1) to format 2.

    Format 1 stored every vector twice (vectors.faiss and meta.sqlite); format 2 keeps the
    faiss copy only, about half the disk. The two copies are checked against each other
    first and nothing changes if they differ. Older vitrina versions cannot open the index
    afterwards. Searching a format 1 index works without upgrading.

    Example: vitrina index upgrade photos.index
    """
    idx = _open(index)
    before = idx.info()["bytes_on_disk"]
    upgraded = idx.upgrade()
    info = idx.info()
    if as_json:
        print_json({"upgraded": upgraded, "info": info})
        return
    if upgraded:
        out.print(
            f"upgraded to format {info['format_version']}: "
            f"{before / 1e6:.1f} MB -> {info['bytes_on_disk'] / 1e6:.1f} MB on disk"
        )
    else:
        out.print(f"already format {info['format_version']}: nothing to do")
