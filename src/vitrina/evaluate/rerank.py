"""k-reciprocal re-ranking (Zhong et al., CVPR 2017, "Re-ranking Person Re-identification with
k-reciprocal Encoding").

All Q + G = N images are ranked against each other. For an image p:

* N(p, k): its k nearest neighbours plus itself (k + 1 images; p always first).
* R(p, k) = {g in N(p, k) : p in N(g, k)}: the k-reciprocal neighbours.
* R*(p, k1): R(p, k1) extended by R(c, round(k1/2)) of each candidate c in R(p, k1) whose
  half-size set shares more than 2/3 of its images with R(p, k1).
* V[p, g] = exp(-d(p, g)) over g in R*(p, k1), normalised to sum 1 (the Gaussian-kernel
  encoding); local query expansion replaces V[p] by the mean of V over N(p, k2 - 1) (its k2
  nearest, itself included; ``k2=1`` skips it).
* Jaccard distance d_J(p, g) = 1 - sum min(V[p], V[g]) / sum max(V[p], V[g]).
* final = (1 - lambda) d_J + lambda d.

Distances: the inputs are distances (smaller is closer), plain euclidean by default. As in the
authors' code, they are squared (``square=True``) and each row of the N x N matrix is divided
by its maximum; that normalised squared distance is the ``d`` above, so ``lambda_value=1``
returns it (ranking exactly as the input). Pass squared-euclidean distances with
``square=False`` (squaring them again, as torchreid does, changes the kernel weights).

Ties in a ranking are broken by index (queries first, then gallery), so results are
deterministic; the authors' code uses an unstable sort and can differ only on exact ties.

Cost: the caller holds the (G, G) gallery distances, O(N^2); this function adds O(N k1^2)
for the neighbour sets, a sparse V of O(N k1^2) entries and the (Q, G) output. Up to
N = ``max_n`` (20 000 by default, about Market-1501 or DukeMTMC) it runs in seconds to a
minute; above that it refuses (pass a larger ``max_n`` knowingly).
"""

from __future__ import annotations

import numpy as np

from vitrina.errors import VitrinaError

__all__ = ["k_reciprocal_neighbours", "rerank_k_reciprocal"]

MAX_N = 20_000
_PAIR_BUDGET = 4_000_000  # (query entry, gallery entry) pairs per Jaccard step
_BLOCK = 512  # rows of the N x N distances read at a time


class _Distances:
    """The N x N matrix [[q_q, q_g], [q_g.T, g_g]] without building it, squared if asked and
    divided row-wise by the row maximum."""

    def __init__(self, q_g: np.ndarray, q_q: np.ndarray, g_g: np.ndarray, square: bool):
        self.q_g, self.q_q, self.g_g = q_g, q_q, g_g
        self.q = q_g.shape[0]
        self.n = q_g.shape[0] + q_g.shape[1]
        self.square = square
        row_max = np.concatenate(
            [
                np.maximum(self._raw_max(q_q, 1), self._raw_max(q_g, 1)),
                np.maximum(self._raw_max(q_g, 0), self._raw_max(g_g, 1)),
            ]
        )
        self.scale = 1.0 / np.maximum(row_max, np.finfo(np.float64).tiny)

    def _raw_max(self, m: np.ndarray, axis: int) -> np.ndarray:
        if m.size == 0:
            return np.zeros(m.shape[1 - axis])
        return np.abs(m).max(axis) ** 2 if self.square else m.max(axis)

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Normalised rows ``start:stop`` of the N x N matrix, float64."""
        parts = []
        if start < self.q:
            e = min(stop, self.q)
            parts.append(np.concatenate([self.q_q[start:e], self.q_g[start:e]], axis=1))
        if stop > self.q:
            s = max(start, self.q) - self.q
            e = stop - self.q
            parts.append(np.concatenate([self.q_g[:, s:e].T, self.g_g[s:e]], axis=1))
        r = np.concatenate(parts).astype(np.float64)
        if self.square:
            r *= r
        return r * self.scale[start:stop, None]


def _nearest(dist: _Distances, width: int) -> np.ndarray:
    """(N, width) indices of each image's nearest, itself first, ties by index."""
    n = dist.n
    out = np.empty((n, width), dtype=np.int64)
    for s in range(0, n, _BLOCK):
        r = dist.rows(s, min(n, s + _BLOCK))
        rows = np.arange(len(r))
        r[rows, rows + s] = -np.inf  # itself first, whatever the diagonal holds
        if width < n:
            # Keep every item tied with the width-th smallest, then sort stably.
            kth = np.partition(r, width - 1, axis=1)[:, width - 1 : width]
            cand = np.where(r <= kth, r, np.inf)
        else:
            cand = r
        out[s : s + len(r)] = np.argsort(cand, axis=1, kind="stable")[:, :width]
    return out


