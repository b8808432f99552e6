"""A training criterion from a spec string: ``"softmax+triplet-batch-hard"``, ``"triplet+0.5*center"``.

Grammar: terms joined by ``+``, each ``NAME`` or ``WEIGHT*NAME`` (spaces allowed, weight a
positive number); a name at most once. Names are those of :data:`~vitrina.losses.LOSSES`
(case and ``_``/``-`` forgiven).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from vitrina.errors import UnknownNameError, VitrinaError
from vitrina.losses.registry import (
    DISTANCES,
    LOSSES,
    MINERS,
    LossContext,
    default_triplet_margin,
    make_miner,
)

__all__ = ["Criterion", "LossTerm", "SpecTerm", "build_criterion", "parse_loss_spec"]


@dataclass(frozen=True)
class SpecTerm:
    """One ``WEIGHT*NAME`` of a loss spec."""

    name: str
    weight: float = 1.0


def parse_loss_spec(spec: str) -> list[SpecTerm]:
    """``"triplet + 0.5*center"`` -> ``[SpecTerm("triplet", 1.0), SpecTerm("center", 0.5)]``.

    Raises :class:`VitrinaError` (bad grammar, weight ≤ 0, a name twice) or
    :class:`UnknownNameError` (with the closest names), the spec shown in the message.
    """
    terms: list[SpecTerm] = []
    for raw in spec.split("+"):
        text = raw.strip()
        if not text:
            raise VitrinaError(
                f"loss spec {spec!r}: empty term (expected NAME or W*NAME joined by +)"
            )
        weight_text, star, name = text.rpartition("*")
        name = name.strip().lower().replace("_", "-")
        weight = 1.0
        if star:
            try:
                weight = float(weight_text)
            except ValueError:
                raise VitrinaError(
                    f"loss spec {spec!r}: bad weight {weight_text.strip()!r} in {text!r} "
                    "(expected W*NAME, e.g. 0.5*center)"
                ) from None
            if not (math.isfinite(weight) and weight > 0):
                raise VitrinaError(
                    f"loss spec {spec!r}: weight of {name!r} must be > 0, got {weight:g}"
                )
        if not name or not all(c.isalnum() or c == "-" for c in name):
            raise VitrinaError(f"loss spec {spec!r}: bad term {text!r} (expected NAME or W*NAME)")
        if name not in LOSSES:
            try:
                LOSSES.get(name)
            except UnknownNameError as e:
                raise UnknownNameError(f"loss spec {spec!r}: {e}") from None
        if any(t.name == name for t in terms):
            raise VitrinaError(f"loss spec {spec!r}: {name!r} appears twice")
        terms.append(SpecTerm(name, weight))
    return terms


class LossTerm(nn.Module):
    """One weighted loss of a :class:`Criterion`, with its miner and which embeddings it takes."""

    def __init__(
        self,
        name: str,
        weight: float,
        input: str,
        loss: nn.Module,
        miner: nn.Module | None,
        description: str,
    ) -> None:
        super().__init__()
        self.name, self.weight, self.input = name, weight, input
        self.loss, self.miner, self.description = loss, miner, description

    def forward(
        self, metric_emb: torch.Tensor, class_emb: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        emb = class_emb if self.input == "class" else metric_emb
        if self.miner is None:
            return self.loss(emb, labels)
        return self.loss(emb, labels, self.miner(emb, labels))


class Criterion(nn.Module):
    """A weighted sum of losses. Its parameters (softmax classifier, CosFace/ArcFace weights,
    centers) must be given to the optimizer along with the model's, and moved with ``.to()``.

    ``crit(metric_emb, class_emb, labels) -> (total, parts)``: ``metric_emb`` are the features
    before a BN-neck (for triplet*, contrastive, quadruplet, center), ``class_emb`` after it
    (for softmax, cosface, arcface); without a BN-neck pass the same tensor twice (or ``None``
    for ``class_emb``). ``parts`` maps each loss name to its *unweighted* value;
    ``total = Σ weight · part``. No NaN check and no state between calls.

    Shape: ``metric_emb`` (N, D), ``class_emb`` (N, D') or None, ``labels`` (N,) int.
    """

    def __init__(self, terms: list[LossTerm]) -> None:
        super().__init__()
        self.terms = nn.ModuleList(terms)

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.terms]

    def forward(
        self, metric_emb: torch.Tensor, class_emb: torch.Tensor | None, labels: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        class_emb = metric_emb if class_emb is None else class_emb
        for what, emb in (("metric_emb", metric_emb), ("class_emb", class_emb)):
            if emb.ndim != 2 or labels.ndim != 1 or len(emb) != len(labels):
                raise ValueError(
                    f"{what} must be (N, D) and labels (N,), got {tuple(emb.shape)} "
                    f"and {tuple(labels.shape)}"
                )
        parts = {t.name: t(metric_emb, class_emb, labels) for t in self.terms}
        total = sum(t.weight * parts[t.name] for t in self.terms)
        assert isinstance(total, torch.Tensor)
        return total, parts

    def describe(self) -> str:
        """One line, e.g. ``triplet (batch-hard miner, margin 0.3, euclidean) + 0.5 × center (...)``."""
        return " + ".join(
            t.description if t.weight == 1 else f"{t.weight:g} × {t.description}"
            for t in self.terms
        )

    def center_parameters(self) -> list[nn.Parameter]:
        """The center-loss centers (empty without ``center``), for their own learning rate."""
        return [
            p
            for t in self.terms
            if hasattr(t.loss, "center_parameters")
            for p in t.loss.center_parameters()
        ]


def build_criterion(
    spec: str,
    *,
    miner: str | None = "none",
    distance: str = "euclidean",
    num_classes: int | None = None,
    embedding_dim: int | None = None,
    margin: float | None = None,
    label_smoothing: float = 0.1,
) -> Criterion:
    """Build the :class:`Criterion` of ``spec`` (see :func:`parse_loss_spec`).

    ``miner`` (``none``, ``batch-hard``, ``semi-hard``, ``distance-weighted``) applies to
    ``triplet`` and ``contrastive``; with a shortcut that bundles its own miner
    (``triplet-batch-hard``...) or with no loss it applies to, it raises
    :class:`VitrinaError`. ``distance`` is ``euclidean`` (raw embeddings) or ``cosine``.
    ``margin=None`` keeps each loss's default (see :mod:`vitrina.losses.registry`).
    ``num_classes`` and ``embedding_dim`` are needed by softmax, cosface, arcface and center.
    """
    terms = parse_loss_spec(spec)
    DISTANCES.get(distance)
    miner = "none" if miner is None else miner
    MINERS.get(miner)
    if margin is not None and not (math.isfinite(margin) and margin >= 0):
        raise VitrinaError(f"loss spec {spec!r}: margin must be ≥ 0, got {margin:g}")
    entries = [(t, LOSSES.get(t.name)) for t in terms]
    if miner != "none":
        for t, e in entries:
            if e.own_miner is not None:
                raise VitrinaError(
                    f"loss spec {spec!r}: miner {miner!r} conflicts with {t.name!r}, which has "
                    f"its own ({e.own_miner}); use 'triplet' with miner {miner!r}, or no miner"
                )
        if not any(e.takes_miner for _, e in entries):
            raise VitrinaError(
                f"loss spec {spec!r}: miner {miner!r} has no effect with these losses "
                "(miners apply to triplet and contrastive)"
            )
    triplet_margin = default_triplet_margin(distance) if margin is None else margin
    built = []
    for t, e in entries:
        term_miner = e.own_miner or (miner if e.takes_miner else "none")
        ctx = LossContext(num_classes, embedding_dim, distance, margin, term_miner, label_smoothing)
        loss, description = e.build(ctx)
        mined = make_miner(term_miner, distance, triplet_margin)
        built.append(LossTerm(t.name, t.weight, e.input, loss, mined, description))
    return Criterion(built)
