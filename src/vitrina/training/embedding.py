"""Train an embedding (metric learning) on an identity dataset and leave a run folder behind.

The recipe is the one face recognition and person re-identification share: a backbone, an
embedding neck (:class:`~vitrina.models.embedding.EmbeddingModel`), P×K batches (P identities
× K images each, so every batch holds positives and negatives), and a loss — or a weighted sum
of losses — built by name by :func:`vitrina.losses.build_criterion`.

Model selection is by retrieval mAP on held-out *identities* (never images of a training
identity: the job is to embed people the model has not seen), or, with ``val_dir``, on another
folder of identities (another camera, another day), which then also picks the recipe (how
much of the backbone trains, :mod:`vitrina.training.trainable`). The run always measures the
*starting* weights on the same identities and says plainly when training did not beat them.
After training, the run folder also gets verification figures (ROC, EER, TAR@FAR) on the
held-out identities and the distance threshold for a target false-accept rate, in
``vitrina.json`` → ``thresholds``.

With ``local_stripes`` the model also learns AlignedReID's local stripe features (the local
triplet loss on triplets mined by the global distance, :mod:`vitrina.losses.aligned`), and
with ``mutual`` two networks learn together (mutual learning), the first one kept.
"""

from __future__ import annotations

import copy
import random
import shutil
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from vitrina.data import ImageFiles, collate_skip_bad, eval_transform
from vitrina.data.transforms import AUGMENTS, REID_AUGMENTS, reid_train_transform
from vitrina.engine import Embedding, Engine, resolve_device, torch_threads
from vitrina.errors import DataError, RunFolderError, VitrinaError
from vitrina.evaluate.retrieval import loo_retrieval
from vitrina.models import Preprocess, VitrinaModel, check_input_size, create
from vitrina.models.embedding import EmbeddingModel
from vitrina.registry import suggest
from vitrina.runs import RunInfo, is_run_dir, load_model, read_run, save_run
from vitrina.training.callbacks import (
    BestCheckpoint,
    EarlyStopping,
    MetricsLog,
    ProgressBar,
    ResumePoint,
)
from vitrina.training.checkpoint import (
    CKPT_DIR,
    best_metrics,
    load_resume_point,
    resume_saver,
)
from vitrina.training.classification import prepare_out
from vitrina.training.distributed import (
    Dist,
    DistributedTask,
    GlobalFigures,
    session,
    shard_loader,
)
from vitrina.training.feeding import decoding_metrics, training_loader
from vitrina.training.layout import choose_memory_format, to_layout
from vitrina.training.loop import Callback, LoopState, StepOutput, fit
from vitrina.training.loss_choice import AUTO_LOSS, choose_loss, default_epochs
from vitrina.training.precision import (
    check_precision,
    choose_precision,
    loss_dtype,
    model_dtype,
    param_dtype,
    record_precision,
)
from vitrina.training.trainable import TRAINABLE, TrainablePlan, plan_trainable

__all__ = [
    "EmbeddingConfig",
    "EmbeddingResult",
    "EmbeddingTask",
    "NonFiniteLossError",
    "train_embedding",
]

DISTANCES = ("euclidean", "cosine")
EMBED_AUGMENTS = (*REID_AUGMENTS, *AUGMENTS)
#: Batch samplers: ``pk`` (P identities x K images: every pair and triplet of the batch) or
#: ``pairs`` (balanced same / different Siamese pairs, for the siamese-* losses).
SAMPLERS = ("pk", "pairs")


class NonFiniteLossError(VitrinaError):
    """The loss became NaN or infinite; training stopped, the last good checkpoint is kept."""


