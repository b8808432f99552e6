"""Re-identification evaluation of a model on a Market-1501 style folder: every ``query/``
image against ``bounding_box_test/`` under the benchmark's protocol (see
:mod:`vitrina.evaluate.reid`), optionally k-reciprocal re-ranked.

A run trained with local stripes (AlignedReID) is scored three ways from one embedding pass
(:mod:`vitrina.embed.aligned`): the global distance alone, the local (stripe-aligned) distance
alone, and their combination ``global + local_weight x local``
(:mod:`vitrina.evaluate.aligned`), with the time each distance costs per query."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vitrina.embed.core import Embedder, EmbeddingSpec
from vitrina.errors import DataError, VitrinaError, refuse_existing
from vitrina.evaluate.reid import ReidReport, reid_distances, reid_report

__all__ = [
    "METRICS",
    "REPORT_FILES",
    "ReidEvaluation",
    "evaluate_reid",
    "reid_contact_sheet",
    "write_reid_report",
]

#: Distances between the (L2-normalised) embeddings that :func:`evaluate_reid` measures.
METRICS = ("euclidean", "cosine")
#: What :func:`write_reid_report` writes into its folder.
REPORT_FILES = ("report.json", "cmc.png", "ranked.png")


@dataclass
class ReidEvaluation:
    """The report plus what a contact sheet needs (paths and pids of both sides).

    With re-ranking, ``report`` is the re-ranked one and ``plain`` the one before it. For a run
    with local stripes, ``parts`` holds the ``global``, ``local`` and ``combined`` reports
    (``report`` is the combined one) and ``ms_per_query`` what each distance cost (computing
    and ranking it, per query; the embedding pass is shared)."""

    report: ReidReport
    query: list[Path]
    gallery: list[Path]
    query_pids: np.ndarray
    gallery_pids: np.ndarray
    unreadable: list[str] = field(default_factory=list)
    plain: ReidReport | None = None
    files: list[Path] = field(default_factory=list)  # written by write_reid_report
    parts: dict[str, ReidReport] = field(default_factory=dict)
    ms_per_query: dict[str, float] = field(default_factory=dict)

    @property
    def reports(self) -> dict[str, ReidReport]:
        """The reports by name: ``global``, ``local``, ``combined`` (+ ``combined re-ranked``)
        for a run with local stripes; ``plain`` and ``re-ranked`` with re-ranking; else the
        one report under its metric's name."""
        if self.parts:
            extra = {"combined re-ranked": self.report} if self.plain is not None else {}
            return {**self.parts, **extra}
        if self.plain is not None:
            return {"plain": self.plain, "re-ranked": self.report}
        return {self.report.metric: self.report}


