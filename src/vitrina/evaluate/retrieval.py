"""Retrieval metrics from a (Q, G) score matrix: precision@k, recall@k, mAP, CMC.

Conventions (those of image-retrieval and ReID benchmarks):

* A query's gallery is ranked by score (similarity descending, or distance ascending).
  **Ties are broken by gallery index** (a stable sort): of two items with the same score the
  one with the lower gallery index ranks first. The results are therefore deterministic, and
  the naive reference in the tests ranks the same way.
* ``exclude[q, g] = True`` removes gallery item ``g`` from query ``q``'s ranking altogether
  (the query itself when every image queries the rest; same-camera images in ReID).
* A query with no relevant item left is not scored; it is counted in ``no_relevant``.
* precision@k = relevant in the top k / k (k, not the gallery size, even where fewer than k
  items remain); recall@k = relevant in the top k / relevant in all; CMC@k = share of queries
  with at least one relevant item in the top k; AP = mean over the relevant items of the
  precision at their rank (over the full ranking); mAP = mean AP over the scored queries.

Everything is vectorised numpy, computed in blocks of queries so memory stays O(block x G).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "RetrievalReport",
    "loo_retrieval",
    "pairwise_scores",
    "relevance",
    "retrieval_metrics",
    "retrieval_report",
]

METRICS = ("cosine", "euclidean")
CURVE_MAX_K = 50


@dataclass
class RetrievalReport:
    """Retrieval quality. ``precision``, ``recall``, ``cmc`` map k to a value in [0, 1];
    ``precision_curve[k-1]`` and ``cmc_curve[k-1]`` for k = 1..``len(curve)`` (at most 50, at
    most ``gallery_size``: the most items a query ranks, exclusions removed)."""

    mAP: float
    precision: dict[int, float]
    recall: dict[int, float]
    cmc: dict[int, float]
    n_queries: int
    no_relevant: int
    gallery_size: int
    metric: str = ""
    precision_curve: list[float] = field(default_factory=list)
    cmc_curve: list[float] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "mAP": self.mAP,
            "precision": {str(k): v for k, v in self.precision.items()},
            "recall": {str(k): v for k, v in self.recall.items()},
            "cmc": {str(k): v for k, v in self.cmc.items()},
            "n_queries": self.n_queries,
            "no_relevant": self.no_relevant,
            "gallery_size": self.gallery_size,
            "metric": self.metric,
            "precision_curve": self.precision_curve,
            "cmc_curve": self.cmc_curve,
            "unreadable": self.unreadable,
            "info": self.info,
        }


def relevance(query_labels: Sequence[Any], gallery_labels: Sequence[Any]) -> np.ndarray:
    """(Q, G) boolean: ``query_labels[q] == gallery_labels[g]``."""
    q = np.asarray(query_labels)
    g = np.asarray(gallery_labels)
    return q[:, None] == g[None, :]


def pairwise_scores(queries: np.ndarray, gallery: np.ndarray, metric: str = "cosine") -> np.ndarray:
    """(Q, G) cosine similarities (higher is closer) or euclidean distances (lower is closer)."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    a = np.asarray(queries, dtype=np.float64)
    b = np.asarray(gallery, dtype=np.float64)
    if metric == "cosine":
        a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
        b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
        return a @ b.T
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return np.sqrt(np.maximum(d2, 0.0))


