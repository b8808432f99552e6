"""Siamese losses over the sampled pairs of a pair batch (``--sampler pairs``).

A pair batch (:class:`vitrina.data.samplers.PairSampler`) lays its images out as pairs,
``[a1, b1, a2, b2, ...]``; a pair is *same* when its two labels are equal. Unlike the losses
of a P×K batch, which use every pair or triplet in the batch, these see only the sampled
pairs: the Siamese network of the review, before triplets (Bromley et al. 1993; Chopra,
Hadsell & LeCun 2005; Koch, Zemel & Salakhutdinov 2015).

* :class:`SiameseContrastive` — pytorch-metric-learning's ``ContrastiveLoss`` on the
  distance of the sampled pairs only (``indices_tuple`` = those pairs).
* :class:`SiameseBinary` — a same/different classifier on ``|a - b|``: a linear layer (its
  weights belong to the loss, like ArcFace's) and a binary cross-entropy.

Shape: ``embeddings`` ``(2N, D)`` in pair order, ``labels`` ``(2N,)`` -> a scalar.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SiameseBinary", "SiameseContrastive", "pair_layout"]


def pair_layout(
    embeddings: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(first, second)`` indices of the consecutive pairs of a pair batch."""
    n = len(labels)
    if n < 2 or n % 2 or len(embeddings) != n:
        raise ValueError(
            f"a Siamese loss needs a pair batch (an even number of images in pair order, "
            f"from --sampler pairs); got {n} labels and {len(embeddings)} embeddings"
        )
    first = torch.arange(0, n, 2, device=labels.device)
    return first, first + 1


class SiameseContrastive(nn.Module):
    """Contrastive loss on the distance of the sampled pairs (pml's ``ContrastiveLoss``,
    margins and distance as given)."""

    def __init__(self, distance: Any, pos_margin: float, neg_margin: float) -> None:
        super().__init__()
        from pytorch_metric_learning.losses import ContrastiveLoss

        self.loss = ContrastiveLoss(pos_margin=pos_margin, neg_margin=neg_margin, distance=distance)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        a, b = pair_layout(embeddings, labels)
        same = labels[a] == labels[b]
        pairs = (a[same], b[same], a[~same], b[~same])  # pml's (a1, p, a2, n)
        return self.loss(embeddings, labels, pairs)


class SiameseBinary(nn.Module):
    """``P(same) = sigmoid(w · |a - b| + c)``, trained by binary cross-entropy (Koch et al.
    2015 on learned embeddings). ``w``/``c`` are the loss's parameters."""

    def __init__(self, embedding_size: int) -> None:
        super().__init__()
        self.head = nn.Linear(int(embedding_size), 1)

    def same_logits(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """The logit of "same identity" for each pair of rows."""
        return self.head((first - second).abs()).squeeze(1)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        a, b = pair_layout(embeddings, labels)
        target = (labels[a] == labels[b]).to(embeddings.dtype)
        logits = self.same_logits(embeddings[a], embeddings[b].to(embeddings.dtype))
        return F.binary_cross_entropy_with_logits(logits.to(target.dtype), target)
