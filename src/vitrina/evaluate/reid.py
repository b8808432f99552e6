"""Person/vehicle re-identification evaluation: the Market-1501 protocol.

Conventions:

* ``dist`` is a (Q, G) matrix of **distances** (smaller is closer). Each query ranks the gallery
  by distance; ties are broken by gallery index (as in :mod:`vitrina.evaluate.retrieval`).
* For each query, gallery images with the **same pid and the same camera** are removed from its
  ranking (they are trivially easy), and so are **junk** images (pid ``junk_pid``, -1 in
  Market-1501). A match is a remaining gallery image with the query's pid.
* Distractors (pid 0 in Market-1501) need no special case: no query has their pid, so they stay
  in every ranking as negatives. (Datasets whose real pids start at 0, like MSMT17, work as is.)
* A query with no match left is not scored; it is counted in ``no_match``.
* CMC@k = share of scored queries with a match in the top k (the "single-gallery-shot off",
  multi-match CMC of Market-1501); AP over the full ranking; mAP = mean AP over scored
  queries; INP = matches / rank of the last match (Ye et al., 2021), mINP its mean.

CMC and mAP come from :func:`vitrina.evaluate.retrieval.retrieval_metrics`; this module adds the
ReID masks, per-query AP and INP, and each query's ranked top-k for a contact sheet.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vitrina.evaluate.retrieval import retrieval_metrics

__all__ = ["ReidReport", "reid_distances", "reid_masks", "reid_report"]

DISTANCE_METRICS = ("euclidean", "sqeuclidean", "cosine")


@dataclass
class ReidReport:
    """ReID quality under the Market-1501 protocol (see the module docstring).

    ``cmc`` maps a rank k to CMC@k; ``cmc_curve[k-1]`` is CMC@k for k = 1..50 (fewer when
    queries rank fewer gallery images). ``ap`` and ``inp`` are (Q,) per query, NaN for queries
    not scored. ``top_k`` is (Q, k): each query's gallery indices, best first, after the
    protocol's removals (-1 pads when fewer remain); ``top_k_match`` marks the true matches.
    """

    mAP: float
    mINP: float
    cmc: dict[int, float]
    cmc_curve: list[float]
    ap: np.ndarray
    inp: np.ndarray
    top_k: np.ndarray
    top_k_match: np.ndarray
    n_queries: int
    no_match: int
    gallery_size: int
    metric: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def rank1(self) -> float:
        return self.cmc_curve[0] if self.cmc_curve else float("nan")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (NaN becomes None)."""

        def clean(a: np.ndarray) -> list[float | None]:
            return [None if np.isnan(v) else float(v) for v in a]

        return {
            "mAP": self.mAP,
            "mINP": self.mINP,
            "cmc": {str(k): v for k, v in self.cmc.items()},
            "cmc_curve": self.cmc_curve,
            "n_queries": self.n_queries,
            "no_match": self.no_match,
            "gallery_size": self.gallery_size,
            "metric": self.metric,
            "ap": clean(self.ap),
            "inp": clean(self.inp),
            "top_k": self.top_k.tolist(),
            "top_k_match": self.top_k_match.tolist(),
            "info": self.info,
        }


def reid_distances(
    query_features: np.ndarray,
    gallery_features: np.ndarray,
    metric: str = "euclidean",
    *,
    block: int = 1024,
) -> np.ndarray:
    """(Q, G) float32 distances between feature rows, computed in blocks of queries.

    ``euclidean``: L2 distance; ``sqeuclidean``: its square (what torchreid feeds re-ranking);
    ``cosine``: 1 - cosine similarity, in [0, 2]. Shape: (Q, D), (G, D) -> (Q, G).
    """
    if metric not in DISTANCE_METRICS:
        raise ValueError(f"metric must be one of {DISTANCE_METRICS}, got {metric!r}")
    q = np.asarray(query_features, dtype=np.float32)
    g = np.asarray(gallery_features, dtype=np.float32)
    if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1]:
        raise ValueError(f"features must be (Q, D) and (G, D), got {q.shape} and {g.shape}")
    if metric == "cosine":
        q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        g = g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-12)
    g_sq = (g * g).sum(1)
    out = np.empty((len(q), len(g)), dtype=np.float32)
    for s in range(0, len(q), block):
        qb = q[s : s + block]
        dot = qb @ g.T
        if metric == "cosine":
            d = np.maximum(1.0 - dot, 0.0)
        else:
            d = np.maximum((qb * qb).sum(1)[:, None] + g_sq[None, :] - 2.0 * dot, 0.0)
            if metric == "euclidean":
                np.sqrt(d, out=d)
        out[s : s + block] = d
    return out


