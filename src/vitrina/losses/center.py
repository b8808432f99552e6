"""Center loss (Wen et al., "A Discriminative Feature Learning Approach", ECCV 2016), in pml's shape."""

from __future__ import annotations

from typing import Any

import torch
from pytorch_metric_learning.losses import BaseMetricLossFunction
from pytorch_metric_learning.reducers import MeanReducer
from pytorch_metric_learning.utils import common_functions as c_f
from torch import nn

__all__ = ["CenterLoss"]


class CenterLoss(BaseMetricLossFunction):
    """``0.5 · mean_i ||x_i − c_{y_i}||²`` with one learned center per class.

    ``centers`` is an ``nn.Parameter`` (num_classes × embedding_size, ``randn`` init), trained
    by the optimizer together with the network, as in the common ReID implementation
    (KaiyangZhou/pytorch-center-loss, "Bag of Tricks"). The paper's separate center update
    rate α is approximated by the optimizer's learning rate for the centers: give them their
    own parameter group via :meth:`center_parameters` (Bag of Tricks: SGD lr 0.5 and loss
    weight 0.0005). The distance is always the squared Euclidean distance of the raw
    embeddings; pml's ``distance`` argument is not used. No miner (``indices_tuple``).

    Shape: ``embeddings`` (N, D), ``labels`` (N,) int in ``[0, num_classes)`` → scalar.
    """

    def __init__(self, num_classes: int, embedding_size: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.num_classes = int(num_classes)
        self.embedding_size = int(embedding_size)
        self.centers = nn.Parameter(torch.randn(self.num_classes, self.embedding_size))
        self.add_to_recordable_attributes(
            list_of_names=["num_classes", "embedding_size"], is_stat=False
        )

    def compute_loss(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        indices_tuple: tuple[torch.Tensor, ...] | None,
        ref_emb: torch.Tensor,
        ref_labels: torch.Tensor,
    ) -> dict[str, Any]:
        c_f.labels_required(labels)
        c_f.ref_not_supported(embeddings, labels, ref_emb, ref_labels)
        c_f.indices_tuple_not_supported(indices_tuple)
        losses = 0.5 * (embeddings - self.centers[labels]).pow(2).sum(dim=1)
        indices = c_f.torch_arange_from_size(embeddings)
        return {"loss": {"losses": losses, "indices": indices, "reduction_type": "element"}}

    def get_default_reducer(self) -> MeanReducer:
        return MeanReducer()

    def center_parameters(self) -> list[nn.Parameter]:
        """The centers, for an optimizer parameter group with its own learning rate."""
        return [self.centers]
