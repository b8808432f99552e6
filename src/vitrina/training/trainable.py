"""How much of a pretrained backbone an embedding run trains, and why.

A backbone pretrained on ImageNet already embeds faces, people and products usefully; a few
dozen identities photographed by one camera are too few to move all its weights without
fitting those people and that camera. Measured on ORL faces with the softmax + triplet
loss (``benchmarks/embedding_transfer.py --recipes auto,last,all``: 30 training people, 10
never seen, as photographed and relit, shifted, rescaled and JPEG-compressed; mAP against
the frozen ImageNet backbone's 0.721 and
0.438): the neck only +0.9 and -1.5 points, the last stage(s) **+12.9 and +5.3**, everything
+9.3 and -19.1 (it fits the training camera). So ``auto`` trains the last stages until the
set is large, and the run says what it chose and why (the neck alone stays a choice,
``--trainable neck``):

=========  ==================================================================================
``neck``   the embedding neck (and the losses' weights) only; the backbone is frozen, BN too
``last``   the neck and the backbone's last stage(s): the trailing stages holding at most a
           third of its weights (at least one stage); earlier stages frozen, BN too
``all``    every weight
=========  ==================================================================================

``auto`` picks by the training set (:func:`choose_trainable`). A backbone's *stages* are
timm's coarse parameter groups (``group_matcher``) where the model has them, otherwise its
top-level children, descending into a child that holds most of the weights (torchvision's
``features``); see :func:`backbone_stages`.

``layer_decay`` < 1 additionally gives each trained stage ``layer_decay`` times the learning
rate of the stage after it (layer-wise learning-rate decay): early layers move least.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from vitrina.errors import VitrinaError

__all__ = [
    "AUTO_RULE",
    "TRAINABLE",
    "TrainablePlan",
    "backbone_stages",
    "choose_trainable",
    "plan_trainable",
]

TRAINABLE = ("auto", "neck", "last", "all")

#: ``auto``: (choice, fewer than this many training identities, or fewer than this many
#: training photos); the first row that applies wins, else ``all``. (Until 2026-12 small sets
#: trained the neck only: measured since, the last stages beat it on both test sets.)
AUTO_RULE: tuple[tuple[str, int, int], ...] = (("last", 1_000, 20_000),)


@dataclass
class TrainablePlan:
    """What trains: ``choice`` (neck, last, all), ``reason`` (one line for the run's report),
    ``stages`` (backbone parameter names per stage, input side first) and ``trained_stages``
    (how many trailing stages train)."""

    choice: str
    reason: str
    stages: list[list[str]] = field(default_factory=list)
    trained_stages: int = 0

    @property
    def trained_names(self) -> set[str]:
        n = self.trained_stages
        return {p for stage in (self.stages[-n:] if n else []) for p in stage}

    def to_dict(self) -> dict[str, Any]:
        return {
            "choice": self.choice,
            "reason": self.reason,
            "backbone_stages": len(self.stages),
            "trained_stages": self.trained_stages,
        }


def choose_trainable(identities: int, images: int) -> tuple[str, str]:
    """``(choice, reason)`` of ``auto`` for a training set of ``identities`` people with
    ``images`` photos (see :data:`AUTO_RULE`)."""
    for choice, max_ids, max_images in AUTO_RULE:
        if identities < max_ids or images < max_images:
            return choice, (
                f"auto: {identities} training identities, {images} photos: fewer than "
                f"{max_ids} identities or {max_images:,} photos"
            )
    last_ids, last_images = AUTO_RULE[-1][1:]
    return "all", (
        f"auto: {identities} training identities, {images} photos: at least {last_ids} "
        f"identities and {last_images:,} photos"
    )


def _timm_stages(net: nn.Module) -> list[list[str]] | None:
    matcher = getattr(net, "group_matcher", None)
    if not callable(matcher):
        return None
    try:
        from timm.models import group_parameters

        groups = group_parameters(net, matcher(coarse=True))
    except Exception:  # a model whose matcher does not cover it: use the generic split
        return None
    return [list(names) for _, names in sorted(groups.items())]


def _with_params(module: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in module.named_children() if any(True for _ in m.parameters())]


def _children_stages(net: nn.Module, min_stages: int = 4) -> list[list[str]]:
    """The network's children with parameters, in registration order; while there are fewer
    than ``min_stages``, the largest one made of several children is split into them (so
    torchvision's ``features`` becomes its blocks, a ResNet stays conv1 .. layer4)."""
    nodes: list[tuple[str, nn.Module]] = [(n, m) for n, m in _with_params(net)]
    own = [n for n, _ in net.named_parameters(recurse=False)]

    def size(m: nn.Module) -> int:
        return sum(p.numel() for p in m.parameters())

    while len(nodes) < min_stages:
        splittable = [i for i, (_, m) in enumerate(nodes) if len(_with_params(m)) > 1]
        if not splittable:
            break
        i = max(splittable, key=lambda j: size(nodes[j][1]))
        name, m = nodes[i]
        nodes[i : i + 1] = [(f"{name}.{n}", c) for n, c in _with_params(m)]
    stages = [own] if own else []
    stages += [[f"{name}.{n}" for n, _ in m.named_parameters()] for name, m in nodes]
    return [s for s in stages if s]


def backbone_stages(backbone: nn.Module) -> list[list[str]]:
    """Parameter names of ``backbone`` (a vitrina model) per stage, input side first; every
    parameter in exactly one stage. Names are ``backbone.named_parameters()``'s."""
    net = getattr(backbone, "net", backbone)
    prefix = "net." if net is not backbone else ""
    stages = _timm_stages(net)
    if stages is None:
        stages = _children_stages(net)
    stages = [[f"{prefix}{n}" for n in s] for s in stages]
    names = [n for n, _ in backbone.named_parameters()]
    covered = {n for s in stages for n in s}
    rest = [n for n in names if n not in covered]  # e.g. a head kept beside the network
    stages = [[n for n in s if n in set(names)] for s in stages]
    stages = [s for s in stages if s]
    if rest:
        stages.append(rest)
    return stages


def _last_count(stages: list[list[str]], sizes: dict[str, int]) -> int:
    total = sum(sizes[n] for s in stages for n in s) or 1
    n, held = 0, 0
    for stage in reversed(stages):
        size = sum(sizes[p] for p in stage)
        if n and held + size > total / 3:
            break
        n, held = n + 1, held + size
    return n


def plan_trainable(
    backbone: nn.Module,
    trainable: str,
    *,
    identities: int,
    images: int,
    pretrained: bool = True,
    new_layers_learn: bool = True,
) -> TrainablePlan:
    """The plan for ``trainable`` (``auto``, ``neck``, ``last``, ``all``) on ``backbone``;
    ``auto`` trains everything of a backbone with random weights (``pretrained=False``).

    ``new_layers_learn``: whether the layers added to the backbone have weights the loss
    trains (a reduction layer, a loss with weights). Without them a frozen backbone trains
    nothing: ``auto`` then trains the last stages instead, and ``neck`` is refused."""
    if trainable == "auto" and not pretrained:
        choice, reason = "all", "auto: the backbone starts from random weights, so all of it trains"
    elif trainable == "auto":
        choice, reason = choose_trainable(identities, images)
        if choice == "neck" and not new_layers_learn:
            choice = "last"
            reason += (
                "; but with no reduction layer (--dim 0) and a loss without weights of its own "
                "the neck has nothing to learn, so the last backbone stages train"
            )
    else:
        choice, reason = trainable, f"--trainable {trainable}"
    if choice == "neck" and not new_layers_learn:
        raise VitrinaError(
            "--trainable neck freezes the backbone, and with no reduction layer (--dim 0) and a "
            "loss without weights of its own (triplet, contrastive...) nothing would train: give "
            "--dim (e.g. 256), add an identity loss (softmax+triplet-batch-hard), or train "
            "--trainable last"
        )
    stages = backbone_stages(backbone)
    sizes = {n: p.numel() for n, p in backbone.named_parameters()}
    count = {"neck": 0, "all": len(stages)}.get(choice)
    if count is None:
        count = _last_count(stages, sizes)
    plan = TrainablePlan(choice, reason, stages, count)
    trained = sum(sizes[n] for n in plan.trained_names)
    if choice == "last":
        first = re.sub(r"\.(weight|bias)$", "", stages[-count][0]) if stages else ""
        plan.reason += (
            f"; the last {count} of {len(stages)} backbone stages train ({trained / 1e6:.2f}M of "
            f"{sum(sizes.values()) / 1e6:.2f}M weights, from {first})"
        )
    return plan
