"""Loss, miner and distance names, each with a builder and a one-line help.

Importing this module imports neither torch nor pytorch-metric-learning: builders import
them on first use, so ``--help`` can list :data:`LOSS_HELP` cheaply.

Distances (``distance=``): ``euclidean`` is pml's ``LpDistance`` on the *raw* embeddings
(``normalize_embeddings=False``), as ReID triplet losses use it; ``cosine`` is pml's
``CosineSimilarity`` (normalised, a similarity: larger = closer). CosFace and ArcFace are
always cosine and center loss always squared Euclidean, whatever ``distance`` says.

Default margins (``margin=None``); ``margin`` overrides the one margin of triplet losses,
quadruplet's α1 (α2 = α1/2) and contrastive's negative margin:

=============  ============  ===========================================
loss           euclidean     cosine
=============  ============  ===========================================
triplet*       0.3           0.2
quadruplet     0.3 / 0.15    0.2 / 0.1
*contrastive   pos 0, neg 1  pos 1, neg 0 (similarities, pml's advice)
=============  ============  ===========================================
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from vitrina.registry import Registry

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "DISTANCES",
    "LOSSES",
    "LOSS_HELP",
    "MINERS",
    "LossContext",
    "LossEntry",
    "MinerEntry",
    "default_triplet_margin",
    "distance_names",
    "loss_names",
    "make_distance",
    "make_miner",
    "miner_names",
]

Input = Literal["class", "metric"]


@dataclass(frozen=True)
class LossContext:
    """What a loss builder is given. ``miner`` is the effective miner name (``"none"``)."""

    num_classes: int | None
    embedding_dim: int | None
    distance: str
    margin: float | None
    miner: str
    label_smoothing: float


@dataclass(frozen=True)
class LossEntry:
    """A loss name: ``build(ctx) -> (module, description)``; ``input`` says which embeddings it
    takes ("class": after the BN-neck, "metric": before); ``takes_miner``: the ``miner``
    argument applies; ``own_miner``: a shortcut bundling that miner; ``pairs``: a Siamese
    loss over the sampled pairs of a pair batch (``--sampler pairs``)."""

    build: Callable[[LossContext], tuple[nn.Module, str]]
    input: Input
    help: str
    takes_miner: bool = False
    own_miner: str | None = None
    pairs: bool = False  # a Siamese loss: needs pair batches (--sampler pairs)


@dataclass(frozen=True)
class MinerEntry:
    """A miner name: ``build(distance, triplet_margin)`` -> a pml miner or ``None``."""

    build: Callable[[Any, float], Any]
    label: str  # how describe() names it
    help: str


LOSSES: Registry[LossEntry] = Registry("loss")
MINERS: Registry[MinerEntry] = Registry("miner")
DISTANCES: Registry[str] = Registry("distance")  # name -> help

DISTANCES.register("euclidean")("L2 distance of the raw (not normalised) embeddings")
DISTANCES.register("cosine")("cosine similarity (embeddings L2-normalised)")

_TRIPLET_MARGIN = {"euclidean": 0.3, "cosine": 0.2}
_CONTRASTIVE_MARGINS = {"euclidean": (0.0, 1.0), "cosine": (1.0, 0.0)}  # (pos, neg)


def default_triplet_margin(distance: str) -> float:
    """The triplet margin for ``distance`` when ``margin`` is ``None``."""
    DISTANCES.get(distance)
    return _TRIPLET_MARGIN[distance]


def make_distance(name: str) -> Any:
    """A fresh pml distance object for ``euclidean`` or ``cosine``."""
    DISTANCES.get(name)
    from pytorch_metric_learning.distances import CosineSimilarity, LpDistance

    if name == "cosine":
        return CosineSimilarity()
    return LpDistance(normalize_embeddings=False, p=2, power=1)


def make_miner(name: str, distance: str, triplet_margin: float) -> Any:
    """A fresh pml miner (``None`` for ``none``) mining with ``distance``."""
    return MINERS.get(name).build(make_distance(distance), triplet_margin)


def loss_names(pattern: str | None = None) -> list[str]:
    """Registered loss names (sorted; ``pattern`` filters with shell wildcards)."""
    return LOSSES.names(pattern)


def miner_names() -> list[str]:
    return MINERS.names()


def distance_names() -> list[str]:
    return DISTANCES.names()


def _register_loss(
    name: str,
    *,
    input: Input,
    help: str,
    takes_miner: bool = False,
    own_miner: str | None = None,
    pairs: bool = False,
) -> Callable[[Callable[[LossContext], tuple[nn.Module, str]]], Any]:
    def deco(build: Callable[[LossContext], tuple[nn.Module, str]]) -> Any:
        LOSSES.register(name)(LossEntry(build, input, help, takes_miner, own_miner, pairs))
        return build

    return deco


def _sizes(ctx: LossContext, loss: str) -> tuple[int, int]:
    if ctx.num_classes is None or ctx.embedding_dim is None:
        raise ValueError(f"loss {loss!r} needs num_classes and embedding_dim")
    return ctx.num_classes, ctx.embedding_dim


# ------------------------------------------------------------------------------ miners
def _no_miner(distance: Any, margin: float) -> None:
    return None


def _batch_hard(distance: Any, margin: float) -> Any:
    from pytorch_metric_learning.miners import BatchHardMiner

    return BatchHardMiner(distance=distance)


def _semi_hard(distance: Any, margin: float) -> Any:
    from pytorch_metric_learning.miners import TripletMarginMiner

    return TripletMarginMiner(margin=margin, type_of_triplets="semihard", distance=distance)


def _distance_weighted(distance: Any, margin: float) -> Any:
    # pml's DistanceWeightedMiner asserts L2 distance of L2-normalised embeddings (its
    # sampling weights are derived for points on the unit sphere): it mines on normalised
    # copies, whatever distance the loss itself uses.
    from pytorch_metric_learning.miners import DistanceWeightedMiner

    return DistanceWeightedMiner(cutoff=0.5, nonzero_loss_cutoff=1.4)


MINERS.register("none")(MinerEntry(_no_miner, "none", "no miner: all valid triplets or pairs"))
MINERS.register("batch-hard")(
    MinerEntry(_batch_hard, "batch-hard miner", "hardest positive and negative per anchor")
)
MINERS.register("semi-hard")(
    MinerEntry(
        _semi_hard, "semi-hard miner", "triplets whose negative is farther, within the margin"
    )
)
MINERS.register("distance-weighted")(
    MinerEntry(
        _distance_weighted,
        "distance-weighted miner",
        "negatives sampled by inverse distance density (Wu et al. 2017), on normalised embeddings",
    )
)


# ------------------------------------------------------------------------------ losses
@_register_loss(
    "softmax",
    input="class",
    help="cross-entropy over a linear classifier (label smoothing 0.1 by default)",
)
def _softmax(ctx: LossContext) -> tuple[nn.Module, str]:
    from vitrina.losses.softmax import SoftmaxLoss

    n, d = _sizes(ctx, "softmax")
    loss = SoftmaxLoss(d, n, label_smoothing=ctx.label_smoothing)
    return loss, f"softmax (label smoothing {loss.label_smoothing:g})"


@_register_loss(
    "triplet",
    input="metric",
    takes_miner=True,
    help="triplet margin loss; triplets from the miner (none: all valid triplets = batch-all)",
)
@_register_loss(
    "triplet-batch-hard",
    input="metric",
    own_miner="batch-hard",
    help="triplet loss, hardest positive and negative per anchor (Hermans et al. 2017)",
)
@_register_loss(
    "triplet-batch-all",
    input="metric",
    own_miner="none",
    help="triplet loss over all valid triplets, averaged over those with non-zero loss",
)
@_register_loss(
    "triplet-semi-hard",
    input="metric",
    own_miner="semi-hard",
    help="triplet loss over semi-hard triplets (FaceNet, Schroff et al. 2015)",
)
def _triplet(ctx: LossContext) -> tuple[nn.Module, str]:
    from pytorch_metric_learning.losses import TripletMarginLoss
    from pytorch_metric_learning.reducers import MeanReducer

    margin = _TRIPLET_MARGIN[ctx.distance] if ctx.margin is None else ctx.margin
    # Batch-hard averages over all anchors (Hermans et al., "Bag of Tricks"), so the loss
    # decays as anchors satisfy the margin; the others keep pml's average over non-zero.
    reducer = MeanReducer() if ctx.miner == "batch-hard" else None
    loss = TripletMarginLoss(margin=margin, distance=make_distance(ctx.distance), reducer=reducer)
    mined = "batch-all" if ctx.miner == "none" else MINERS.get(ctx.miner).label
    return loss, f"triplet ({mined}, margin {margin:g}, {ctx.distance})"


@_register_loss(
    "contrastive",
    input="metric",
    takes_miner=True,
    help="contrastive loss over pairs (all pairs, or the pairs of the miner's triplets)",
)
def _contrastive(ctx: LossContext) -> tuple[nn.Module, str]:
    from pytorch_metric_learning.losses import ContrastiveLoss

    pos, neg = _CONTRASTIVE_MARGINS[ctx.distance]
    neg = neg if ctx.margin is None else ctx.margin
    loss = ContrastiveLoss(pos_margin=pos, neg_margin=neg, distance=make_distance(ctx.distance))
    mined = "all pairs" if ctx.miner == "none" else MINERS.get(ctx.miner).label
    return loss, f"contrastive ({mined}, pos margin {pos:g}, neg margin {neg:g}, {ctx.distance})"


@_register_loss(
    "cosface",
    input="class",
    help="CosFace large-margin cosine softmax (margin 0.35, scale 64); owns its class weights",
)
def _cosface(ctx: LossContext) -> tuple[nn.Module, str]:
    from pytorch_metric_learning.losses import CosFaceLoss

    n, d = _sizes(ctx, "cosface")
    loss = CosFaceLoss(num_classes=n, embedding_size=d, margin=0.35, scale=64)
    return loss, f"cosface (margin {loss.margin:g}, scale {loss.scale:g}, cosine)"


@_register_loss(
    "arcface",
    input="class",
    help="ArcFace additive angular margin softmax (margin 28.6° = 0.5 rad, scale 64); owns its class weights",
)
def _arcface(ctx: LossContext) -> tuple[nn.Module, str]:
    from pytorch_metric_learning.losses import ArcFaceLoss

    n, d = _sizes(ctx, "arcface")
    loss = ArcFaceLoss(num_classes=n, embedding_size=d, margin=28.6, scale=64)
    return loss, f"arcface (margin 28.6°, scale {loss.scale:g}, cosine)"


@_register_loss(
    "quadruplet",
    input="metric",
    help="batch-hard quadruplet loss (Chen et al. 2017): triplet term + a pair of two other identities",
)
def _quadruplet(ctx: LossContext) -> tuple[nn.Module, str]:
    from vitrina.losses.quadruplet import QuadrupletLoss

    margin = _TRIPLET_MARGIN[ctx.distance] if ctx.margin is None else ctx.margin
    loss = QuadrupletLoss(margin=margin, distance=make_distance(ctx.distance))
    return loss, (
        f"quadruplet (batch-hard, margins {loss.margin:g}/{loss.margin2:g}, {ctx.distance})"
    )


@_register_loss(
    "center",
    input="metric",
    help="center loss (Wen et al. 2016): pull features to learned class centers; weight it small, e.g. 0.0005*center",
)
def _center(ctx: LossContext) -> tuple[nn.Module, str]:
    from vitrina.losses.center import CenterLoss

    n, d = _sizes(ctx, "center")
    return CenterLoss(num_classes=n, embedding_size=d), "center (squared euclidean)"


@_register_loss(
    "siamese-contrastive",
    input="metric",
    pairs=True,
    help="Siamese pairs: contrastive loss on the distance of each sampled pair only (needs --sampler pairs)",
)
def _siamese_contrastive(ctx: LossContext) -> tuple[nn.Module, str]:
    from vitrina.losses.siamese import SiameseContrastive

    pos, neg = _CONTRASTIVE_MARGINS[ctx.distance]
    neg = neg if ctx.margin is None else ctx.margin
    loss = SiameseContrastive(make_distance(ctx.distance), pos, neg)
    return loss, (
        f"siamese contrastive (sampled pairs, pos margin {pos:g}, neg margin {neg:g}, "
        f"{ctx.distance})"
    )


@_register_loss(
    "siamese-binary",
    input="metric",
    pairs=True,
    help="Siamese pairs: same/different logistic head on |a-b| (Koch et al. 2015; needs --sampler pairs)",
)
def _siamese_binary(ctx: LossContext) -> tuple[nn.Module, str]:
    from vitrina.losses.siamese import SiameseBinary

    if ctx.embedding_dim is None:
        raise ValueError("loss 'siamese-binary' needs embedding_dim")
    return SiameseBinary(ctx.embedding_dim), "siamese binary (same/different head on |a-b|)"


#: One line of help per loss name, for ``--help``.
LOSS_HELP: dict[str, str] = {name: LOSSES.get(name).help for name in LOSSES}
