"""An embedding model: a backbone, an embedding neck and a nearest-identity head.

``vitrina train-embedding`` trains one; its run folder is read by ``vitrina embed``,
``index``, ``search`` and ``evaluate-reid`` like any other, because it keeps the one model
contract (:class:`~vitrina.models.contract.VitrinaModel`)::

    features(x) -> (raw, neck)   raw: after the optional reduction Linear, before the BN-neck
    embed(x)    -> neck          what retrieval uses (BN-neck output; == raw without BN-neck)
    classify(x) -> logits        scaled cosine similarity to one prototype per training identity

The BN-neck is the "Bag of Tricks" ReID recipe (Luo et al., 2019): metric losses (triplet,
center, ...) see the raw features, identity losses (softmax, ArcFace) the batch-normalised
ones, which keeps the two objectives from fighting in one space. Its BN has no learned shift.

The head holds a prototype (the mean L2-normalised embedding) of every training identity,
filled after training by :meth:`EmbeddingModel.set_prototypes`: whatever the loss, ``classify``
answers "which training identity is this closest to" and ``vitrina predict`` means something.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vitrina.models.contract import VitrinaModel, drop_classifier

__all__ = ["PROTOTYPE_SCALE", "EmbeddingModel", "PrototypeHead"]

PROTOTYPE_SCALE = 10.0  # cosine similarity -> logits; softmax over identities stays soft


class PrototypeHead(nn.Module):
    """Logits = ``PROTOTYPE_SCALE`` x cosine similarity to each row of ``weight``."""

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(num_classes, dim), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return PROTOTYPE_SCALE * F.normalize(x, dim=1) @ F.normalize(self.weight, dim=1).t()


class _Neck(nn.Module):
    def __init__(self, in_features: int, dim: int, bnneck: bool) -> None:
        super().__init__()
        self.fc: nn.Module = nn.Linear(in_features, dim) if dim != in_features else nn.Identity()
        self.bn: nn.Module = nn.BatchNorm1d(dim) if bnneck else nn.Identity()
        if isinstance(self.bn, nn.BatchNorm1d):
            self.bn.bias.requires_grad_(False)  # BNNeck: no shift (Luo et al. 2019)
        if isinstance(self.fc, nn.Linear):
            nn.init.kaiming_normal_(self.fc.weight, mode="fan_out")
            nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raw = self.fc(x)
        return raw, self.bn(raw)


class EmbeddingModel(VitrinaModel):
    """``base`` (any vitrina model) + neck (``dim``; 0 keeps the backbone's width) + head.

    State-dict layout: ``net.*`` the backbone (a vitrina model itself), ``neck.*``, ``head.weight``.
    """

    _layout_prefixes = ("net", "neck", "head")

    def __init__(
        self,
        base: VitrinaModel,
        *,
        dim: int = 0,
        bnneck: bool = True,
        num_classes: int = 1,
        class_names: list[str] | None = None,
    ) -> None:
        if isinstance(base, EmbeddingModel):
            raise TypeError("base is already an EmbeddingModel")
        drop_classifier(base)  # the backbone's own classifier is never used here
        width = int(dim) if dim else base.num_features
        super().__init__(
            base,
            arch=base.arch,
            preprocess=base.preprocess,
            num_classes=num_classes,
            num_features=width,
            class_names=class_names,
            weights_origin=base.weights_origin,
        )
        self.base_features = base.num_features
        self.bnneck = bool(bnneck)
        self.neck = _Neck(base.num_features, width, self.bnneck)
        self.head = PrototypeHead(num_classes, width)

    def embedding_config(self) -> dict[str, Any]:
        """What :func:`vitrina.runs.load_model` needs to rebuild this model."""
        return {"dim": self.num_features, "bnneck": self.bnneck}

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(raw, neck) features; metric losses use raw, identity losses and retrieval neck."""
        return self.neck(self.net.embed(x))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)[1]

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))

    def head_module(self) -> nn.Module:
        return self.head

    def _replace_head(self, num_classes: int) -> None:
        self.head = PrototypeHead(num_classes, self.num_features)

    @torch.no_grad()
    def set_prototypes(self, embeddings: torch.Tensor, labels: torch.Tensor) -> None:
        """Prototype of identity ``i`` = mean of its L2-normalised embeddings (zeros if none)."""
        e = F.normalize(embeddings.float(), dim=1)
        w = torch.zeros_like(self.head.weight)
        w.index_add_(0, labels.to(w.device), e.to(w.device))
        self.head.weight.copy_(w)
