"""Verification (1:1) metrics from genuine and impostor pair distances: ROC, AUC, EER, TAR@FAR.

Conventions:

* A pair is **accepted** (claimed the same identity) when ``distance <= threshold``.
* TAR (true accept rate, TPR) = accepted genuine pairs / genuine pairs; FAR (false accept
  rate, FPR) = accepted impostor pairs / impostor pairs; FRR = 1 - TAR.
* The ROC has one point per distinct distance (ascending thresholds), plus the implicit start
  (FAR 0, TAR 0) that accepts nothing; AUC is the trapezoid area under it (ties count half,
  as in ``sklearn.metrics.roc_auc_score``).
* EER: where FAR = FRR, linearly interpolated between the two ROC points around the crossing
  (as the usual ``brentq`` over an interpolated ROC); ``eer_threshold`` is the smallest
  threshold with FAR >= FRR.
* ``threshold_at_far(f)`` is the LARGEST measured threshold whose measured FAR <= f
  (conservative: any larger threshold accepts one more impostor than allowed). When even the
  smallest distance is an impostor and 1 / impostors > f, no distance qualifies: the threshold
  is then just below the smallest distance (accept nothing, TAR 0).
* Resolution: with n impostor pairs the smallest non-zero FAR is 1/n. A target FAR below it
  cannot be measured (only FAR = 0 can): such targets are listed as ``measurable=False`` and
  their thresholds rest on zero observed false accepts. Aim for at least 10/far impostors.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vitrina.errors import DataError

__all__ = [
    "OperatingPoint",
    "VerificationReport",
    "pair_distances",
    "verification_report",
]

PAIR_METRICS = ("cosine", "euclidean")
MAX_ALL_PAIRS = 20_000_000
CURVE_POINTS = 200


@dataclass(frozen=True)
class OperatingPoint:
    """The threshold chosen for a target FAR and what it measures."""

    target_far: float
    threshold: float
    far: float
    tar: float
    measurable: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "target_far": self.target_far,
            "threshold": self.threshold,
            "far": self.far,
            "tar": self.tar,
            "measurable": self.measurable,
        }


@dataclass
class VerificationReport:
    """ROC and summary numbers (module docstring). ``thresholds`` (U,) ascending, ``far`` and
    ``tar`` (U,) at each; after :meth:`from_dict` the curve is the subsampled one of
    :meth:`to_dict` (which keeps the points of every listed operating point exact)."""

    thresholds: np.ndarray
    far: np.ndarray
    tar: np.ndarray
    auc: float
    eer: float
    eer_threshold: float
    n_genuine: int
    n_impostor: int
    operating_points: list[OperatingPoint] = field(default_factory=list)
    metric: str = ""

    @property
    def far_resolution(self) -> float:
        """Smallest non-zero FAR the impostor pairs can measure (1 / impostors)."""
        return 1.0 / self.n_impostor

    @property
    def tar_at_far(self) -> dict[float, float]:
        return {p.target_far: p.tar for p in self.operating_points}

    def operating_point(self, far: float) -> OperatingPoint:
        """Threshold at target ``far`` (module docstring) with the FAR and TAR it measures."""
        if not far >= 0:
            raise ValueError(f"far must be >= 0, got {far}")
        i = int(np.searchsorted(self.far, far, side="right")) - 1
        measurable = far * self.n_impostor >= 1
        if i < 0:
            below = float(np.nextafter(self.thresholds[0], -np.inf))
            return OperatingPoint(far, below, 0.0, 0.0, measurable)
        t, f, a = float(self.thresholds[i]), float(self.far[i]), float(self.tar[i])
        return OperatingPoint(far, t, f, a, measurable)

    def threshold_at_far(self, far: float) -> float:
        """The largest distance threshold whose measured FAR <= ``far``."""
        return self.operating_point(far).threshold

    def thresholds_dict(self, far: float = 1e-2) -> dict[str, Any]:
        """Compact, JSON-ready calibration for a gallery: accept when distance <= threshold."""
        p = self.operating_point(far)
        return {
            "metric": self.metric,
            "rule": "accept if distance <= threshold",
            "far": far,
            "threshold": p.threshold,
            "tar": p.tar,
            "far_measured": p.far,
            "measurable": p.measurable,
            "far_resolution": self.far_resolution,
            "eer": self.eer,
            "eer_threshold": self.eer_threshold,
            "auc": self.auc,
            "n_genuine": self.n_genuine,
            "n_impostor": self.n_impostor,
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; the curve subsampled to at most 200 points (log-spaced in FAR, plus the
        operating points, the EER point and both ends)."""
        idx = _subsample(self.far, self.tar, [p.target_far for p in self.operating_points])
        return {
            "metric": self.metric,
            "auc": self.auc,
            "eer": self.eer,
            "eer_threshold": self.eer_threshold,
            "n_genuine": self.n_genuine,
            "n_impostor": self.n_impostor,
            "far_resolution": self.far_resolution,
            "operating_points": [p.to_dict() for p in self.operating_points],
            "curve": {
                "threshold": [float(v) for v in self.thresholds[idx]],
                "far": [float(v) for v in self.far[idx]],
                "tar": [float(v) for v in self.tar[idx]],
            },
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VerificationReport:
        c = d["curve"]
        return cls(
            thresholds=np.asarray(c["threshold"], dtype=np.float64),
            far=np.asarray(c["far"], dtype=np.float64),
            tar=np.asarray(c["tar"], dtype=np.float64),
            auc=float(d["auc"]),
            eer=float(d["eer"]),
            eer_threshold=float(d["eer_threshold"]),
            n_genuine=int(d["n_genuine"]),
            n_impostor=int(d["n_impostor"]),
            operating_points=[OperatingPoint(**p) for p in d.get("operating_points", [])],
            metric=d.get("metric", ""),
        )


def _subsample(far: np.ndarray, tar: np.ndarray, keep_fars: Sequence[float]) -> np.ndarray:
    """At most CURVE_POINTS indices of the curve: for log-spaced FARs (and ``keep_fars``) the
    last point with FAR <= it, the EER neighbourhood, both ends."""
    n = len(far)
    if n <= CURVE_POINTS:
        return np.arange(n)
    low = max(far[far > 0].min() if (far > 0).any() else 1.0, 1e-9)
    grid = np.concatenate([np.logspace(np.log10(low), 0, 150), np.asarray(keep_fars, float)])
    idx = np.searchsorted(far, grid, side="right") - 1
    eer_i = int(np.argmax(far >= 1.0 - tar))
    lin = np.linspace(0, n - 1, 30).astype(np.int64)  # the TAR axis where FAR is flat
    idx = np.unique(np.concatenate([idx[idx >= 0], lin, [0, n - 1, eer_i, max(eer_i - 1, 0)]]))
    if len(idx) > CURVE_POINTS:  # keep the requested ones, thin the rest evenly
        must = np.searchsorted(far, np.asarray(keep_fars, float), side="right") - 1
        must = np.unique(np.concatenate([must[must >= 0], [0, n - 1, eer_i]]))
        rest = np.setdiff1d(idx, must)
        take = rest[np.linspace(0, len(rest) - 1, CURVE_POINTS - len(must)).astype(np.int64)]
        idx = np.union1d(must, take)
    return idx


def verification_report(
    distances: np.ndarray,
    same: np.ndarray,
    *,
    fars: Sequence[float] = (1e-2, 1e-3),
    metric: str = "",
) -> VerificationReport:
    """ROC, AUC, EER and TAR at each of ``fars`` from pair ``distances`` (P,) and ``same`` (P,)
    (True for a genuine pair). Cost: one sort, O(P log P)."""
    d = np.asarray(distances, dtype=np.float64).reshape(-1)
    s = np.asarray(same, dtype=bool).reshape(-1)
    if d.shape != s.shape:
        raise ValueError(f"distances {d.shape} and same {s.shape} must have the same length")
    if not np.isfinite(d).all():
        raise ValueError("distances contain NaN or infinite values")
    n_gen = int(s.sum())
    n_imp = len(s) - n_gen
    if n_gen == 0 or n_imp == 0:
        raise DataError(
            f"verification needs genuine and impostor pairs, got {n_gen} genuine and "
            f"{n_imp} impostor (every identity needs two images, and two identities at least)"
        )
    order = np.argsort(d, kind="stable")
    d, s = d[order], s[order]
    last = np.flatnonzero(np.r_[d[1:] != d[:-1], True])  # last index of each distinct distance
    tar = np.cumsum(s)[last] / n_gen
    far = np.cumsum(~s)[last] / n_imp
    thresholds = d[last]
    fx = np.r_[0.0, far]
    ty = np.r_[0.0, tar]
    auc = float(np.sum(np.diff(fx) * (ty[1:] + ty[:-1]) / 2.0))
    gap = (1.0 - ty) - fx  # FRR - FAR, from 1 down to -1
    u = int(np.argmax(gap <= 0))  # first point with FAR >= FRR (u >= 1)
    alpha = gap[u - 1] / (gap[u - 1] - gap[u])
    eer = float(fx[u - 1] + alpha * (fx[u] - fx[u - 1]))
    report = VerificationReport(
        thresholds=thresholds,
        far=far,
        tar=tar,
        auc=auc,
        eer=eer,
        eer_threshold=float(thresholds[u - 1]),
        n_genuine=n_gen,
        n_impostor=n_imp,
        metric=metric,
    )
    report.operating_points = [report.operating_point(f) for f in dict.fromkeys(map(float, fars))]
    return report


def _pair_rows(e: np.ndarray, i: np.ndarray, j: np.ndarray, metric: str) -> np.ndarray:
    """Distances of the pairs (i[p], j[p]), in chunks."""
    out = np.empty(len(i))
    step = 65536
    for s in range(0, len(i), step):
        a, b = e[i[s : s + step]], e[j[s : s + step]]
        if metric == "cosine":
            out[s : s + step] = 1.0 - (a * b).sum(1)
        else:
            out[s : s + step] = np.sqrt(((a - b) ** 2).sum(1))
    return out


def _all_pairs(e: np.ndarray, codes: np.ndarray, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Genuine and impostor distances of every pair i < j, row-major order, in row blocks."""
    n = len(e)
    sq = (e * e).sum(1)
    gen, imp = [], []
    for s in range(0, n, 512):
        dot = e[s : s + 512] @ e.T
        if metric == "cosine":
            d = 1.0 - dot
        else:
            d = np.sqrt(np.maximum(sq[s : s + 512, None] + sq[None, :] - 2.0 * dot, 0.0))
        upper = np.arange(n)[None, :] > np.arange(s, s + len(d))[:, None]
        same = codes[s : s + 512, None] == codes[None, :]
        gen.append(d[upper & same])
        imp.append(d[upper & ~same])
    return np.concatenate(gen), np.concatenate(imp)


def pair_distances(
    emb: np.ndarray,
    labels: Sequence[Any] | np.ndarray,
    metric: str = "cosine",
    max_pairs: int | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """``(distances, same)`` over pairs i < j of the (N, D) embeddings: every genuine pair
    (same label), and every impostor pair, or, with ``max_pairs``, a uniform sample of at most
    that many distinct impostor pairs (drawn with ``seed``, reproducible). Genuine pairs come
    first, each group in (i, j) order.

    ``cosine`` distance is 1 - cosine similarity (rows L2-normalised here); ``euclidean`` is
    the L2 distance of the rows as given. Without ``max_pairs``, N (N - 1) / 2 may not exceed
    20 million (N about 6300)."""
    if metric not in PAIR_METRICS:
        raise ValueError(f"metric must be one of {PAIR_METRICS}, got {metric!r}")
    e = np.asarray(emb, dtype=np.float64)
    lab = np.asarray(labels)
    if e.ndim != 2 or len(e) != len(lab):
        raise ValueError(f"embeddings {e.shape} and {len(lab)} labels do not match")
    if not np.isfinite(e).all():
        raise ValueError("embeddings contain NaN or infinite values")
    if metric == "cosine":
        e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    n = len(e)
    codes = np.unique(lab, return_inverse=True)[1].reshape(-1)
    n_all = n * (n - 1) // 2
    counts = np.bincount(codes) if n else np.zeros(0, np.int64)
    n_imp_all = n_all - int((counts * (counts - 1) // 2).sum())
    if max_pairs is None or max_pairs >= n_imp_all:
        if n_all > MAX_ALL_PAIRS:
            raise DataError(
                f"{n} embeddings make {n_all:,} pairs, more than {MAX_ALL_PAIRS:,}: "
                "pass max_pairs to sample the impostor pairs"
            )
        gen, imp = _all_pairs(e, codes, metric)
        return np.r_[gen, imp], np.r_[np.ones(len(gen), bool), np.zeros(len(imp), bool)]
    if max_pairs < 0:
        raise ValueError(f"max_pairs must be >= 0, got {max_pairs}")
    # Genuine: all pairs within each identity.
    order = np.argsort(codes, kind="stable")
    bounds = np.flatnonzero(np.r_[True, codes[order][1:] != codes[order][:-1], True])
    gi, gj = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for a, b in itertools.pairwise(bounds):
        if b - a > 1:
            r, c = np.triu_indices(b - a, 1)
            gi.append(order[a:b][r])
            gj.append(order[a:b][c])
    g_keys = np.sort(np.concatenate(gi) * n + np.concatenate(gj))
    ii, jj = _sample_impostors(codes, int(max_pairs), seed)
    dist = np.r_[_pair_rows(e, g_keys // n, g_keys % n, metric), _pair_rows(e, ii, jj, metric)]
    return dist, np.r_[np.ones(len(g_keys), bool), np.zeros(len(ii), bool)]


def _sample_impostors(codes: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``k`` distinct impostor pairs (i < j, sorted), uniform over all impostor pairs and
    reproducible: draw (i, j) uniformly, reject same-label pairs and repeats (or pick from
    the enumerated pairs when ``k`` is a large share of them)."""
    rng = np.random.default_rng(seed)
    n = len(codes)
    if n * (n - 1) // 2 <= MAX_ALL_PAIRS and 4 * k > n * (n - 1) // 2:
        # A large share of all pairs: enumerate them instead of collecting coupons.
        ii, jj = np.triu_indices(n, 1)
        diff = np.flatnonzero(codes[ii] != codes[jj])
        pick = np.sort(rng.choice(diff, size=k, replace=False))
        return ii[pick], jj[pick]
    keys = np.zeros(0, np.int64)
    while len(keys) < k:
        i = rng.integers(0, n, 2 * (k - len(keys)) + 64)
        j = rng.integers(0, n, len(i))
        ok = codes[i] != codes[j]
        lo, hi = np.minimum(i, j)[ok], np.maximum(i, j)[ok]
        keys = np.concatenate([keys, lo.astype(np.int64) * n + hi])
        _, first = np.unique(keys, return_index=True)
        keys = keys[np.sort(first)]  # drop repeats, keep the draw order
    keys = np.sort(keys[:k])
    return keys // n, keys % n