@dataclass
class EmbeddingConfig:
    """Options of ``vitrina train-embedding``.

    loss: a loss name or a weighted sum (``softmax+triplet-batch-hard``, ``triplet+0.5*center``;
        see :func:`vitrina.losses.loss_names`), or ``auto``: ArcFace for aligned face chips
        (a folder written by ``vitrina faces chips``), softmax + batch-hard triplet otherwise
        (:mod:`vitrina.training.loss_choice`; the run records which and why).
    epochs: ``None``: chosen with the loss (:func:`vitrina.training.loss_choice.default_epochs`:
        40 with an ArcFace term, which learns slowly, 20 otherwise).
    dim: embedding size; 0 keeps the backbone's feature width (no reduction layer).
    bnneck: batch-norm neck between metric and identity losses (see
        :mod:`vitrina.models.embedding`).
    p, k: identities per batch and images per identity; ``p=None``: 8, or every training
        identity when there are fewer.
    input_size: ``(height, width)``; ``None`` keeps the backbone's (224 x 224 for most).
    lr: learning rate of the backbone; the new layers (neck, loss weights) learn
        ``head_lr_mult`` times faster.
    val_fraction: share of identities held out for model selection and threshold calibration
        (at least 2 identities, else no validation: the last epoch is kept).
    sampler: ``pk`` or ``pairs`` (Siamese pairs, ``p * k / 2`` of them per batch: the same
        number of images); the ``siamese-*`` losses need ``pairs``.
    trainable: how much of the backbone trains: ``neck`` (backbone frozen), ``last`` (its last
        stage(s)), ``all``, or ``auto``: chosen from the number of training identities and
        photos (:func:`vitrina.training.trainable.choose_trainable`; the run says which and
        why). ``freeze_backbone`` is the older spelling of ``trainable="neck"``.
    layer_decay: < 1: each trained backbone stage learns ``layer_decay`` x as fast as the next.
    val_dir: another folder of identities (another camera, another day); its leave-one-out
        mAP picks the epoch and, with ``trainable="auto"``, the recipe (neck, last and all are
        each trained, the best kept).
    local_stripes: > 0 adds AlignedReID's local branch with this many horizontal stripes of
        ``local_dim`` channels, learned jointly (the local triplet loss on the triplets the
        global distance mines); ``evaluate-reid`` then scores global, local and combined.
    mutual: mutual learning (AlignedReID): a second network trains beside the first, each
        learning from the other's identity probabilities and distance matrices (2x the cost).
    """

    data_dir: str
    arch: str = "efficientnet_lite0"
    weights: str | None = "imagenet"
    loss: str = AUTO_LOSS
    miner: str = "none"
    distance: str = "euclidean"
    margin: float | None = None
    dim: int = 0
    bnneck: bool = True
    p: int | None = None
    k: int = 4
    sampler: str = field(
        default="pk",
        metadata={
            "help": "pk: P identities x K images per batch (every pair and triplet in it); "
            "pairs: balanced same/different Siamese pairs (p*k/2 per batch), for the "
            "siamese-contrastive and siamese-binary losses."
        },
    )
    epochs: int | None = None
    lr: float = 3e-4
    head_lr_mult: float = 10.0
    weight_decay: float = 5e-4
    freeze_backbone: bool = False
    trainable: str = "auto"
    layer_decay: float = 1.0
    input_size: tuple[int, int] | None = None
    augment: str = "reid"
    precision: str = field(
        default="fp32",
        metadata={
            "help": "fp64, fp32, bf16 (autocast) or auto (bf16 where it measures faster, else "
            "fp32); the run stores fp32 weights."
        },
    )
    val_fraction: float = 0.2
    val_dir: str | None = None
    local_stripes: int = 0
    local_dim: int = 128
    mutual: bool = False
    target_far: float = 1e-2
    patience: int = 0
    seed: int = 0
    out: str | None = None
    num_workers: int | None = None
    device: str = "auto"

    def resolved(self) -> EmbeddingConfig:
        c = EmbeddingConfig(**asdict(self))
        loss = c.chosen_loss()[0]
        if c.weights in ("none", ""):
            c.weights = None
        if c.distance not in DISTANCES:
            raise VitrinaError(
                f"--distance {c.distance!r} is not one of {', '.join(DISTANCES)}"
                f"{suggest(c.distance, list(DISTANCES))}"
            )
        if c.augment not in EMBED_AUGMENTS:
            raise VitrinaError(
                f"--augment {c.augment!r} is not one of {', '.join(EMBED_AUGMENTS)}"
                f"{suggest(c.augment, list(EMBED_AUGMENTS))}"
            )
        if c.sampler not in SAMPLERS:
            raise VitrinaError(
                f"--sampler {c.sampler!r} is not one of {', '.join(SAMPLERS)}"
                f"{suggest(c.sampler, list(SAMPLERS))}"
            )
        from vitrina.losses import LOSSES, build_criterion, parse_loss_spec

        pair_losses = [t.name for t in parse_loss_spec(loss) if LOSSES.get(t.name).pairs]
        if pair_losses and c.sampler != "pairs":
            raise VitrinaError(
                f"--loss {pair_losses[0]} learns from Siamese pairs: add --sampler pairs"
            )
        if c.sampler == "pairs" and not pair_losses:
            raise VitrinaError(
                "--sampler pairs gives Siamese pair batches: use a pair loss "
                "(--loss siamese-contrastive or siamese-binary)"
            )
        # Fail on a bad loss spec, miner or margin now, not after reading the data.
        build_criterion(
            loss,
            miner=c.miner,
            distance=c.distance,
            num_classes=2,
            embedding_dim=2,
            margin=c.margin,
        )
        check_precision(c.precision)
        if c.trainable not in TRAINABLE:
            raise VitrinaError(
                f"--trainable {c.trainable!r} is not one of {', '.join(TRAINABLE)}"
                f"{suggest(c.trainable, list(TRAINABLE))}"
            )
        if c.freeze_backbone:
            if c.trainable not in ("auto", "neck"):
                raise VitrinaError(
                    f"--freeze-backbone trains the neck only; it contradicts --trainable "
                    f"{c.trainable} (give one of the two)"
                )
            c.trainable = "neck"
        if c.val_dir in ("", "none"):
            c.val_dir = None
        if c.epochs is None:
            c.epochs = default_epochs(loss)
        for name, value, ok in (
            ("epochs", c.epochs, c.epochs >= 1),
            ("p", c.p, c.p is None or c.p >= 2),
            ("k", c.k, c.k >= 2),
            ("lr", c.lr, c.lr > 0),
            ("dim", c.dim, c.dim >= 0),
            ("val-fraction", c.val_fraction, 0 <= c.val_fraction < 1),
            ("target-far", c.target_far, 0 < c.target_far < 1),
            ("layer-decay", c.layer_decay, 0 < c.layer_decay <= 1),
            ("local-stripes", c.local_stripes, 0 <= c.local_stripes <= 64),
            ("local-dim", c.local_dim, c.local_dim >= 1),
        ):
            if not ok:
                raise VitrinaError(f"--{name} {value} is out of range")
        if c.input_size is not None:
            c.input_size = (int(c.input_size[0]), int(c.input_size[1]))
            if min(c.input_size) < 16:
                raise VitrinaError(f"--input-size {c.input_size} is too small (min 16)")
            check_input_size(c.arch, c.input_size)  # a fixed-size network: before any work
        if c.out is None:
            tag = loss.replace("*", "x").replace("+", "_").replace(" ", "")
            c.out = str(Path("runs") / f"{Path(c.data_dir).resolve().name}-{c.arch}-{tag}")
        return c

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_size"] = list(self.input_size) if self.input_size else None
        return d

    def chosen_loss(self) -> tuple[str, str]:
        """``(loss, reason)``: ``auto`` resolved for this training folder
        (:func:`vitrina.training.loss_choice.choose_loss`), or the loss given."""
        if self.loss == AUTO_LOSS:
            return choose_loss(self.data_dir)
        return self.loss, f"--loss {self.loss}"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EmbeddingConfig:
        """A config as stored in a run's ``vitrina.json``; fields it lacks get their defaults,
        except ``trainable``: a run from before it existed trained what ``freeze_backbone``
        said (the neck, or everything), and resuming it must train the same."""
        known = {f.name for f in fields(cls)}
        d = dict(d)
        if "trainable" not in d:
            d["trainable"] = "neck" if d.get("freeze_backbone") else "all"
        c = cls(**{k: v for k, v in d.items() if k in known})
        if c.input_size is not None:
            c.input_size = (int(c.input_size[0]), int(c.input_size[1]))
        return c


