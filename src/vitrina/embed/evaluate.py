"""Retrieval evaluation of an embedding on a labelled class-folder tree: each image queries
all the others; relevant = same folder."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from vitrina.embed.core import Embedder, EmbeddingSpec
from vitrina.errors import refuse_existing
from vitrina.evaluate.retrieval import METRICS, RetrievalReport, retrieval_report

__all__ = ["REPORT_FILES", "evaluate_retrieval", "plot_retrieval", "write_retrieval_report"]

#: What :func:`write_retrieval_report` writes into its folder.
REPORT_FILES = ("report.json", "retrieval.png")


def evaluate_retrieval(
    data_dir: str | Path,
    spec: EmbeddingSpec | str,
    *,
    metric: str = "cosine",
    ks: Sequence[int] = (1, 5, 10),
    backend: str = "auto",
    device: str = "auto",
    batch_size: int = 32,
    num_workers: int | None = None,
    out_dir: str | Path | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> RetrievalReport:
    """Embed every image of ``data_dir/<class>/...`` and score leave-one-out retrieval.

    Unreadable images are skipped and listed in ``report.unreadable``. ``out_dir``: also
    write the report there (:func:`write_retrieval_report`); files already there are refused
    before anything is embedded."""
    from vitrina.data import scan_folder
    from vitrina.errors import VitrinaError

    if metric not in METRICS:
        raise VitrinaError(f"unknown metric {metric!r}; choose cosine or euclidean")
    if out_dir is not None:
        refuse_existing(*(Path(out_dir) / name for name in REPORT_FILES))
    scan = scan_folder(data_dir)
    emb = Embedder(
        spec, backend=backend, device=device, batch_size=batch_size, num_workers=num_workers
    )
    paths = [s.path for s in scan.samples]
    label_of = {s.path: s.label for s in scan.samples}
    res = emb.embed_paths(paths, on_progress=on_progress)
    if len(res.paths) < 2:
        raise VitrinaError(f"{data_dir}: fewer than two readable images; nothing to retrieve")
    labels = np.array([label_of[p] for p in res.paths])
    rep = retrieval_report(res.vectors, labels, metric=metric, ks=ks)
    rep.unreadable = [msg if str(p) in msg else f"{p}: {msg}" for p, msg in res.errors]
    rep.info = {
        "data": str(Path(data_dir)),
        "classes": scan.classes,
        "images": len(res.paths),
        "model": emb.model_label,
        "spec": emb.spec.to_dict(),
        "fingerprint": emb.fingerprint,
        "dim": emb.dim,
        "backend": emb.engine.backend_name,
    }
    if out_dir is not None:
        write_retrieval_report(rep, out_dir)
    return rep


def write_retrieval_report(report: RetrievalReport, out_dir: str | Path) -> list[Path]:
    """Write ``report.json`` and ``retrieval.png`` (:func:`plot_retrieval`) into ``out_dir``,
    never over existing files; returns them."""
    from vitrina.io import atomic_write_text

    files = [Path(out_dir) / name for name in REPORT_FILES]
    refuse_existing(*files)
    files[0].parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(files[0], json.dumps(report.to_dict(), indent=2) + "\n")
    title = (
        f"{report.info['model']}: mAP {report.mAP:.3f} ({report.n_queries} queries, "
        f"{report.metric})"
    )
    plot_retrieval(report, files[1], title=title)
    return files


def plot_retrieval(report: RetrievalReport, path: str | Path, title: str = "") -> Path:
    """CMC curve and precision@k curve side by side (PNG, written atomically)."""
    from vitrina.report.plots import _plt, _save

    plt = _plt()
    ks = np.arange(1, len(report.cmc_curve) + 1)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax1.plot(ks, report.cmc_curve, "o-", ms=3)
    ax1.set_title("CMC: a relevant image in the top k")
    ax1.set_ylim(0, 1.02)
    ax2.plot(ks, report.precision_curve, "s-", ms=3, color="tab:orange")
    ax2.set_title("precision@k")
    ax2.set_ylim(0, 1.02)
    for ax in (ax1, ax2):
        ax.set_xlabel("k")
        ax.grid(alpha=0.3)
    fig.suptitle(title or f"mAP {report.mAP:.3f} ({report.n_queries} queries, {report.metric})")
    fig.tight_layout()
    out = _save(fig, Path(path))
    plt.close(fig)
    return out