def evaluate_reid(
    data_dir: str | Path,
    spec: EmbeddingSpec | str,
    *,
    rerank: bool = False,
    metric: str = "euclidean",
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    local_weight: float = 1.0,
    backend: str = "auto",
    device: str = "auto",
    batch_size: int = 32,
    num_workers: int | None = None,
    out_dir: str | Path | None = None,
    sheet_rows: int = 20,
    on_progress: Callable[[int, int], None] | None = None,
) -> ReidEvaluation:
    """Embed ``query/`` and ``bounding_box_test/`` and score them (rank-k, mAP, mINP).

    ``metric``: distance between the (L2-normalised) embeddings, ``euclidean`` or ``cosine``.
    ``rerank``: k-reciprocal re-ranking (Zhong et al. 2017) with ``k1``, ``k2``, ``lambda_value``.
    ``local_weight``: for a run with local stripes, the weight of the local distance in the
    combined one (``global + local_weight x local``); the global and local distances alone are
    reported too.
    ``out_dir``: also write the report there (:func:`write_reid_report`, ``sheet_rows`` queries
    on the sheet); files already there are refused before anything is embedded.
    """
    from vitrina.data.identities import scan_identities

    if metric not in METRICS:
        raise VitrinaError(f"unknown metric {metric!r}; choose euclidean or cosine")
    if out_dir is not None:
        refuse_existing(*(Path(out_dir) / name for name in REPORT_FILES))
    ids = scan_identities(data_dir)
    if ids.layout != "market1501":
        raise DataError(
            f"{data_dir}: not a Market-1501 folder (query/, bounding_box_test/); convert a "
            "folder-per-identity set with `vitrina data to-market SRC DST`"
        )
    if not ids.query or not ids.gallery:
        raise DataError(f"{data_dir}: query/ or bounding_box_test/ holds no images")
    if not (np.isfinite(local_weight) and local_weight >= 0):
        raise VitrinaError(f"--local-weight {local_weight}: must be a number >= 0")
    emb = Embedder(
        spec, backend=backend, device=device, batch_size=batch_size, num_workers=num_workers
    )
    from vitrina.embed.aligned import embed_aligned, local_stripes_of

    aligned = bool(local_stripes_of(emb.model)) and not emb.spec.layers
    paths = [im.path for im in ids.query + ids.gallery]
    t0 = time.perf_counter()
    if aligned:
        res = embed_aligned(emb, paths, on_progress=on_progress)
    else:
        res = emb.embed_paths(paths, on_progress=on_progress)
    embed_s = time.perf_counter() - t0
    row = {p: i for i, p in enumerate(res.paths)}
    q = [im for im in ids.query if im.path in row]
    g = [im for im in ids.gallery if im.path in row]
    if not q or not g:
        raise DataError(f"{data_dir}: no readable query or gallery image")
    qi = [row[im.path] for im in q]
    gi = [row[im.path] for im in g]
    qf, gf = res.vectors[qi], res.vectors[gi]
    qp = np.array([im.pid for im in q])
    gp = np.array([im.pid for im in g])
    qc = np.array([im.camid for im in q])
    gc = np.array([im.camid for im in g])
    parts: dict[str, ReidReport] = {}
    ms: dict[str, float] = {}

    def scored(name: str, dist_fn: Callable[[], np.ndarray]) -> tuple[ReidReport, np.ndarray]:
        t = time.perf_counter()
        d = dist_fn()
        r = reid_report(d, qp, gp, qc, gc, metric=name)
        ms[name] = (time.perf_counter() - t) * 1000 / len(q)
        return r, d

    plain, d_global = scored(metric, lambda: reid_distances(qf, gf, metric))
    if aligned:
        from vitrina.evaluate.aligned import combined_distances, local_distances

        qs, gs = res.stripes[qi], res.stripes[gi]
        parts["global"] = plain
        parts["local"], d_local = scored("local", lambda: local_distances(qs, gs))
        t = time.perf_counter()
        plain = reid_report(
            combined_distances(d_global, d_local, local_weight), qp, gp, qc, gc, metric="combined"
        )
        # the combined distance costs both distances, then its own sum and ranking
        ms["combined"] = ms[metric] + ms["local"] + (time.perf_counter() - t) * 1000 / len(q)
        ms["global"] = ms.pop(metric)
        parts["combined"] = plain
    report = plain
    if rerank:
        from vitrina.evaluate.rerank import rerank_k_reciprocal

        def dist(a: list[int], b: list[int]) -> np.ndarray:
            # Euclidean distances of the normalised vectors (re-ranking squares them itself),
            # plus the weighted local distance for a run with stripes.
            d = reid_distances(res.vectors[a], res.vectors[b], "euclidean")
            if aligned:
                d = combined_distances(
                    d, local_distances(res.stripes[a], res.stripes[b]), local_weight
                )
            return d

        rr = rerank_k_reciprocal(
            dist(qi, gi), dist(qi, qi), dist(gi, gi), k1=k1, k2=k2, lambda_value=lambda_value
        )
        report = reid_report(rr, qp, gp, qc, gc, metric="k-reciprocal re-ranked")
    report.info = {
        "data": str(Path(data_dir)),
        "model": emb.model_label,
        "spec": emb.spec.to_dict(),
        "fingerprint": emb.fingerprint,
        "dim": emb.dim,
        "backend": emb.engine.backend_name,
        "queries": len(q),
        "gallery": len(g),
        "rerank": {"k1": k1, "k2": k2, "lambda": lambda_value} if rerank else None,
        "embedding_seconds": embed_s,
        "ms_per_query": ms,
    }
    if aligned:
        report.info["local"] = {
            "stripes": local_stripes_of(emb.model),
            "local_weight": local_weight,
            "combined": f"{metric} + {local_weight:g} x local",
        }
    unreadable = [msg if str(p) in msg else f"{p}: {msg}" for p, msg in res.errors]
    for r in (plain, *parts.values()):
        r.info = report.info
    ev = ReidEvaluation(
        report,
        [im.path for im in q],
        [im.path for im in g],
        qp,
        gp,
        unreadable,
        plain if rerank else None,
        parts=parts,
        ms_per_query=ms,
    )
    if out_dir is not None:
        write_reid_report(ev, out_dir, sheet_rows=sheet_rows)
    return ev


def write_reid_report(
    ev: ReidEvaluation, out_dir: str | Path, *, sheet_rows: int = 20
) -> list[Path]:
    """Write ``report.json`` (every report's figures), ``cmc.png`` (the CMC curves) and
    ``ranked.png`` (:func:`reid_contact_sheet`) into ``out_dir``, never over existing files;
    returns them (also kept in ``ev.files``)."""
    from vitrina.io import atomic_write_text
    from vitrina.report.plots import plot_cmc

    files = [Path(out_dir) / name for name in REPORT_FILES]
    refuse_existing(*files)
    files[0].parent.mkdir(parents=True, exist_ok=True)
    doc = {name: r.to_dict() for name, r in ev.reports.items()}
    atomic_write_text(files[0], json.dumps(doc, indent=2) + "\n")
    plot_cmc(
        {f"{n}, mAP {r.mAP:.3f}": r.cmc_curve for n, r in ev.reports.items()},
        files[1],
        title=f"CMC: {ev.report.info['model']}",
    )
    reid_contact_sheet(ev, files[2], rows=sheet_rows)
    ev.files = files
    return files


def reid_contact_sheet(
    ev: ReidEvaluation, out: str | Path, *, rows: int = 20, seed: int = 0
) -> Path:
    """Queries (a seeded sample of ``rows``) and their top-10, right answers framed green,
    wrong ones red; the worst-ranked queries first, where the model needs looking at."""
    from vitrina.report.sheets import SheetRow, Tile, write_contact_sheet

    rep = ev.report
    scored = np.flatnonzero(~np.isnan(rep.ap))
    rng = np.random.default_rng(seed)
    pick = rng.choice(scored, size=min(rows, len(scored)), replace=False) if len(scored) else []
    pick = sorted(pick, key=lambda i: (rep.ap[i], i))
    sheet_rows = []
    for qi in pick:
        tiles = [Tile(str(ev.query[qi]), f"query {ev.query_pids[qi]:04d}")]
        for r, gi in enumerate(rep.top_k[qi]):
            if gi < 0:
                break
            tiles.append(
                Tile(
                    str(ev.gallery[gi]),
                    f"{r + 1}. id {ev.gallery_pids[gi]:04d}",
                    mark=bool(rep.top_k_match[qi, r]),
                )
            )
        sheet_rows.append(SheetRow(f"{ev.query[qi].name}  AP {rep.ap[qi]:.2f}", tiles))
    return write_contact_sheet(sheet_rows, out, thumb=96)