@dataclass
class EmbeddingResult:
    run_dir: Path
    identities: int
    best_epoch: int
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    dropped_singletons: int = 0
    bad_files: list[str] = field(default_factory=list)
    #: the starting weights' figures on the same identities (``val_mAP``, ``valdir_mAP``...)
    start: dict[str, float] = field(default_factory=dict)
    #: what trained and why (:meth:`vitrina.training.trainable.TrainablePlan.to_dict`)
    trainable: dict[str, Any] = field(default_factory=dict)
    #: one line per comparison of trained vs starting weights; plain about a loss
    verdict: list[str] = field(default_factory=list)
    #: with ``val_dir`` and ``trainable="auto"``: each recipe's best figures
    recipes: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: under torchrun: this process's rank (rank 0 wrote the run folder and has the figures)
    rank: int = 0

    @property
    def beat_start(self) -> bool:
        """Whether training beat the starting weights on every set both were measured on."""
        return bool(self.metrics.get("beat_start", True))


class EmbeddingTask:
    """Loss of a P×K batch through the criterion; validation = leave-one-out retrieval.

    With a local branch the local triplet loss (triplets mined by the global distance) is
    added; with a ``peer`` (mutual learning) both networks' losses and their mutual terms."""

    def __init__(
        self,
        criterion: nn.Module,
        *,
        freeze_backbone: bool = False,
        frozen: list[nn.Module] | None = None,
        local_loss: nn.Module | None = None,
        peer: _Peer | None = None,
    ) -> None:
        self.criterion = criterion
        self.freeze_backbone = freeze_backbone
        self.frozen = list(frozen or [])
        self.local_loss = local_loss
        self.peer = peer
        self.epoch = 0
        self.batch = 0
        self.last_parts: dict[str, float] = {}
        self.val_embeddings: tuple[np.ndarray, np.ndarray] | None = None

    def set_train_mode(self, model: nn.Module) -> None:
        model.train()
        self.criterion.train()
        if self.freeze_backbone:
            model.net.eval()  # type: ignore[union-attr]
        for m in self.frozen:
            m.eval()
        if self.peer is not None:
            self.peer.train()
        self.epoch += 1
        self.batch = 0

    def _losses(
        self, model: nn.Module, criterion: nn.Module, batch: Any
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], _Outputs]:
        raw, neck, stripes = model.train_features(batch.images)  # type: ignore[operator]
        raw, neck = loss_dtype(raw), loss_dtype(neck)
        total, parts = criterion(raw, neck, batch.labels)
        parts = dict(parts)
        local_dist = None
        if stripes is not None and self.local_loss is not None:
            from vitrina.losses.aligned import local_distance_matrix

            local_dist = local_distance_matrix(loss_dtype(stripes))
            parts["local"] = self.local_loss(raw.detach(), stripes, batch.labels, local_dist)
            total = total + parts["local"]
        return total, parts, _Outputs(raw, neck, local_dist)

    def step(self, model: nn.Module, batch: Any) -> StepOutput:
        self.batch += 1
        total, parts, mine = self._losses(model, self.criterion, batch)
        if self.peer is not None:
            p_total, p_parts, theirs = self._losses(self.peer.model, self.peer.criterion, batch)
            mutual = _mutual_loss(self.criterion, mine, self.peer.criterion, theirs)
            parts.update({f"peer_{k}": v for k, v in p_parts.items()})
            parts["mutual"] = mutual
            total = total + p_total + mutual
        if not torch.isfinite(total):
            shown = ", ".join(f"{k} {float(v.detach()):.4g}" for k, v in parts.items())
            raise NonFiniteLossError(
                f"the loss became {float(total.detach())} at epoch {self.epoch}, batch {self.batch} "
                f"({shown}); training stopped"
            )
        self.last_parts = {k: float(v.detach()) for k, v in parts.items()}
        return StepOutput(total, len(batch.labels), None)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: Any) -> dict[str, float]:
        """Leave-one-out retrieval on ``loader``'s identities: ``val_mAP``, ``val_rank1``,
        ``val_rank5`` (global vectors); with stripes also ``val_mAP_local`` and
        ``val_mAP_combined``."""
        model.eval()
        device = next(model.parameters()).device
        return _loo_figures(_aligned_embed(model), loader, device, self)


@dataclass
class _Outputs:
    raw: torch.Tensor
    neck: torch.Tensor
    local_dist: torch.Tensor | None


class _Peer(nn.Module):
    """The second network of mutual learning, its criterion and what stays frozen in it."""

    def __init__(self, model: EmbeddingModel, criterion: nn.Module, frozen: list[nn.Module]):
        super().__init__()
        self.model = model
        self.criterion = criterion
        self.frozen = frozen

    def train(self, mode: bool = True) -> _Peer:
        super().train(mode)
        if mode:
            for m in self.frozen:
                m.eval()
        return self


def _identity_logits(criterion: nn.Module, class_emb: torch.Tensor) -> torch.Tensor | None:
    """Identity logits of the criterion's first classification term (softmax, CosFace,
    ArcFace), or ``None`` when it has none."""
    for term in getattr(criterion, "terms", []):
        if term.input != "class":
            continue
        for name in ("logits", "get_logits"):
            fn = getattr(term.loss, name, None)
            if callable(fn):
                return fn(class_emb)
    return None