def retrieval_metrics(
    scores: np.ndarray,
    relevant: np.ndarray,
    *,
    higher_is_better: bool = True,
    ks: Sequence[int] = (1, 5, 10),
    exclude: np.ndarray | None = None,
    metric: str = "",
    block: int = 512,
) -> RetrievalReport:
    """Metrics of a (Q, G) ``scores`` matrix (similarities, or distances with
    ``higher_is_better=False``) against a (Q, G) boolean ``relevant`` matrix; ``exclude``
    (Q, G) boolean removes items from a query's ranking (see the module docstring)."""
    s = np.asarray(scores, dtype=np.float64)
    rel = np.asarray(relevant, dtype=bool)
    if s.ndim != 2 or rel.shape != s.shape:
        raise ValueError(f"scores {s.shape} and relevant {rel.shape} must be the same (Q, G)")
    if exclude is not None:
        exclude = np.asarray(exclude, dtype=bool)
        if exclude.shape != s.shape:
            raise ValueError(f"exclude {exclude.shape} must have the shape of scores {s.shape}")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")
    q_n, g_n = s.shape
    cmax = max(1, min(g_n, max(CURVE_MAX_K, ks[-1])))
    ap_sum = 0.0
    n_scored = 0
    hits_at = np.zeros(cmax)  # sum over scored queries of (relevant in top k) / k
    cmc_at = np.zeros(cmax)  # number of scored queries with a hit in the top k
    recall_sum = {k: 0.0 for k in ks}
    ranked = 0  # most items any query ranks (G minus its exclusions)
    for start in range(0, q_n, block):
        sb = s[start : start + block]
        rb = rel[start : start + block]
        xb = (
            exclude[start : start + block]
            if exclude is not None
            else np.zeros(sb.shape, dtype=bool)
        )
        ranked = max(ranked, int((~xb).sum(1).max()))
        key = -sb if higher_is_better else sb
        # Primary key: excluded last; secondary: score; ties keep gallery order (stable).
        order = np.lexsort((key, xb), axis=-1)
        hit = np.take_along_axis(rb & ~xb, order, axis=1)
        n_rel = hit.sum(1)
        keep = n_rel > 0
        if not keep.any():
            continue
        hit, n_rel = hit[keep], n_rel[keep]
        n_scored += int(keep.sum())
        cum = np.cumsum(hit, axis=1)
        ranks = np.arange(1, g_n + 1)
        ap_sum += float((((cum / ranks) * hit).sum(1) / n_rel).sum())
        kk = np.arange(1, cmax + 1)
        hits_at += (cum[:, :cmax] / kk).sum(0)
        cmc_at += (cum[:, :cmax] > 0).sum(0)
        for k in ks:
            recall_sum[k] += float((cum[:, min(k, g_n) - 1] / n_rel).sum())
    no_rel = q_n - n_scored
    if n_scored == 0:
        nan = float("nan")
        return RetrievalReport(
            nan, {k: nan for k in ks}, {k: nan for k in ks}, {k: nan for k in ks},
            0, no_rel, ranked, metric,
        )  # fmt: skip

    def at(curve: np.ndarray, k: int, *, per_k: bool) -> float:
        if k <= cmax:
            return float(curve[k - 1] / n_scored)
        # Beyond the gallery: no more hits; precision keeps dividing by k.
        last = curve[cmax - 1] / n_scored
        return float(last * cmax / k) if per_k else float(last)

    return RetrievalReport(
        mAP=ap_sum / n_scored,
        precision={k: at(hits_at, k, per_k=True) for k in ks},
        recall={k: recall_sum[k] / n_scored for k in ks},
        cmc={k: at(cmc_at, k, per_k=False) for k in ks},
        n_queries=n_scored,
        no_relevant=no_rel,
        gallery_size=ranked,
        metric=metric,
        precision_curve=[float(v) for v in hits_at[:ranked] / n_scored],
        cmc_curve=[float(v) for v in cmc_at[:ranked] / n_scored],
    )


def retrieval_report(
    vectors: np.ndarray,
    labels: Sequence[Any],
    metric: str = "cosine",
    ks: Sequence[int] = (1, 5, 10),
    *,
    exclude: np.ndarray | None = None,
) -> RetrievalReport:
    """Each vector queries all the others (itself excluded); relevant = same label.

    ``exclude`` (N, N) boolean removes further pairs (e.g. same camera)."""
    v = np.asarray(vectors)
    labels = np.asarray(labels)
    if v.ndim != 2 or len(v) != len(labels):
        raise ValueError(f"vectors {v.shape} and {len(labels)} labels do not match")
    s = pairwise_scores(v, v, metric)
    mask = np.eye(len(v), dtype=bool)
    if exclude is not None:
        mask |= np.asarray(exclude, dtype=bool)
    return retrieval_metrics(
        s,
        relevance(labels, labels),
        higher_is_better=metric == "cosine",
        ks=ks,
        exclude=mask,
        metric=metric,
    )


def loo_retrieval(x: np.ndarray, y: np.ndarray, metric: str = "cosine") -> dict[str, float]:
    """Every image queries all the others (itself excluded): mAP and rank-1."""
    scores = pairwise_scores(x, x, metric)
    rep = retrieval_metrics(
        scores,
        relevance(y, y),
        higher_is_better=metric == "cosine",
        ks=(1, 5),
        exclude=np.eye(len(y), dtype=bool),
    )
    return {"val_mAP": rep.mAP, "val_rank1": rep.cmc[1], "val_rank5": rep.cmc[5]}
