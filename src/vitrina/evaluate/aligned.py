"""AlignedReID distances for evaluation (numpy): local (stripes aligned by the shortest path),
and global + local combined.

The local distance of two images with stripes ``a`` (S, D) and ``b`` (T, D) is the cost of the
cheapest path from cell (0, 0) to (S-1, T-1) of the matrix ``tanh(||a_i - b_j|| / 2)``,
moving only down or right, divided by S — exactly :func:`vitrina.losses.aligned.local_distance_matrix`
(the training side, in torch). The combined distance of AlignedReID's test time is
``global + weight * local``.

Cost: S x T cell distances per pair plus the S x T dynamic programme, vectorised over a block
of queries x every gallery image: about S * T times the work of a global distance of the same
width; :func:`local_distances` keeps memory at ``block x G x S x T`` floats.
"""

from __future__ import annotations

import numpy as np

__all__ = ["combined_distances", "local_distances", "shortest_path"]

_CELL_BUDGET = 16_000_000  # floats of (block, G, S, T) cell costs at a time


def shortest_path(cost: np.ndarray) -> np.ndarray:
    """Cheapest monotone path (down / right) from the top-left to the bottom-right cell of
    each (..., S, T) matrix -> (...)."""
    cost = np.asarray(cost, dtype=np.float64)
    s, t = cost.shape[-2:]
    acc = np.empty_like(cost[..., 0, :])  # one row of the table at a time
    acc[..., 0] = cost[..., 0, 0]
    for j in range(1, t):
        acc[..., j] = acc[..., j - 1] + cost[..., 0, j]
    for i in range(1, s):
        acc[..., 0] = acc[..., 0] + cost[..., i, 0]
        for j in range(1, t):
            acc[..., j] = np.minimum(acc[..., j], acc[..., j - 1]) + cost[..., i, j]
    return acc[..., t - 1]


def local_distances(
    query: np.ndarray, gallery: np.ndarray, *, block: int | None = None
) -> np.ndarray:
    """(Q, G) float32 local distances between stripe sets: ``query`` (Q, S, D), ``gallery``
    (G, T, D) -> shortest path / S, computed in blocks of queries."""
    q = np.asarray(query, dtype=np.float32)
    g = np.asarray(gallery, dtype=np.float32)
    if q.ndim != 3 or g.ndim != 3 or q.shape[2] != g.shape[2]:
        raise ValueError(f"stripes must be (Q, S, D) and (G, T, D), got {q.shape} and {g.shape}")
    n_q, s, _ = q.shape
    n_g, t, _ = g.shape
    out = np.empty((n_q, n_g), dtype=np.float32)
    if block is None:
        block = max(1, _CELL_BUDGET // max(1, n_g * s * t))
    g_flat = g.reshape(n_g * t, -1)
    g_sq = (g_flat * g_flat).sum(1)
    for start in range(0, n_q, block):
        qb = q[start : start + block]
        b = len(qb)
        q_flat = qb.reshape(b * s, -1)
        d2 = (q_flat * q_flat).sum(1)[:, None] + g_sq[None, :] - 2.0 * (q_flat @ g_flat.T)
        d = np.sqrt(np.maximum(d2, 0.0))  # (b*S, G*T)
        cost = np.tanh(d / 2).reshape(b, s, n_g, t).transpose(0, 2, 1, 3)  # (b, G, S, T)
        out[start : start + b] = shortest_path(cost) / s
    return out


def combined_distances(
    global_dist: np.ndarray, local_dist: np.ndarray, weight: float = 1.0
) -> np.ndarray:
    """AlignedReID's test-time distance: ``global + weight * local`` (same shapes)."""
    g = np.asarray(global_dist, dtype=np.float32)
    loc = np.asarray(local_dist, dtype=np.float32)
    if g.shape != loc.shape:
        raise ValueError(f"global {g.shape} and local {loc.shape} distances differ in shape")
    if not np.isfinite(weight) or weight < 0:
        raise ValueError(f"weight must be a finite number >= 0, got {weight}")
    return g + np.float32(weight) * loc