def _mutual_loss(crit_a: nn.Module, a: _Outputs, crit_b: nn.Module, b: _Outputs) -> torch.Tensor:
    """AlignedReID's mutual learning, both directions: KL of the identity probabilities (when
    the loss has an identity classifier), and the metric mutual loss on the global distance
    matrices (and the local ones with stripes)."""
    from vitrina.losses.aligned import mutual_metric_loss, mutual_probability_loss

    total = mutual_metric_loss(torch.cdist(a.raw, a.raw), torch.cdist(b.raw, b.raw))
    total = total + mutual_metric_loss(torch.cdist(b.raw, b.raw), torch.cdist(a.raw, a.raw))
    la, lb = _identity_logits(crit_a, a.neck), _identity_logits(crit_b, b.neck)
    if la is not None and lb is not None:
        total = total + mutual_probability_loss(la, lb) + mutual_probability_loss(lb, la)
    if a.local_dist is not None and b.local_dist is not None:
        total = total + mutual_metric_loss(a.local_dist, b.local_dist)
        total = total + mutual_metric_loss(b.local_dist, a.local_dist)
    return total


def _aligned_embed(model: nn.Module) -> Any:
    """``x -> (global (B, D), stripes (B, S, Dl) or None)`` of an embedding model."""

    def run(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = x.to(model_dtype(model))  # fp64 runs take float64 inputs
        if getattr(model, "local", None) is None:
            return model.embed(x), None  # type: ignore[operator]
        _, neck, stripes = model.train_features(x)  # type: ignore[operator]
        return neck, stripes

    return run


def _loo_figures(
    embed: Any, loader: Any, device: torch.device, task: EmbeddingTask | None = None
) -> dict[str, float]:
    """Leave-one-out retrieval figures of ``embed`` over ``loader`` (see
    :meth:`EmbeddingTask.evaluate`)."""
    feats, stripes, labels = [], [], []
    for batch in loader:
        if batch.images.numel() == 0:
            continue
        g, s = embed(batch.images.to(device))
        feats.append(g.float().cpu())
        if s is not None:
            stripes.append(s.float().cpu())
        labels.append(batch.labels)
    if not feats:
        return {}
    x = torch.cat(feats).numpy()
    y = torch.cat(labels).numpy()
    if task is not None:
        task.val_embeddings = (x, y)
    out = loo_retrieval(x, y)
    if stripes:
        from vitrina.evaluate.aligned import combined_distances, local_distances
        from vitrina.evaluate.reid import reid_distances
        from vitrina.evaluate.retrieval import relevance, retrieval_metrics

        xn = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        local = local_distances(torch.cat(stripes).numpy(), torch.cat(stripes).numpy())
        glob = reid_distances(xn, xn, "euclidean")
        eye = np.eye(len(y), dtype=bool)
        for name, d in (("local", local), ("combined", combined_distances(glob, local))):
            rep = retrieval_metrics(d, relevance(y, y), higher_is_better=False, exclude=eye)
            out[f"val_mAP_{name}"] = rep.mAP
    return out


class _Shuffle(Callback):
    """Re-seed the P×K sampler from (seed, epoch): a resumed run sees the same batches."""

    def __init__(self, sampler: Any) -> None:
        self.sampler = sampler

    def on_epoch_start(self, state: LoopState) -> None:
        self.sampler.set_epoch(state.epoch)


class _ValDir(Callback):
    """After each epoch, leave-one-out retrieval on ``--val-dir``: ``valdir_mAP``... in the
    epoch's record (before :class:`BestCheckpoint` reads it: it then picks by them)."""

    def __init__(self, task: EmbeddingTask, model: nn.Module, loader: Any) -> None:
        self.task, self.model, self.loader = task, model, loader

    def on_epoch_end(self, state: LoopState, record: dict[str, Any]) -> None:
        kept = self.task.val_embeddings
        figures = self.task.evaluate(self.model, _recorded(self.loader, state))
        self.task.val_embeddings = kept  # the held-out identities' vectors, for calibration
        record.update({f"valdir_{k[4:]}": v for k, v in figures.items()})


def _recorded(loader: Any, state: LoopState) -> Any:
    for batch in loader:
        for idx, msg in batch.errors:
            state.bad_files.setdefault(msg.split(":", 1)[0] if ":" in msg else str(idx), msg)
        yield batch


def _split_identities(labels: list[int], fraction: float, seed: int) -> tuple[set[int], set[int]]:
    ids = sorted(set(labels))
    n_val = round(len(ids) * fraction)
    if fraction <= 0 or n_val < 2 or len(ids) - n_val < 2:
        return set(ids), set()
    rng = random.Random(seed)
    val = set(rng.sample(ids, n_val))
    return set(ids) - val, val


def _backbone(cfg: EmbeddingConfig) -> tuple[VitrinaModel, EmbeddingModel | None]:
    """(base model, the embedding run it came from if any)."""
    if cfg.weights and is_run_dir(cfg.weights):
        m = load_model(cfg.weights)
        if isinstance(m, EmbeddingModel):
            return m.net, m  # type: ignore[return-value]
        return m, None
    return create(cfg.arch, weights=cfg.weights), None


def _preprocess(model: VitrinaModel, size: tuple[int, int] | None) -> Preprocess:
    pre = model.preprocess
    pre.check_size(size, model.arch)  # a fixed-size network (e.g. from a run folder): one line
    if size is None:
        return pre
    # A chosen size is the size of the crops (person boxes, faces): resize, no center crop.
    return Preprocess(
        input_size=size,
        channels=pre.channels,
        mean=pre.mean,
        std=pre.std,
        crop_pct=1.0,
        interpolation=pre.interpolation,
    )


def _loader(
    paths: list[Path],
    labels: list[int],
    transform: Any,
    cfg: EmbeddingConfig,
    device: torch.device,
    **kw: Any,
) -> DataLoader:
    ds = ImageFiles(paths, labels, transform)
    return training_loader(
        ds, num_workers=cfg.num_workers, device=device, collate_fn=collate_skip_bad, **kw
    )


@dataclass
class _Data:
    """The identities a run trains and validates on, read once for every recipe."""

    root: Path
    ids: Any
    images: list[Any]
    train_ids: set[int]
    val_ids: set[int]
    train_imgs: list[Any]
    val_imgs: list[Any]
    names: list[str]
    train_labels: list[int]
    valdir_imgs: list[Any]

    @classmethod
    def read(cls, cfg: EmbeddingConfig) -> _Data:
        from vitrina.data.identities import scan_identities

        root = Path(cfg.data_dir)
        ids = scan_identities(root)
        images = ids.train
        if not images:
            raise DataError(f"{root}: no training images found")
        train_ids, val_ids = _split_identities(
            [im.label for im in images], cfg.val_fraction, cfg.seed
        )
        train_imgs = [im for im in images if im.label in train_ids]
        val_imgs = [im for im in images if im.label in val_ids]
        # Training labels 0..n-1 over the training identities only.
        remap = {old: new for new, old in enumerate(sorted(train_ids))}
        names = [ids.names[old] for old in sorted(train_ids)]
        train_labels = [remap[im.label] for im in train_imgs]
        valdir = _read_val_dir(Path(cfg.val_dir), root) if cfg.val_dir else []
        return cls(
            root, ids, images, train_ids, val_ids, train_imgs, val_imgs, names, train_labels, valdir
        )


def _read_val_dir(folder: Path, data_root: Path) -> list[Any]:
    """Every image of a folder of identities (folders or Market-1501: all splits), labelled by
    identity; at least 2 identities with 2 photos, else :class:`DataError`."""
    from vitrina.data.identities import IdentityImage, scan_identities

    if folder.resolve() == data_root.resolve():
        raise DataError(f"--val-dir {folder}: is the training folder itself; give other people")
    ids = scan_identities(folder)
    every = ids.train + ids.query + [im for im in ids.gallery if im.pid > 0]
    images = [IdentityImage(im.path, im.pid, im.camid, im.pid) for im in every]
    counts: dict[int, int] = {}
    for im in images:
        counts[im.label] = counts.get(im.label, 0) + 1
    if sum(1 for n in counts.values() if n >= 2) < 2:
        raise DataError(
            f"--val-dir {folder}: needs at least 2 identities with 2 or more photos each "
            "(every photo queries the others)"
        )
    return images


def _new_layers_learn(model: EmbeddingModel, criterion: nn.Module) -> bool:
    """Whether the layers added to the backbone give the loss anything to learn: a reduction
    layer (``--dim``), a loss with weights of its own (softmax, ArcFace, center...) or the
    local branch. Metric losses work on the neck's input side, so a batch-norm neck alone does
    not count; with none of these, a frozen backbone leaves nothing to train."""
    return (
        isinstance(model.neck.fc, nn.Linear)
        or any(p.requires_grad for p in criterion.parameters())
        or model.local is not None
    )


def _apply_plan(model: EmbeddingModel, plan: TrainablePlan) -> list[nn.Module]:
    """Freeze what the plan does not train; return the modules to keep in eval mode while
    training (the frozen backbone, or the batch norms of its frozen stages)."""
    trained = plan.trained_names
    for name, prm in model.net.named_parameters():
        prm.requires_grad_(name in trained)
    if plan.trained_stages == 0:
        return [model.net]
    from torch.nn.modules.batchnorm import _BatchNorm

    return [
        m
        for m in model.net.modules()
        if isinstance(m, _BatchNorm)
        and not any(p.requires_grad for p in m.parameters(recurse=False))
    ]


def _param_groups(
    model: EmbeddingModel, criterion: nn.Module, plan: TrainablePlan, cfg: EmbeddingConfig
) -> list[dict[str, Any]]:
    """Backbone groups first (one, or one per stage with layer decay), then the new layers."""
    params = dict(model.net.named_parameters())
    groups: list[dict[str, Any]] = []
    n = plan.trained_stages
    stages = plan.stages[-n:] if n else []
    if stages and cfg.layer_decay < 1:
        for i, stage in enumerate(stages):
            scale = cfg.layer_decay ** (len(stages) - 1 - i)
            groups.append({"params": [params[k] for k in stage], "lr": cfg.lr * scale})
    elif stages:
        groups.append({"params": [params[k] for s in stages for k in s], "lr": cfg.lr})
    new = [prm for prm in model.neck.parameters() if prm.requires_grad]
    if model.local is not None:
        new += list(model.local.parameters())
    new += [prm for prm in criterion.parameters() if prm.requires_grad]
    groups.append({"params": new, "lr": cfg.lr * cfg.head_lr_mult})
    return groups


def _recipes(cfg: EmbeddingConfig, data: _Data) -> list[str]:
    """The recipes (``trainable`` values) to train: one, or, with ``--val-dir`` and ``auto``,
    every one, the val-dir picking."""
    if cfg.trainable == "auto" and cfg.val_dir:
        return ["neck", "last", "all"]
    return [cfg.trainable]


def train_embedding(
    cfg: EmbeddingConfig,
    *,
    resume: bool = False,
    progress: bool = True,
    extra_callbacks: list[Callback] | None = None,
) -> EmbeddingResult:
    """Train (or resume) an embedding; return the run folder and what it reached.

    With ``val_dir`` and ``trainable="auto"`` each recipe (neck, last, all) trains into
    ``out/recipes/<recipe>/`` and the one with the best ``--val-dir`` mAP becomes the run in
    ``out`` (its figures and the others' in ``metrics["recipes"]``)."""
    out = Path(cfg.out or "")
    multi = resume and (out / "recipes").is_dir()
    if resume and not multi:
        if not (out / CKPT_DIR).is_dir():
            raise RunFolderError(f"{out}: nothing to resume (no {CKPT_DIR}/ there)")
        if is_run_dir(out):  # its own options; --epochs, when given, extends it
            epochs = cfg.epochs
            cfg = EmbeddingConfig.from_dict(read_run(out).config)
            if epochs is not None:
                cfg.epochs = epochs
    cfg = cfg.resolved()
    with session(resolve_device(cfg.device)) as (dist, device):
        return _train_recipes(cfg, resume, multi, progress, extra_callbacks, dist, device)


def _train_recipes(
    cfg: EmbeddingConfig,
    resume: bool,
    multi: bool,
    progress: bool,
    extra_callbacks: list[Callback] | None,
    dist: Dist,
    device: torch.device,
) -> EmbeddingResult:
    data = _Data.read(cfg)
    recipes = _recipes(cfg, data)
    run = dict(progress=progress, extra=extra_callbacks, dist=dist, device=device)
    if len(recipes) == 1 and not multi:
        return _train_one(cfg, data, resume=resume, **run)  # type: ignore[arg-type]
    out = Path(cfg.out or "")
    if not resume:
        prepare_out(out, False, dist if dist.enabled else None)
    results: dict[str, EmbeddingResult] = {}
    for recipe in recipes:
        sub = out / "recipes" / recipe
        sub_cfg = EmbeddingConfig(**{**asdict(cfg), "trainable": recipe, "out": str(sub)})
        finished = is_run_dir(sub) and "epochs_run" in read_run(sub).metrics
        if finished:
            results[recipe] = _finished_result(sub)
            continue
        again = resume and (sub / CKPT_DIR / "state.json").is_file()
        if progress and dist.is_main:
            from rich.console import Console

            Console(stderr=True).print(f"[bold]recipe {recipe}[/] (--val-dir picks the best)")
        results[recipe] = _train_one(sub_cfg, data, resume=again, **run)  # type: ignore[arg-type]
    if not dist.is_main:  # rank 0 compares the recipes and writes the run
        return EmbeddingResult(out, len(data.names), 0, {}, [], rank=dist.rank)
    best = max(recipes, key=lambda r: _best_score(results[r]))
    return _promote(out, best, results, cfg)


def _best_score(res: EmbeddingResult) -> tuple[float, float]:
    from vitrina.training.callbacks import score

    return score(res.metrics)


def _finished_result(run: Path) -> EmbeddingResult:
    info = read_run(run)
    m = dict(info.metrics)
    return EmbeddingResult(
        run_dir=run,
        identities=len(info.classes),
        best_epoch=int(m.get("best_epoch", 0)),
        metrics=m,
        history=[],
        dropped_singletons=int(info.data.get("dropped_singletons", 0)),
        start=dict(m.get("start", {})),
        trainable=dict(m.get("trainable", {})),
        verdict=list(m.get("verdict", [])),
    )


def _promote(
    out: Path, best: str, results: dict[str, EmbeddingResult], cfg: EmbeddingConfig
) -> EmbeddingResult:
    """Make the best recipe's run the run in ``out`` (weights, vitrina.json, plots, metrics)."""
    won = results[best]
    info = read_run(won.run_dir)
    summary = {
        r: {
            k: res.metrics.get(k)
            for k in ("best_epoch", "val_mAP", "val_rank1", "valdir_mAP", "valdir_rank1")
            if k in res.metrics
        }
        for r, res in results.items()
    }
    info.metrics = {**info.metrics, "recipes": summary, "recipe": best}
    shown = ", ".join(f"{r} {s.get('valdir_mAP', float('nan')):.3f}" for r, s in summary.items())
    info.metrics["trainable"] = {
        **info.metrics.get("trainable", {}),
        "reason": f"--val-dir {cfg.val_dir} picked {best} among {', '.join(results)} "
        f"(val-dir mAP {shown})",
    }
    info.config = {**info.config, "trainable": cfg.trainable, "out": str(out)}
    save_run(out, load_model(won.run_dir), info)
    for name in ("plots", "metrics.jsonl"):
        src = won.run_dir / name
        if src.is_dir():
            shutil.copytree(src, out / name, dirs_exist_ok=True)
        elif src.is_file():
            shutil.copyfile(src, out / name)
    m = info.metrics
    return EmbeddingResult(
        run_dir=out,
        identities=won.identities,
        best_epoch=won.best_epoch,
        metrics=m,
        history=won.history,
        dropped_singletons=won.dropped_singletons,
        bad_files=won.bad_files,
        start=won.start,
        trainable=m["trainable"],
        verdict=won.verdict,
        recipes=summary,
    )


def _train_one(
    cfg: EmbeddingConfig,
    data: _Data,
    *,
    resume: bool,
    progress: bool,
    extra: list[Callback] | None,
    dist: Dist | None = None,
    device: torch.device | None = None,
) -> EmbeddingResult:
    from vitrina.data.samplers import PairSampler, PKSampler
    from vitrina.losses import build_criterion
    from vitrina.losses.aligned import AlignedLocalLoss

    loss, loss_reason = cfg.chosen_loss()  # ``auto`` read from the folder once

    torch.manual_seed(cfg.seed)
    dist = dist or Dist()
    device = device or resolve_device(cfg.device)
    names, train_imgs, val_imgs = data.names, data.train_imgs, data.val_imgs
    p = cfg.p or max(2, min(8, len(data.train_ids)))
    sampler: PKSampler | PairSampler = (
        PairSampler(data.train_labels, pairs=max(2, p * cfg.k // 2), seed=cfg.seed)
        if cfg.sampler == "pairs"
        else PKSampler(data.train_labels, p=p, k=cfg.k, seed=cfg.seed)
    )

    base, previous = _backbone(cfg)
    pre = _preprocess(base, cfg.input_size)
    out = prepare_out(Path(cfg.out or "runs/run"), resume, dist if dist.enabled else None)
    base.preprocess = pre
    same_shape = previous is not None and (
        previous.num_features == (cfg.dim or base.num_features)
        and previous.local_stripes == cfg.local_stripes
        and (not cfg.local_stripes or previous.local_dim == cfg.local_dim)
    )
    start_model: nn.Module = previous if previous is not None else base
    start_copy = copy.deepcopy(start_model)  # the starting weights, measured before training
    if same_shape:
        assert previous is not None
        model = previous
        model.reset_classifier(len(names))
    else:
        model = EmbeddingModel(
            base,
            dim=cfg.dim,
            bnneck=cfg.bnneck,
            num_classes=len(names),
            local_stripes=cfg.local_stripes,
            local_dim=cfg.local_dim,
        )
    model.preprocess = pre
    model.class_names = names

    def criterion_for(m: EmbeddingModel) -> nn.Module:
        return build_criterion(
            loss,
            miner=cfg.miner,
            distance=cfg.distance,
            num_classes=len(names),
            embedding_dim=m.num_features,
            margin=cfg.margin,
        )

    peer: _Peer | None = None
    if cfg.mutual:
        twin = copy.deepcopy(model)
        torch.manual_seed(cfg.seed + 1)  # another start for the new layers of the peer
        for module in (twin.neck, twin.local):
            for layer in module.modules() if module is not None else ():
                if hasattr(layer, "reset_parameters") and layer is not module:
                    layer.reset_parameters()
        peer = _Peer(twin, criterion_for(twin), [])
        torch.manual_seed(cfg.seed)
    criterion = criterion_for(model)
    plan = plan_trainable(
        model.net,
        cfg.trainable,
        identities=len(data.train_ids),
        images=len(train_imgs),
        pretrained=cfg.weights is not None,
        new_layers_learn=_new_layers_learn(model, criterion),
    )
    model.to(device=device, dtype=param_dtype(cfg.precision))
    criterion.to(device=device, dtype=param_dtype(cfg.precision))
    frozen = _apply_plan(model, plan)
    groups = _param_groups(model, criterion, plan, cfg)
    if peer is not None:
        peer.to(device=device, dtype=param_dtype(cfg.precision))
        peer.frozen = _apply_plan(peer.model, plan)
        groups += _param_groups(peer.model, peer.criterion, plan, cfg)
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    parts: dict[str, nn.Module] = {"model": model, "loss": criterion}
    if peer is not None:
        parts["peer"] = peer
    trainable = nn.ModuleDict(parts)

    train_loader = _loader(
        [im.path for im in train_imgs],
        data.train_labels,
        reid_train_transform(pre, cfg.augment),
        cfg,
        device,
        batch_sampler=sampler,
    )
    train_loader = shard_loader(train_loader, dist)  # whole P×K batches, dealt to the ranks

    def eval_loader(images: list[Any]) -> DataLoader | None:
        if not images:
            return None
        return _loader(
            [im.path for im in images],
            [im.label for im in images],
            eval_transform(pre),
            cfg,
            device,
            batch_size=64,
            shuffle=False,
        )

    val_loader = eval_loader(val_imgs)
    valdir_loader = eval_loader(data.valdir_imgs)

    # The starting weights on the same identities, before any step (and before a resume
    # point replaces them): the figure training has to beat.
    start = _start_figures(start_copy, val_loader, valdir_loader, device)
    del start_copy

    history: list[dict[str, Any]] = []
    start_epoch = 0
    if resume:
        doc = load_resume_point(out, trainable, optimizer, scheduler)
        start_epoch, history = int(doc["epoch"]), list(doc["history"])
        scheduler.T_max = cfg.epochs
        if start_epoch >= cfg.epochs:
            raise VitrinaError(
                f"{out}: already trained {start_epoch} of {cfg.epochs} epochs; pass a larger "
                "--epochs to go on"
            )

    info = RunInfo(
        arch=model.arch,
        classes=names,
        preprocess=pre,
        task="embedding",
        weights_origin=model.weights_origin,
        data={
            "root": str(data.root.resolve()),
            "layout": data.ids.layout,
            "fingerprint": _fingerprint(data.root, data.images),
            "identities": len(data.ids.names),
            "train_identities": len(data.train_ids),
            "validation_identities": len(data.val_ids),
            "train_images": len(train_imgs),
            "validation_images": len(val_imgs),
            "dropped_singletons": sampler.dropped_singletons,
            **(
                {
                    "val_dir": str(Path(cfg.val_dir).resolve()),
                    "val_dir_images": len(data.valdir_imgs),
                }
                if cfg.val_dir
                else {}
            ),
        },
        config={**cfg.to_dict(), "embedding": model.embedding_config()},
    )
    plan_doc = plan.to_dict()

    def save_best(record: dict[str, Any]) -> None:
        info.metrics = best_metrics(record)
        info.metrics.update(
            start=start,
            trainable=plan_doc,
            loss={"choice": loss, "reason": loss_reason},
        )
        save_run(out, model, info)

    save_resume = resume_saver(out, trainable, optimizer, scheduler)

    task = EmbeddingTask(
        criterion,
        frozen=frozen,
        local_loss=AlignedLocalLoss() if cfg.local_stripes else None,
        peer=peer,
    )
    task.epoch = start_epoch
    callbacks: list[Callback] = [GlobalFigures(device)] if dist.enabled else []
    if valdir_loader is not None:
        callbacks.append(_ValDir(task, model, valdir_loader))
    if progress and dist.is_main:
        from rich.console import Console

        Console(stderr=True).print(f"trainable: {plan.choice} ({plan.reason})", highlight=False)
        callbacks.append(ProgressBar(accuracy=False))
    callbacks += [
        _Shuffle(sampler),
        BestCheckpoint(dist.main_only(save_best)),  # every rank marks the best: early stopping
        EarlyStopping(cfg.patience),
        *([MetricsLog(out / "metrics.jsonl")] if dist.is_main else []),
        ResumePoint(dist.main_only(save_resume)),
        *(extra or []),
    ]
    choice = dist.agree(choose_precision(cfg.precision, model, device, cfg.k * (cfg.p or 8)))
    if cfg.precision == "auto" and dist.is_main:
        record_precision(choice, out)
    loop_task: Any = DistributedTask(task, model, trainable, device) if dist.enabled else task
    cfg.precision = choice.chosen
    layout = dist.agree(
        choose_memory_format(model, device, cfg.k * (cfg.p or 8), precision=cfg.precision)
    )
    to_layout(model, layout.chosen)
    try:
        with torch_threads(getattr(train_loader, "num_workers", 0)):
            state = fit(
                model,
                loop_task,
                train_loader,
                val_loader,
                optimizer,
                scheduler,
                epochs=cfg.epochs,
                start_epoch=start_epoch,
                history=history,
                callbacks=callbacks,
                device=device,
                precision=cfg.precision,
                layout=layout.chosen,
            )
    except NonFiniteLossError as e:
        kept = (
            f"the last good checkpoint (epoch {read_run(out).metrics.get('best_epoch')}) is kept "
            f"in {out}"
            if is_run_dir(out)
            else "no epoch finished, so there is no checkpoint"
        )
        raise NonFiniteLossError(f"{e}; {kept}; try a lower --lr") from None
    if not dist.is_main:  # rank 0 adds prototypes, calibrates and writes the run
        return EmbeddingResult(
            out, len(names), 0, {}, state.history, sampler.dropped_singletons, rank=dist.rank
        )

    best = load_model(out).to(device)
    assert isinstance(best, EmbeddingModel)
    metrics = dict(read_run(out).metrics)
    # Prototypes of the training identities, so classify() answers "closest identity".
    engine = Engine(
        best, backend="eager", device=device, batch_size=64, num_workers=cfg.num_workers
    )
    feats, labels = [], []
    bad: list[str] = list(state.bad_files.values())
    for r in engine.run(Embedding(normalize=False), [im.path for im in train_imgs]):
        if r.ok:
            feats.append(r.value)
            labels.append(data.train_labels[r.index])
        else:
            bad.append(r.error)
    if feats:
        best.set_prototypes(torch.from_numpy(np.stack(feats)), torch.tensor(labels))
    best_info = read_run(out)
    thresholds = _calibrate(best, engine, val_imgs or train_imgs, cfg, out, on_val=bool(val_imgs))
    best_info.thresholds = thresholds
    metrics["epochs_run"] = state.epoch
    metrics["layout"] = layout.describe()
    metrics.update(decoding_metrics(train_loader))
    metrics["unreadable_files"] = len(set(bad))
    verdict, beat = _verdict(metrics, start, cfg)
    metrics.update(start=start, trainable=plan_doc, verdict=verdict, beat_start=beat)
    best_info.metrics = metrics
    best_info.config = {**cfg.to_dict(), "embedding": best.embedding_config()}
    save_run(out, best.cpu(), best_info)
    from vitrina.report import plot_curves

    plot_curves(state.history, out / "plots" / "curves.png")
    return EmbeddingResult(
        run_dir=out,
        identities=len(names),
        best_epoch=int(metrics.get("best_epoch", 0)),
        metrics=metrics,
        history=state.history,
        dropped_singletons=sampler.dropped_singletons,
        bad_files=sorted(set(bad)),
        start=start,
        trainable=plan_doc,
        verdict=verdict,
    )


@torch.no_grad()
def _start_figures(
    start: nn.Module, val_loader: Any, valdir_loader: Any, device: torch.device
) -> dict[str, float]:
    """The starting weights' leave-one-out figures on the held-out identities (``val_*``)
    and on ``--val-dir`` (``valdir_*``): their own embedding (a backbone's pooled features,
    or the embedding run training starts from)."""
    if val_loader is None and valdir_loader is None:
        return {}
    start = start.to(device).eval()

    def embed(x: torch.Tensor) -> tuple[torch.Tensor, None]:
        return start.embed(x.to(model_dtype(start))), None  # type: ignore[operator]

    out: dict[str, float] = {}
    if val_loader is not None:
        out.update(_loo_figures(embed, val_loader, device))
    if valdir_loader is not None:
        figs = _loo_figures(embed, valdir_loader, device)
        out.update({f"valdir_{k[4:]}": v for k, v in figs.items()})
    return out


def _verdict(
    metrics: dict[str, Any], start: dict[str, float], cfg: EmbeddingConfig
) -> tuple[list[str], bool]:
    """Lines comparing the kept epoch with the starting weights, and whether it beat them
    everywhere they were both measured."""
    lines: list[str] = []
    beat = True
    sets = (("val_mAP", "held-out identities"), ("valdir_mAP", f"--val-dir {cfg.val_dir}"))
    for key, where in sets:
        if key not in metrics or key not in start:
            continue
        got, was = float(metrics[key]), float(start[key])
        diff = (got - was) * 100
        if got > was:
            lines.append(
                f"{where}: mAP {got:.3f} trained vs {was:.3f} with the starting weights "
                f"({diff:+.1f} points)"
            )
        else:
            beat = False
            lines.append(
                f"{where}: training did NOT beat the starting weights (mAP {got:.3f} trained vs "
                f"{was:.3f}, {diff:+.1f} points): use the starting weights ({cfg.weights or cfg.arch}) "
                "as they are, or train less of the backbone (--trainable neck) or fewer epochs"
            )
    return lines, beat


def _fingerprint(root: Path, images: list[Any]) -> str:
    from vitrina.data import Sample
    from vitrina.training.classification import data_fingerprint

    labels = sorted({im.label for im in images})
    return data_fingerprint(
        root, [Sample(im.path, im.label) for im in images], [str(i) for i in labels]
    )


def _calibrate(
    model: EmbeddingModel,
    engine: Engine,
    images: list[Any],
    cfg: EmbeddingConfig,
    out: Path,
    *,
    on_val: bool,
) -> dict[str, Any]:
    """Verification figures on (preferably unseen) identities; the threshold for target FAR."""
    from vitrina.evaluate.verification import pair_distances, verification_report
    from vitrina.report.plots import plot_roc

    feats, labels = [], []
    for r in engine.run(Embedding(normalize=False), [im.path for im in images]):
        if r.ok:
            feats.append(r.value)
            labels.append(images[r.index].label)
    if not feats or len(set(labels)) < 2:
        return {}
    x = np.stack(feats)
    y = np.asarray(labels)
    metric = "cosine"
    d, same = pair_distances(x, y, metric=metric, max_pairs=200_000, seed=cfg.seed)
    report = verification_report(d, same, fars=(cfg.target_far, 1e-2, 1e-3), metric=metric)
    plot_roc(
        {"held-out identities" if on_val else "training identities": report},
        out / "plots" / "roc.png",
        title="verification ROC (pairs of photos: same identity or not)",
        target_far=cfg.target_far,
    )
    th = report.thresholds_dict(far=cfg.target_far)
    th["measured_on"] = (
        "held-out identities" if on_val else "training identities (optimistic: no held-out ones)"
    )
    th["vectors"] = "L2-normalised embed() output"
    return {"verification": th}
