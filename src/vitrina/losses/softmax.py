"""Softmax (identity) loss: cross-entropy over a linear classifier the loss owns."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SoftmaxLoss"]


class SoftmaxLoss(nn.Module):
    """Cross-entropy of ``classifier(embeddings)``; the classifier is trained with the network.

    ``classifier`` is ``Linear(embedding_dim, num_classes, bias=False)``, the "Bag of Tricks"
    ReID head after a BN-neck. ``label_smoothing`` (default 0.1, the ReID recipe) softens the
    targets so that identities seen in few images do not get over-confident logits.

    Shape: ``embeddings`` (N, D), ``labels`` (N,) int → scalar (mean over the batch).
    """

    def __init__(self, embedding_dim: int, num_classes: int, label_smoothing: float = 0.1) -> None:
        super().__init__()
        self.classifier = nn.Linear(embedding_dim, num_classes, bias=False)
        self.label_smoothing = float(label_smoothing)

    def logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(N, D) → (N, num_classes), e.g. for a training accuracy."""
        return self.classifier(embeddings)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = self.logits(embeddings).float()  # fp32 softmax under autocast
        return F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
