"""Batch-hard quadruplet loss (Chen et al., "Beyond triplet loss", CVPR 2017), in pml's shape."""

from __future__ import annotations

from typing import Any

import torch
from pytorch_metric_learning.losses import BaseMetricLossFunction
from pytorch_metric_learning.reducers import MeanReducer
from pytorch_metric_learning.utils import common_functions as c_f

__all__ = ["QuadrupletLoss"]


class QuadrupletLoss(BaseMetricLossFunction):
    """``[d(a,p) − d(a,n1) + α1]+ + [d(a,p) − d(n1,n2) + α2]+``, batch-hard, mean over anchors.

    Labels: ``n1`` and ``n2`` differ from the anchor's identity and from each other. The
    variant is the batch-hard one used in practice (no ``mining=None``/all-quadruplets mode):
    per anchor, ``p`` is its hardest (farthest) positive, ``n1`` its hardest (closest) negative,
    and ``(n1, n2)`` of the second term the closest pair of two different identities, both
    other than the anchor's, anywhere in the batch. Anchors without a positive, or in a batch
    with fewer than three identities, have no quadruplet and are skipped; a batch with none
    gives pml's zero loss (which still has a gradient). The per-anchor losses are averaged
    over all valid anchors (``MeanReducer``), like batch-hard triplet loss.

    Works with any pml distance: for a similarity (``CosineSimilarity``) "hardest" and the
    sign of the margins flip, as in pml's ``TripletMarginLoss``. The default distance is pml's
    (L2 of normalised embeddings); vitrina passes ``LpDistance(normalize_embeddings=False)``.

    Args:
        margin: α1, the triplet-term margin.
        margin2: α2, the pair-term margin; ``None`` means ``margin / 2`` (the paper's α2 < α1).

    Shape: ``embeddings`` (N, D), ``labels`` (N,) → scalar.
    """

    def __init__(self, margin: float = 0.3, margin2: float | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.margin = float(margin)
        self.margin2 = self.margin / 2 if margin2 is None else float(margin2)
        self.add_to_recordable_attributes(list_of_names=["margin", "margin2"], is_stat=False)

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
        if indices_tuple is not None:
            raise ValueError("QuadrupletLoss mines its own (batch-hard) quadruplets; no miner")
        mat = self.distance(embeddings)
        dist = -mat if self.distance.is_inverted else mat  # larger = farther, either way
        n = labels.numel()
        same = labels[:, None] == labels[None, :]
        diff = ~same
        pos = same & ~torch.eye(n, dtype=torch.bool, device=labels.device)
        inf = torch.tensor(float("inf"), dtype=dist.dtype, device=dist.device)
        hardest_pos = torch.where(pos, dist, -inf).amax(dim=1)
        hardest_neg = torch.where(diff, dist, inf).amin(dim=1)
        # Second term per identity (anchors of one identity share it): the closest pair of
        # different identities, both other than that one. (U, N, N) booleans, U = identities.
        ids, inverse = torch.unique(labels, return_inverse=True)
        other = labels[None, :] != ids[:, None]
        valid = other[:, :, None] & other[:, None, :] & diff[None]
        hardest_pair = torch.where(valid, dist[None], inf).amin(dim=(1, 2))[inverse]
        keep = pos.any(dim=1) & torch.isfinite(hardest_pair)
        if not bool(keep.any()):
            return self.zero_losses()
        ap, an, nn_ = hardest_pos[keep], hardest_neg[keep], hardest_pair[keep]
        losses = torch.relu(ap - an + self.margin) + torch.relu(ap - nn_ + self.margin2)
        anchors = torch.arange(n, device=labels.device)[keep]
        return {"loss": {"losses": losses, "indices": anchors, "reduction_type": "element"}}

    def get_default_reducer(self) -> MeanReducer:
        return MeanReducer()