def _reciprocal(nn: np.ndarray, k: int) -> np.ndarray:
    """(N, k+1) boolean: is ``nn[p, j]`` in R(p, k)? ``nn`` holds at least k+1 columns."""
    top = nn[:, : k + 1]
    p = np.arange(len(nn))[:, None, None]
    return (top[top] == p).any(-1)


def k_reciprocal_neighbours(
    q_g_dist: np.ndarray,
    q_q_dist: np.ndarray,
    g_g_dist: np.ndarray,
    k: int,
) -> list[np.ndarray]:
    """R(p, k) for every image p (queries 0..Q-1, then gallery Q..N-1), each sorted ascending.
    Mostly for inspection and tests; :func:`rerank_k_reciprocal` uses the same code."""
    dist = _Distances(*_check(q_g_dist, q_q_dist, g_g_dist), square=False)
    k = min(k, dist.n - 1)
    nn = _nearest(dist, k + 1)
    rec = _reciprocal(nn, k)
    return [np.sort(nn[p, : k + 1][rec[p]]) for p in range(dist.n)]


def _check(q_g: np.ndarray, q_q: np.ndarray, g_g: np.ndarray) -> tuple[np.ndarray, ...]:
    q_g, q_q, g_g = (np.asarray(m) for m in (q_g, q_q, g_g))
    if q_g.ndim != 2:
        raise ValueError(f"q_g_dist must be (Q, G), got {q_g.shape}")
    q, g = q_g.shape
    if q_q.shape != (q, q) or g_g.shape != (g, g):
        raise ValueError(
            f"q_q_dist {q_q.shape} and g_g_dist {g_g.shape} must be ({q}, {q}) and ({g}, {g})"
        )
    for name, m in (("q_g_dist", q_g), ("q_q_dist", q_q), ("g_g_dist", g_g)):
        if not np.isfinite(m).all():
            raise ValueError(f"{name} contains NaN or infinite values")
    return q_g, q_q, g_g


