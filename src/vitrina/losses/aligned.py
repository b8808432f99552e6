"""AlignedReID's local distance and losses (Zhang et al. 2017, "AlignedReID: Surpassing
Human-Level Performance in Person Re-Identification"), differentiable, in torch.

Two images' stripes ``a`` (S, D) and ``b`` (T, D) (top to bottom, unit length each) give the
S x T matrix of ``tanh(||a_i - b_j|| / 2)`` = ``(e^d - 1) / (e^d + 1)`` (the paper's
normalisation, each cell in [0, 1)); the local distance is the cost of the **shortest path**
from cell (0, 0) to (S-1, T-1) moving only down or right, divided by S (so it is on the scale
of one stripe, comparable to the global distance). The path may pair several stripes of one
image with one stripe of the other, so the head of a person matches the head when one crop is
shifted. :mod:`vitrina.evaluate.aligned` computes the same distance in numpy for evaluation.

Training (the paper's recipe): the hardest positive and negative of each anchor are mined by
the **global** distance, and the same triplets give the local triplet loss; with mutual
learning two networks also learn from each other's identity probabilities (KL) and distance
matrices (the metric mutual loss, each side's target detached).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "AlignedLocalLoss",
    "local_distance_matrix",
    "mutual_metric_loss",
    "mutual_probability_loss",
    "shortest_path",
    "stripe_costs",
]


def stripe_costs(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cell costs ``tanh(||a_i - b_j|| / 2)`` of every pair of images: ``a`` (N, S, D), ``b``
    (M, T, D) -> (N, M, S, T)."""
    diff = a[:, None, :, None, :] - b[None, :, None, :, :]
    d = (diff.pow(2).sum(-1) + 1e-12).sqrt()
    return torch.tanh(d / 2)


def shortest_path(cost: torch.Tensor) -> torch.Tensor:
    """Cost of the cheapest monotone path (down or right steps) from the top-left to the
    bottom-right cell of each (..., S, T) matrix -> (...). Differentiable (through ``min``)."""
    s, t = cost.shape[-2:]
    prev: list[torch.Tensor] = []
    for i in range(s):
        row: list[torch.Tensor] = []
        for j in range(t):
            c = cost[..., i, j]
            if i == 0 and j == 0:
                row.append(c)
            elif i == 0:
                row.append(row[j - 1] + c)
            elif j == 0:
                row.append(prev[0] + c)
            else:
                row.append(torch.minimum(prev[j], row[j - 1]) + c)
        prev = row
    return prev[-1]


def local_distance_matrix(a: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """(N, M) local distances between the stripes ``a`` (N, S, D) and ``b`` (M, S, D) (``b``
    defaults to ``a``): shortest path / S."""
    b = a if b is None else b
    return shortest_path(stripe_costs(a, b)) / a.shape[1]


def _hard_indices(dist: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per anchor: index of its farthest positive and nearest negative under ``dist``."""
    same = labels[:, None] == labels[None, :]
    pos = dist.masked_fill(~same, float("-inf")).argmax(1)
    neg = dist.masked_fill(same, float("inf")).argmin(1)
    return pos, neg


class AlignedLocalLoss(nn.Module):
    """Triplet loss on local distances, the triplets mined by the global distance.

    ``forward(global_emb (N, D), stripes (N, S, Dl), labels (N,))`` -> scalar: mean over
    anchors of ``relu(d_l(a, p) - d_l(a, n) + margin)`` where ``p`` / ``n`` are the anchor's
    hardest positive / negative by the Euclidean distance of ``global_emb`` (no gradient
    through the mining). Anchors without a positive or a negative in the batch are skipped."""

    def __init__(self, margin: float = 0.3) -> None:
        super().__init__()
        self.margin = float(margin)

    def forward(
        self,
        global_emb: torch.Tensor,
        stripes: torch.Tensor,
        labels: torch.Tensor,
        local_dist: torch.Tensor | None = None,
    ) -> torch.Tensor:
        with torch.no_grad():
            gd = torch.cdist(global_emb.float(), global_emb.float())
            same = labels[:, None] == labels[None, :]
            eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
            valid = ((same & ~eye).any(1)) & ((~same).any(1))
            pos, neg = _hard_indices(gd.masked_fill(eye, float("-inf")), labels)
        if not bool(valid.any()):
            return stripes.sum() * 0.0
        ld = local_distance_matrix(stripes.float()) if local_dist is None else local_dist
        idx = torch.arange(len(labels), device=labels.device)
        loss = F.relu(ld[idx, pos] - ld[idx, neg] + self.margin)
        return loss[valid].mean()


def mutual_probability_loss(logits: torch.Tensor, peer_logits: torch.Tensor) -> torch.Tensor:
    """KL(peer || self) of the identity probabilities, the peer's side detached (deep mutual
    learning, Zhang et al. 2018, as AlignedReID uses it)."""
    return F.kl_div(
        F.log_softmax(logits.float(), 1),
        F.softmax(peer_logits.detach().float(), 1),
        reduction="batchmean",
    )


def mutual_metric_loss(dist: torch.Tensor, peer_dist: torch.Tensor) -> torch.Tensor:
    """AlignedReID's metric mutual loss: mean squared difference of two distance matrices of
    the same batch, the peer's side detached."""
    return (dist - peer_dist.detach()).pow(2).mean()
