"""An embedding model: a backbone, an embedding neck and a nearest-identity head.

``vitrina train-embedding`` trains one; its run folder is read by ``vitrina embed``,
``index``, ``search`` and ``evaluate-reid`` like any other, because it keeps the one model
contract (:class:`~vitrina.models.contract.VitrinaModel`)::

    features(x) -> (raw, neck)   raw: after the optional reduction Linear, before the BN-neck
    embed(x)    -> neck          what retrieval uses (BN-neck output; == raw without BN-neck)
    classify(x) -> logits        scaled cosine similarity to one prototype per training identity

With ``local_stripes=S`` (AlignedReID, Zhang et al. 2017) the model also has a local branch:
the backbone's last feature map is max-pooled into S horizontal stripes (top to bottom), each
reduced to ``local_dim`` channels by a 1x1 convolution + BN + ReLU and L2-normalised::

    local_features(x)   -> (B, S, local_dim)          stripes, unit length each
    aligned_features(x) -> (B, dim + S * local_dim)   [embed(x) | stripes flattened], one pass
    train_features(x)   -> (raw, neck, stripes)       what training needs, one pass

Stripes are compared by the shortest path through their distance matrix
(:mod:`vitrina.losses.aligned`, :mod:`vitrina.evaluate.aligned`), so a head matches a head
when a crop is shifted. A map with fewer rows than S gives repeated stripes (a 112-pixel-high
input has 4 rows on a stride-32 backbone).

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

__all__ = ["LOCAL_DIM", "PROTOTYPE_SCALE", "EmbeddingModel", "LocalBranch", "PrototypeHead"]

LOCAL_DIM = 128  # AlignedReID's local feature width

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


class LocalBranch(nn.Module):
    """AlignedReID's local branch: feature map ``(B, C, h, w)`` -> ``(B, S, dim)`` stripes.

    Each stripe is the max over its rows and every column (horizontal max pooling), then a
    1x1 convolution to ``dim`` channels, BN, ReLU, and L2 normalisation per stripe."""

    def __init__(self, in_channels: int, stripes: int, dim: int = LOCAL_DIM) -> None:
        super().__init__()
        self.stripes = int(stripes)
        self.reduce = nn.Sequential(
            nn.Conv2d(in_channels, dim, kernel_size=1, bias=False),
            nn.BatchNorm2d(dim),
            nn.ReLU(inplace=True),
        )
        nn.init.kaiming_normal_(self.reduce[0].weight, mode="fan_out")

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        pooled = F.adaptive_max_pool2d(fmap, (self.stripes, 1))  # (B, C, S, 1)
        y = self.reduce(pooled).squeeze(-1).transpose(1, 2)  # (B, S, dim)
        return F.normalize(y, dim=-1)


@torch.no_grad()
def _map_channels(base: VitrinaModel) -> int:
    """Channels of the backbone's feature map, from one forward pass in eval mode."""
    was = base.training
    base.eval()
    try:
        h, w = base.preprocess.input_size
        x = torch.zeros(1, base.preprocess.channels, h, w)
        p = next(base.parameters(), None)
        if p is not None:
            x = x.to(p.device)
        return int(base.embed_and_map(x)[1].shape[1])
    finally:
        base.train(was)


class EmbeddingModel(VitrinaModel):
    """``base`` (any vitrina model) + neck (``dim``; 0 keeps the backbone's width) + head.

    State-dict layout: ``net.*`` the backbone (a vitrina model itself), ``neck.*``, ``head.weight``.
    """

    _layout_prefixes = ("net", "neck", "head", "local")

    def __init__(
        self,
        base: VitrinaModel,
        *,
        dim: int = 0,
        bnneck: bool = True,
        num_classes: int = 1,
        class_names: list[str] | None = None,
        local_stripes: int = 0,
        local_dim: int = LOCAL_DIM,
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
        self.local_stripes = int(local_stripes)
        self.local_dim = int(local_dim)
        self.local: LocalBranch | None = None
        if self.local_stripes:
            self.local = LocalBranch(_map_channels(base), self.local_stripes, self.local_dim)

    def embedding_config(self) -> dict[str, Any]:
        """What :func:`vitrina.runs.load_model` needs to rebuild this model."""
        cfg: dict[str, Any] = {"dim": self.num_features, "bnneck": self.bnneck}
        if self.local_stripes:
            cfg.update(local_stripes=self.local_stripes, local_dim=self.local_dim)
        return cfg

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(raw, neck) features; metric losses use raw, identity losses and retrieval neck."""
        return self.neck(self.net.embed(x))

    def train_features(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(raw, neck, stripes) in one pass; stripes ``(B, S, local_dim)``, ``None`` without a
        local branch."""
        if self.local is None:
            return (*self.features(x), None)
        pooled, fmap = self.net.embed_and_map(x)
        raw, neck = self.neck(pooled)
        return raw, neck, self.local(fmap)

    def local_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, S, local_dim)`` L2-normalised stripes, top to bottom."""
        if self.local is None:
            from vitrina.errors import VitrinaError

            raise VitrinaError(f"{self.arch}: this embedding has no local stripes")
        return self.local(self.net.embed_and_map(x)[1])

    def aligned_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, num_features + S * local_dim)``: ``embed(x)`` then the stripes, flattened —
        one tensor from one pass, what the engine's aligned task splits again."""
        _, neck, stripes = self.train_features(x)
        if stripes is None:
            return neck
        return torch.cat([neck, stripes.flatten(1)], dim=1)

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