def reid_masks(
    q_pids: Sequence[int] | np.ndarray,
    g_pids: Sequence[int] | np.ndarray,
    q_camids: Sequence[int] | np.ndarray,
    g_camids: Sequence[int] | np.ndarray,
    *,
    junk_pid: int | None = -1,
) -> tuple[np.ndarray, np.ndarray]:
    """(Q, G) boolean ``(match, exclude)`` of the Market-1501 protocol: ``exclude`` = same pid
    and same camera, or a junk gallery image; ``match`` = same pid and not excluded."""
    qp, gp = np.asarray(q_pids), np.asarray(g_pids)
    qc, gc = np.asarray(q_camids), np.asarray(g_camids)
    if qp.ndim != 1 or qp.shape != qc.shape or gp.ndim != 1 or gp.shape != gc.shape:
        raise ValueError(
            f"pids and camids must be 1-D and pair up: query {qp.shape}/{qc.shape}, "
            f"gallery {gp.shape}/{gc.shape}"
        )
    same_pid = qp[:, None] == gp[None, :]
    exclude = same_pid & (qc[:, None] == gc[None, :])
    if junk_pid is not None:
        exclude |= (gp == junk_pid)[None, :]
    return same_pid & ~exclude, exclude


def reid_report(
    dist: np.ndarray,
    q_pids: Sequence[int] | np.ndarray,
    g_pids: Sequence[int] | np.ndarray,
    q_camids: Sequence[int] | np.ndarray,
    g_camids: Sequence[int] | np.ndarray,
    ranks: Sequence[int] = (1, 5, 10),
    *,
    top_k: int = 10,
    junk_pid: int | None = -1,
    metric: str = "",
    block: int = 256,
) -> ReidReport:
    """Evaluate a (Q, G) distance matrix under the Market-1501 protocol (module docstring).

    Memory: the (Q, G) masks plus O(block x G) per step."""
    d = np.asarray(dist, dtype=np.float64)
    if d.ndim != 2:
        raise ValueError(f"dist must be (Q, G), got {d.shape}")
    if len(q_pids) != d.shape[0] or len(g_pids) != d.shape[1]:
        raise ValueError(
            f"dist {d.shape} does not match {len(q_pids)} query and {len(g_pids)} gallery pids"
        )
    if not np.isfinite(d).all():
        raise ValueError("dist contains NaN or infinite values")
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    match, exclude = reid_masks(q_pids, g_pids, q_camids, g_camids, junk_pid=junk_pid)
    summary = retrieval_metrics(
        d, match, higher_is_better=False, ks=ranks, exclude=exclude, metric=metric, block=block
    )
    q_n, g_n = d.shape
    ap = np.full(q_n, np.nan)
    inp = np.full(q_n, np.nan)
    top = np.full((q_n, top_k), -1, dtype=np.int64)
    top_match = np.zeros((q_n, top_k), dtype=bool)
    k = min(top_k, g_n)
    pos = np.arange(1, g_n + 1)
    for s in range(0, q_n, block):
        xb = exclude[s : s + block]
        # Excluded items sort last; the stable sort keeps gallery order among ties.
        order = np.argsort(np.where(xb, np.inf, d[s : s + block]), axis=1, kind="stable")
        hit = np.take_along_axis(match[s : s + block], order, axis=1)
        n_valid = (~xb).sum(1)
        top[s : s + block, :k] = np.where(np.arange(k) < n_valid[:, None], order[:, :k], -1)
        top_match[s : s + block, :k] = hit[:, :k]
        n_rel = hit.sum(1)
        scored = n_rel > 0
        cum = np.cumsum(hit, axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            ap[s : s + block] = np.where(scored, ((cum / pos) * hit).sum(1) / n_rel, np.nan)
            last = g_n - np.argmax(hit[:, ::-1], axis=1)  # 1-based rank of the last match
            inp[s : s + block] = np.where(scored, n_rel / last, np.nan)
    return ReidReport(
        mAP=summary.mAP,
        mINP=float(np.nanmean(inp)) if summary.n_queries else float("nan"),
        cmc=summary.cmc,
        cmc_curve=summary.cmc_curve,
        ap=ap,
        inp=inp,
        top_k=top,
        top_k_match=top_match,
        n_queries=summary.n_queries,
        no_match=summary.no_relevant,
        gallery_size=summary.gallery_size,
        metric=metric,
    )