def _ragged_take(starts: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For groups i with ``counts[i]`` items from ``starts[i]``: (group of each item, position)."""
    group = np.repeat(np.arange(len(counts)), counts)
    first = np.cumsum(counts) - counts
    return group, starts[group] + np.arange(int(counts.sum())) - first[group]


def _csr(
    rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sum duplicate (row, col) entries; return (indptr, cols, vals) sorted by row then col."""
    key = rows * n + cols
    order = np.argsort(key, kind="stable")
    key, vals = key[order], vals[order]
    first = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    vals = np.add.reduceat(vals, first) if len(key) else vals
    key = key[first]
    indptr = np.searchsorted(key // n, np.arange(n + 1))
    return indptr, key % n, vals


def rerank_k_reciprocal(
    q_g_dist: np.ndarray,
    q_q_dist: np.ndarray,
    g_g_dist: np.ndarray,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    *,
    square: bool = True,
    max_n: int | None = MAX_N,
) -> np.ndarray:
    """Re-ranked (Q, G) float32 distances (smaller is closer); see the module docstring.

    Shape: ``q_g_dist`` (Q, G), ``q_q_dist`` (Q, Q), ``g_g_dist`` (G, G), symmetric distances
    with a zero diagonal (the diagonal is not read). Defaults are the paper's for Market-1501.
    """
    q_g, q_q, g_g = _check(q_g_dist, q_q_dist, g_g_dist)
    q, g = q_g.shape
    n = q + g
    if max_n is not None and n > max_n:
        gib = 4 * n * n / 2**30
        raise VitrinaError(
            f"re-ranking {q} queries + {g} gallery images = {n} exceeds max_n={max_n}: the N x N "
            f"distances alone take {gib:.2g} GiB in float32; re-rank a subset or pass a larger max_n"
        )
    if k1 < 1 or k2 < 1:
        raise ValueError(f"k1 and k2 must be >= 1, got k1={k1}, k2={k2}")
    if not 0.0 <= lambda_value <= 1.0:
        raise ValueError(f"lambda_value must be in [0, 1], got {lambda_value}")
    dist = _Distances(q_g, q_q, g_g, square)
    if q == 0 or g == 0:
        return np.zeros((q, g), dtype=np.float32)
    if lambda_value == 1.0:
        return dist.rows(0, q)[:, q:].astype(np.float32)

    k1 = min(k1, n - 1)
    kh = min(round(k1 / 2), n - 1)
    k2 = min(k2, n)
    nn = _nearest(dist, max(k1 + 1, k2))
    rec = _reciprocal(nn, k1)  # (N, k1+1)
    rec_h = _reciprocal(nn, kh)  # (N, kh+1)
    top = nn[:, : k1 + 1]
    top_h = nn[:, : kh + 1]

    # R*(p, k1): R(p, k1) plus the half-size sets R(c, kh) of candidates c that overlap it enough.
    rows_v, cols_v = [], []
    for s in range(0, n, _BLOCK):
        e = min(n, s + _BLOCK)
        r_set = np.where(rec[s:e], top[s:e], -1)  # (B, k1+1), -1 = not in R
        cand_h = top_h[top[s:e]]  # (B, k1+1, kh+1): N(c, kh) of each candidate c
        cand_in = rec_h[top[s:e]]  # ... and whether it is in R(c, kh)
        in_r = (cand_h[..., None] == r_set[:, None, None, :]).any(-1) & cand_in
        size_h = cand_in.sum(-1)
        accept = rec[s:e] & (in_r.sum(-1) > 2.0 / 3.0 * size_h)
        add = np.where(accept[..., None] & cand_in, cand_h, -1).reshape(e - s, -1)
        members = np.concatenate([r_set, add], axis=1)
        b, j = np.nonzero(members >= 0)
        rows_v.append(b + s)
        cols_v.append(members[b, j])
    rows = np.concatenate(rows_v)
    cols = np.concatenate(cols_v)
    # Unique members per row, then the kernel weights exp(-d) normalised per row.
    indptr, cols, _ = _csr(rows, cols, np.zeros(len(rows)), n)
    rows = np.repeat(np.arange(n), np.diff(indptr))
    d_rc = np.empty(len(rows))
    for s in range(0, n, _BLOCK):
        a, b = indptr[s], indptr[min(n, s + _BLOCK)]
        block = dist.rows(s, min(n, s + _BLOCK))
        d_rc[a:b] = block[rows[a:b] - s, cols[a:b]]
    w = np.exp(-d_rc)
    vals = w / np.bincount(rows, weights=w, minlength=n)[rows]

    if k2 > 1:  # local query expansion: V[p] <- mean of V over N(p, k2-1)
        src = nn[:, :k2].reshape(-1)
        grp, pos = _ragged_take(indptr[src], np.diff(indptr)[src])
        indptr, cols, vals = _csr(grp // k2, cols[pos], vals[pos] / k2, n)
        rows = np.repeat(np.arange(n), np.diff(indptr))

    # Jaccard: sum_k min(V[p, k], V[x, k]) over gallery images x sharing a column k with query p.
    in_g = rows >= q
    by_col = np.argsort(cols[in_g], kind="stable")
    g_rows = rows[in_g][by_col] - q
    g_vals = vals[in_g][by_col]
    col_ptr = np.searchsorted(cols[in_g][by_col], np.arange(n + 1))
    col_count = np.diff(col_ptr)
    pairs_per_query = np.add.reduceat(col_count[cols[: indptr[q]]], indptr[:q]) * (
        np.diff(indptr[: q + 1]) > 0
    )
    out = np.empty((q, g), dtype=np.float32)
    s = 0
    while s < q:
        # As many queries as fit the pair budget (at least one, at most _BLOCK).
        e = s + max(1, int(np.searchsorted(np.cumsum(pairs_per_query[s:]), _PAIR_BUDGET)))
        e = min(e, q, s + _BLOCK)
        a, b = indptr[s], indptr[e]
        ent, pos = _ragged_take(col_ptr[cols[a:b]], col_count[cols[a:b]])
        qi = rows[a:b][ent] - s
        common = np.minimum(vals[a:b][ent], g_vals[pos])
        m = np.bincount(qi * g + g_rows[pos], weights=common, minlength=(e - s) * g)
        jaccard = 1.0 - (m / (2.0 - m)).reshape(e - s, g)
        original = dist.rows(s, e)[:, q:]
        out[s:e] = (1.0 - lambda_value) * jaccard + lambda_value * original
        s = e
    return out
