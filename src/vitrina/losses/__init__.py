"""Metric-learning losses and miners chosen by name, combined into one training criterion.

>>> from vitrina.losses import build_criterion
>>> crit = build_criterion("triplet-batch-hard+0.0005*center", num_classes=10, embedding_dim=64)
>>> crit.describe()
'triplet (batch-hard miner, margin 0.3, euclidean) + 0.0005 × center (squared euclidean)'
>>> total, parts = crit(metric_emb, class_emb, labels)  # doctest: +SKIP

pytorch-metric-learning (pml) provides softmax's neighbours (triplet, contrastive, CosFace,
ArcFace) and the miners; :class:`QuadrupletLoss` and :class:`CenterLoss` are written in pml's
shape (``BaseMetricLossFunction``, distance objects, reducers). pml is imported on first use,
not at import of this package.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from vitrina.losses.criterion import (
    Criterion,
    LossTerm,
    SpecTerm,
    build_criterion,
    parse_loss_spec,
)
from vitrina.losses.registry import (
    DISTANCES,
    LOSS_HELP,
    LOSSES,
    MINERS,
    distance_names,
    loss_names,
    miner_names,
)

__all__ = [
    "DISTANCES",
    "LOSSES",
    "LOSS_HELP",
    "MINERS",
    "CenterLoss",
    "Criterion",
    "LossTerm",
    "QuadrupletLoss",
    "SoftmaxLoss",
    "SpecTerm",
    "build_criterion",
    "distance_names",
    "loss_names",
    "miner_names",
    "parse_loss_spec",
]

_LAZY = {  # imported on first use (center and quadruplet import pml)
    "CenterLoss": "vitrina.losses.center",
    "QuadrupletLoss": "vitrina.losses.quadruplet",
    "SoftmaxLoss": "vitrina.losses.softmax",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vitrina.losses' has no attribute {name!r}")


if TYPE_CHECKING:
    from vitrina.losses.center import CenterLoss
    from vitrina.losses.quadruplet import QuadrupletLoss
    from vitrina.losses.softmax import SoftmaxLoss
