"""Train an embedding (metric learning) on an identity dataset and leave a run folder behind.

The recipe is the one face recognition and person re-identification share: a backbone, an
embedding neck (:class:`~vitrina.models.embedding.EmbeddingModel`), P×K batches (P identities
× K images each, so every batch holds positives and negatives), and a loss — or a weighted sum
of losses — built by name by :func:`vitrina.losses.build_criterion`.

Model selection is by retrieval mAP on held-out *identities* (never images of a training
identity: the job is to embed people the model has not seen). After training, the run folder
also gets verification figures (ROC, EER, TAR@FAR) on those identities and the distance
threshold for a target false-accept rate, in ``vitrina.json`` → ``thresholds``.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from vitrina.data import ImageFiles, collate_skip_bad, eval_transform
from vitrina.data.transforms import AUGMENTS, reid_train_transform
from vitrina.engine import Embedding, Engine, default_workers, resolve_device, torch_threads
from vitrina.errors import DataError, RunFolderError, VitrinaError
from vitrina.evaluate.retrieval import loo_retrieval
from vitrina.models import Preprocess, VitrinaModel, create
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
from vitrina.training.checkpoint import CKPT_DIR, load_resume_point, save_resume_point
from vitrina.training.classification import prepare_out
from vitrina.training.loop import Callback, LoopState, StepOutput, fit
from vitrina.training.precision import check_precision, loss_dtype, model_dtype, param_dtype

__all__ = [
    "EmbeddingConfig",
    "EmbeddingResult",
    "EmbeddingTask",
    "NonFiniteLossError",
    "train_embedding",
]

DISTANCES = ("euclidean", "cosine")
EMBED_AUGMENTS = ("reid", *AUGMENTS)
#: Batch samplers: ``pk`` (P identities x K images: every pair and triplet of the batch) or
#: ``pairs`` (balanced same / different Siamese pairs, for the siamese-* losses).
SAMPLERS = ("pk", "pairs")


class NonFiniteLossError(VitrinaError):
    """The loss became NaN or infinite; training stopped, the last good checkpoint is kept."""


@dataclass
class EmbeddingConfig:
    """Options of ``vitrina train-embedding``.

    loss: a loss name or a weighted sum (``softmax+triplet-batch-hard``, ``triplet+0.5*center``);
        see :func:`vitrina.losses.loss_names`.
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
    """

    data_dir: str
    arch: str = "efficientnet_lite0"
    weights: str | None = "imagenet"
    loss: str = "softmax+triplet-batch-hard"
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
    epochs: int = 20
    lr: float = 3e-4
    head_lr_mult: float = 10.0
    weight_decay: float = 5e-4
    freeze_backbone: bool = False
    input_size: tuple[int, int] | None = None
    augment: str = "reid"
    precision: str = field(
        default="fp32",
        metadata={"help": "fp64, fp32, or bf16 (autocast); the run stores fp32 weights."},
    )
    val_fraction: float = 0.2
    target_far: float = 1e-2
    patience: int = 0
    seed: int = 0
    out: str | None = None
    num_workers: int | None = None
    device: str = "auto"

    def resolved(self) -> EmbeddingConfig:
        c = EmbeddingConfig(**asdict(self))
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

        pair_losses = [t.name for t in parse_loss_spec(c.loss) if LOSSES.get(t.name).pairs]
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
            c.loss,
            miner=c.miner,
            distance=c.distance,
            num_classes=2,
            embedding_dim=2,
            margin=c.margin,
        )
        check_precision(c.precision)
        for name, value, ok in (
            ("epochs", c.epochs, c.epochs >= 1),
            ("p", c.p, c.p is None or c.p >= 2),
            ("k", c.k, c.k >= 2),
            ("lr", c.lr, c.lr > 0),
            ("dim", c.dim, c.dim >= 0),
            ("val-fraction", c.val_fraction, 0 <= c.val_fraction < 1),
            ("target-far", c.target_far, 0 < c.target_far < 1),
        ):
            if not ok:
                raise VitrinaError(f"--{name} {value} is out of range")
        if c.input_size is not None:
            c.input_size = (int(c.input_size[0]), int(c.input_size[1]))
            if min(c.input_size) < 16:
                raise VitrinaError(f"--input-size {c.input_size} is too small (min 16)")
        if c.out is None:
            tag = c.loss.replace("*", "x").replace("+", "_").replace(" ", "")
            c.out = str(Path("runs") / f"{Path(c.data_dir).resolve().name}-{c.arch}-{tag}")
        return c

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_size"] = list(self.input_size) if self.input_size else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EmbeddingConfig:
        known = {f.name for f in fields(cls)}
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


class EmbeddingTask:
    """Loss of a P×K batch through the criterion; validation = leave-one-out retrieval."""

    def __init__(self, criterion: nn.Module, *, freeze_backbone: bool = False) -> None:
        self.criterion = criterion
        self.freeze_backbone = freeze_backbone
        self.epoch = 0
        self.batch = 0
        self.last_parts: dict[str, float] = {}
        self.val_embeddings: tuple[np.ndarray, np.ndarray] | None = None

    def set_train_mode(self, model: nn.Module) -> None:
        model.train()
        self.criterion.train()
        if self.freeze_backbone:
            model.net.eval()  # type: ignore[union-attr]
        self.epoch += 1
        self.batch = 0

    def step(self, model: nn.Module, batch: Any) -> StepOutput:
        self.batch += 1
        raw, neck = model.features(batch.images)  # type: ignore[operator]
        total, parts = self.criterion(loss_dtype(raw), loss_dtype(neck), batch.labels)
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
        model.eval()
        device = next(model.parameters()).device
        dtype = model_dtype(model)
        feats, labels = [], []
        for batch in loader:
            if batch.images.numel() == 0:
                continue
            x = batch.images.to(device, dtype=dtype)
            feats.append(model.embed(x).float().cpu())  # type: ignore[operator]
            labels.append(batch.labels)
        if not feats:
            return {}
        x = torch.cat(feats).numpy()
        y = torch.cat(labels).numpy()
        self.val_embeddings = (x, y)
        return loo_retrieval(x, y)


class _Shuffle(Callback):
    """Re-seed the P×K sampler from (seed, epoch): a resumed run sees the same batches."""

    def __init__(self, sampler: Any) -> None:
        self.sampler = sampler

    def on_epoch_start(self, state: LoopState) -> None:
        self.sampler.set_epoch(state.epoch)


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
    paths: list[Path], labels: list[int], transform: Any, cfg: EmbeddingConfig, **kw: Any
) -> DataLoader:
    workers = default_workers() if cfg.num_workers is None else cfg.num_workers
    ds = ImageFiles(paths, labels, transform)
    return DataLoader(
        ds,
        num_workers=workers if len(ds) > 64 else 0,
        collate_fn=collate_skip_bad,
        persistent_workers=False,
        **kw,
    )


def train_embedding(
    cfg: EmbeddingConfig,
    *,
    resume: bool = False,
    progress: bool = True,
    extra_callbacks: list[Callback] | None = None,
) -> EmbeddingResult:
    """Train (or resume) an embedding; return the run folder and what it reached."""
    from vitrina.data.identities import scan_identities
    from vitrina.data.samplers import PairSampler, PKSampler
    from vitrina.losses import build_criterion

    if resume:
        out = Path(cfg.out or "")
        if not (out / CKPT_DIR).is_dir():
            raise RunFolderError(f"{out}: nothing to resume (no {CKPT_DIR}/ there)")
        if is_run_dir(out):
            epochs = cfg.epochs
            cfg = EmbeddingConfig.from_dict(read_run(out).config)
            cfg.epochs = epochs
    cfg = cfg.resolved()
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    data_root = Path(cfg.data_dir)
    ids = scan_identities(data_root)
    images = ids.train
    if not images:
        raise DataError(f"{data_root}: no training images found")
    train_ids, val_ids = _split_identities([im.label for im in images], cfg.val_fraction, cfg.seed)
    train_imgs = [im for im in images if im.label in train_ids]
    val_imgs = [im for im in images if im.label in val_ids]
    # Training labels 0..n-1 over the training identities only.
    remap = {old: new for new, old in enumerate(sorted(train_ids))}
    names = [ids.names[old] for old in sorted(train_ids)]
    train_labels = [remap[im.label] for im in train_imgs]
    p = cfg.p or max(2, min(8, len(train_ids)))
    sampler: PKSampler | PairSampler = (
        PairSampler(train_labels, pairs=max(2, p * cfg.k // 2), seed=cfg.seed)
        if cfg.sampler == "pairs"
        else PKSampler(train_labels, p=p, k=cfg.k, seed=cfg.seed)
    )

    out = prepare_out(Path(cfg.out or "runs/run"), resume)
    base, previous = _backbone(cfg)
    pre = _preprocess(base, cfg.input_size)
    base.preprocess = pre
    if previous is not None and previous.num_features == (cfg.dim or base.num_features):
        model = previous
        model.reset_classifier(len(names))
    else:
        model = EmbeddingModel(base, dim=cfg.dim, bnneck=cfg.bnneck, num_classes=len(names))
    model.preprocess = pre
    model.class_names = names
    criterion = build_criterion(
        cfg.loss,
        miner=cfg.miner,
        distance=cfg.distance,
        num_classes=len(names),
        embedding_dim=model.num_features,
        margin=cfg.margin,
    )
    model.to(device=device, dtype=param_dtype(cfg.precision))
    criterion.to(device=device, dtype=param_dtype(cfg.precision))
    if cfg.freeze_backbone:
        for prm in model.net.parameters():
            prm.requires_grad_(False)
    backbone = [prm for prm in model.net.parameters() if prm.requires_grad]
    new = [prm for prm in model.neck.parameters() if prm.requires_grad]
    new += [prm for prm in criterion.parameters() if prm.requires_grad]
    groups = [{"params": new, "lr": cfg.lr * cfg.head_lr_mult}]
    if backbone:
        groups.insert(0, {"params": backbone, "lr": cfg.lr})
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    trainable = nn.ModuleDict({"model": model, "loss": criterion})

    train_loader = _loader(
        [im.path for im in train_imgs],
        train_labels,
        reid_train_transform(pre, cfg.augment),
        cfg,
        batch_sampler=sampler,
    )
    val_loader = (
        _loader(
            [im.path for im in val_imgs],
            [im.label for im in val_imgs],
            eval_transform(pre),
            cfg,
            batch_size=64,
            shuffle=False,
        )
        if val_imgs
        else None
    )

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
            "root": str(data_root.resolve()),
            "layout": ids.layout,
            "fingerprint": _fingerprint(data_root, images),
            "identities": len(ids.names),
            "train_identities": len(train_ids),
            "validation_identities": len(val_ids),
            "train_images": len(train_imgs),
            "validation_images": len(val_imgs),
            "dropped_singletons": sampler.dropped_singletons,
        },
        config={**cfg.to_dict(), "embedding": model.embedding_config()},
    )

    def save_best(record: dict[str, Any]) -> None:
        info.metrics = {"best_epoch": record["epoch"], **record}
        info.metrics.pop("best", None)
        save_run(out, model, info)

    def save_resume(state: LoopState) -> None:
        save_resume_point(
            out, trainable, optimizer, scheduler, {"epoch": state.epoch, "history": state.history}
        )

    task = EmbeddingTask(criterion, freeze_backbone=cfg.freeze_backbone)
    task.epoch = start_epoch
    callbacks: list[Callback] = [ProgressBar(accuracy=False)] if progress else []
    callbacks += [
        _Shuffle(sampler),
        BestCheckpoint(save_best),
        EarlyStopping(cfg.patience),
        MetricsLog(out / "metrics.jsonl"),
        ResumePoint(save_resume),
        *(extra_callbacks or []),
    ]
    try:
        with torch_threads(getattr(train_loader, "num_workers", 0)):
            state = fit(
                model,
                task,
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
            )
    except NonFiniteLossError as e:
        kept = (
            f"the last good checkpoint (epoch {read_run(out).metrics.get('best_epoch')}) is kept "
            f"in {out}"
            if is_run_dir(out)
            else "no epoch finished, so there is no checkpoint"
        )
        raise NonFiniteLossError(f"{e}; {kept}; try a lower --lr") from None

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
            labels.append(train_labels[r.index])
        else:
            bad.append(r.error)
    if feats:
        best.set_prototypes(torch.from_numpy(np.stack(feats)), torch.tensor(labels))
    best_info = read_run(out)
    thresholds = _calibrate(best, engine, val_imgs or train_imgs, cfg, out, on_val=bool(val_imgs))
    best_info.thresholds = thresholds
    metrics["epochs_run"] = state.epoch
    metrics["unreadable_files"] = len(set(bad))
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
    )


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
