"""Train a classifier on a class-folder tree and leave a run folder behind."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from vitrina.data import (
    Batch,
    ImageFiles,
    Sample,
    collate_skip_bad,
    eval_transform,
    scan_folder,
    stratified_split,
    train_transform,
)
from vitrina.engine import Embedding, Engine, default_workers, resolve_device, torch_threads
from vitrina.errors import RunFolderError, VitrinaError
from vitrina.evaluate import classification_report
from vitrina.models import VitrinaModel, create
from vitrina.report import plot_confusion, plot_curves
from vitrina.runs import RunInfo, is_run_dir, read_run, save_run, write_info
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
from vitrina.training.config import TrainConfig
from vitrina.training.distributed import (
    Dist,
    DistributedTask,
    GlobalFigures,
    check_optimizer,
    session,
    shard_loader,
)
from vitrina.training.feeding import decoding_metrics, training_loader
from vitrina.training.layout import choose_memory_format, to_layout
from vitrina.training.loop import Callback, LoopState, StepOutput, fit
from vitrina.training.precision import (
    choose_precision,
    inference_backend,
    loss_dtype,
    model_dtype,
    param_dtype,
    record_precision,
)
from vitrina.training.result import TrainResult, data_fingerprint, data_record

__all__ = ["ClassificationTask", "TrainResult", "data_fingerprint", "train_classifier"]


class ClassificationTask:
    """Cross-entropy on ``model.classify``; ``frozen_backbone`` keeps BN statistics fixed."""

    def __init__(self, frozen_backbone: bool = False, l2: float = 0.0) -> None:
        self.frozen_backbone = frozen_backbone
        self.l2 = l2  # explicit L2 on weight matrices, for optimizers without weight decay
        self.last_eval: tuple[np.ndarray, np.ndarray] | None = None

    def set_train_mode(self, model: nn.Module) -> None:
        if self.frozen_backbone and isinstance(model, VitrinaModel):
            model.eval()
            model.head_module().train()
        else:
            model.train()

    def step(self, model: nn.Module, batch: Batch) -> StepOutput:
        logits = model.classify(batch.images)  # type: ignore[operator]
        loss = F.cross_entropy(loss_dtype(logits), batch.labels)
        if self.l2:
            weights = [p for p in model.parameters() if p.requires_grad and p.dim() > 1]
            loss = loss + 0.5 * self.l2 * sum(p.pow(2).sum() for p in weights)
        correct = int((logits.argmax(1) == batch.labels).sum())
        return StepOutput(loss, len(batch.labels), correct)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: Any) -> dict[str, float]:
        model.eval()
        device = next(model.parameters()).device
        dtype = model_dtype(model)
        probs, labels = [], []
        for batch in loader:
            if batch.images.numel() == 0:
                continue
            x = batch.images.to(device, dtype=dtype)
            logits = loss_dtype(model.classify(x))  # type: ignore[operator]
            probs.append(logits.softmax(1).float().cpu())
            labels.append(batch.labels)
        if not probs:
            return {}
        p = torch.cat(probs)
        y = torch.cat(labels)
        self.last_eval = (y.numpy(), p.numpy())
        loss = F.nll_loss(p.clamp_min(1e-12).log(), y).item()
        return {"val_loss": loss, "val_accuracy": float((p.argmax(1) == y).float().mean())}


class _ReseedShuffle(Callback):
    """Seed the shuffle of each epoch from (seed, epoch), so a resumed run sees the same
    batches as an uninterrupted one."""

    def __init__(self, generator: torch.Generator, seed: int) -> None:
        self.generator, self.seed = generator, seed

    def on_epoch_start(self, state: LoopState) -> None:
        self.generator.manual_seed(self.seed * 100_003 + state.epoch)


class _HeadOnly(nn.Module):
    """The classifier head seen as a model over cached embeddings (the probe fast path)."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)


def _loader(
    samples: list[Sample],
    transform: Any,
    cfg: TrainConfig,
    *,
    shuffle: bool,
    g: torch.Generator,
    device: torch.device | None = None,
) -> DataLoader:
    """A loader feeding a training loop on ``device`` (decoding placed by
    :func:`~vitrina.training.feeding.training_loader`), or, without a device, one pass of
    decoding alone (spread over :func:`~vitrina.engine.default_workers` processes)."""
    ds = ImageFiles([s.path for s in samples], [s.label for s in samples], transform)
    kw: dict[str, Any] = dict(
        batch_size=cfg.batch_size, shuffle=shuffle, collate_fn=collate_skip_bad, generator=g
    )
    if device is not None:
        return training_loader(ds, num_workers=cfg.num_workers, device=device, **kw)
    workers = default_workers() if cfg.num_workers is None else cfg.num_workers
    return DataLoader(ds, num_workers=workers if len(ds) > cfg.batch_size else 0, **kw)


def _embed_all(
    model: VitrinaModel, samples: list[Sample], cfg: TrainConfig, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Frozen-backbone features of every sample, once, by the backend computing at the run's
    precision (``eager`` fp32: the probe reference; ``fp64``; ``bf16``)."""
    engine = Engine(
        model,
        backend=inference_backend(cfg.precision),
        device=device,
        batch_size=max(cfg.batch_size, 32),
        num_workers=cfg.num_workers,
    )
    feats, labels, errors = [], [], []
    for r in engine.run(Embedding(normalize=False), [s.path for s in samples]):
        if r.ok:
            feats.append(torch.from_numpy(r.value))
            labels.append(samples[r.index].label)
        else:
            errors.append(r.error)
    x = torch.stack(feats) if feats else torch.empty(0, model.num_features)
    return x, torch.tensor(labels, dtype=torch.long), errors


TENSOR_CACHE_BYTES = 1 << 30


def _fits_in_memory(pre: Any, n: int) -> bool:
    h, w = pre.input_size
    return n * pre.channels * h * w * 4 <= TENSOR_CACHE_BYTES


def _decode_all(
    samples: list[Sample], transform: Any, cfg: TrainConfig
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Decode and transform every sample once (deterministic transforms only)."""
    loader = _loader(samples, transform, cfg, shuffle=False, g=torch.Generator())
    xs, ys, errors = [], [], []
    for b in loader:
        if len(b.labels):
            xs.append(b.images)
            ys.append(b.labels)
        errors += [m for _, m in b.errors]
    if not xs:
        return torch.empty(0), torch.empty(0, dtype=torch.long), errors
    return torch.cat(xs), torch.cat(ys), errors


def _tensor_loader(
    x: torch.Tensor, y: torch.Tensor, batch_size: int, shuffle: bool, g: torch.Generator
):
    def collate(items: list[tuple[torch.Tensor, torch.Tensor]]) -> Batch:
        xs = torch.stack([i[0] for i in items])
        ys = torch.stack([i[1] for i in items])
        return Batch(xs, ys, torch.arange(len(items)), [])

    return DataLoader(
        TensorDataset(x, y),
        batch_size=batch_size,
        shuffle=shuffle,
        generator=g,
        collate_fn=collate,
    )


def _optimizer(params: list[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "lbfgs":
        # The classic linear probe: full-batch L-BFGS on cross-entropy + L2 (one "epoch" is
        # up to 20 iterations); converges where a few epochs of AdamW do not.
        return torch.optim.LBFGS(
            params, lr=cfg.lr, max_iter=20, history_size=10, line_search_fn="strong_wolfe"
        )
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay
        )
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def prepare_out(out: Path, resume: bool, dist: Dist | None = None) -> Path:
    """The run folder: must hold a resume point to resume, else be new or empty. Under
    torchrun (``dist``) every rank checks, then rank 0 alone creates it."""
    if resume:
        if not (out / CKPT_DIR / "state.json").is_file():
            raise RunFolderError(f"{out}: nothing to resume (no {CKPT_DIR}/state.json)")
        return out
    if out.exists() and any(out.iterdir()):
        raise RunFolderError(
            f"{out}: folder exists and is not empty; pass --resume to continue that run or "
            "choose another --out (nothing was overwritten)"
        )
    if dist is None:
        out.mkdir(parents=True, exist_ok=True)
        return out
    dist.barrier()  # every rank has looked before rank 0 makes it
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
    dist.barrier()
    return out


def train_classifier(
    cfg: TrainConfig,
    *,
    resume: bool = False,
    progress: bool = True,
    extra_callbacks: list[Callback] | None = None,
    fast_paths: bool = True,
) -> TrainResult:
    """Train (or resume) a classifier; return where the run folder is and what it reached.

    Fast paths (``fast_paths=False`` runs the plain loop, which gives the same weights):
    with ``mode='probe'`` and ``augment='none'`` the frozen backbone's features are computed
    once and only the head is trained on them; otherwise, with ``augment='none'`` and a
    dataset whose tensors fit in :data:`TENSOR_CACHE_BYTES`, images are decoded once.
    """
    if resume:
        out = Path(cfg.out or "")
        if not is_run_dir(out) and not (out / CKPT_DIR).is_dir():
            raise RunFolderError(f"{out}: nothing to resume (no run there)")
        saved = read_run(out).config if is_run_dir(out) else {}
        if saved:
            epochs = cfg.epochs
            cfg = TrainConfig.from_dict(saved)
            if epochs is not None:
                cfg.epochs = epochs
    cfg = cfg.resolved()
    with session(resolve_device(cfg.device)) as (dist, device):
        return _train(cfg, resume, progress, extra_callbacks, fast_paths, dist, device)


def _train(
    cfg: TrainConfig,
    resume: bool,
    progress: bool,
    extra_callbacks: list[Callback] | None,
    fast_paths: bool,
    dist: Dist,
    device: torch.device,
) -> TrainResult:
    assert cfg.epochs is not None and cfg.augment is not None
    torch.manual_seed(cfg.seed)
    data_root = Path(cfg.data_dir)

    scan = scan_folder(data_root, min_classes=2)
    if cfg.val_dir:
        val_samples = scan_folder(cfg.val_dir, classes=scan.classes).samples
        train_samples = scan.samples
    else:
        train_samples, val_samples = stratified_split(scan.samples, cfg.val_fraction, cfg.seed)
    out = prepare_out(Path(cfg.out or "runs/run"), resume, dist if dist.enabled else None)

    model = create(cfg.arch, weights=cfg.weights, num_classes=len(scan.classes))
    model.class_names = list(scan.classes)
    if getattr(model, "fitted", False):  # HOG / SIFT + SVM: fitted by scikit-learn
        if dist.enabled:
            raise VitrinaError(
                f"{cfg.arch} is fitted in one pass by scikit-learn on one process: run it "
                "without torchrun / --nproc"
            )
        if resume:
            raise VitrinaError(
                f"{out}: {cfg.arch} is fitted in one pass by scikit-learn; there is nothing to "
                "resume (train again into a new --out)"
            )
        from vitrina.training.classic import fit_classic

        return fit_classic(
            cfg, model, data_root, scan, train_samples, val_samples, out, progress=progress
        )
    model.to(device=device, dtype=param_dtype(cfg.precision))
    pre = model.preprocess
    frozen = cfg.mode == "probe"
    if frozen:
        for p in model.backbone_parameters():
            p.requires_grad_(False)
    head = model.head_module()
    cached = fast_paths and frozen and cfg.augment == "none" and isinstance(head, nn.Linear)
    # ``auto`` resolved before anything computes (the cached features are computed at the
    # chosen precision's backend).
    choice = choose_precision(cfg.precision, model, device, cfg.batch_size, trainable=not cached)
    choice = dist.agree(choice)  # one choice for every rank (auto measures)
    if cfg.precision == "auto" and dist.is_main:
        record_precision(choice, out)
    cfg.precision = choice.chosen
    layout = dist.agree(
        choose_memory_format(
            model, device, cfg.batch_size, precision=cfg.precision, trainable=not cached
        )
    )
    to_layout(model, layout.chosen)

    bad: list[str] = []
    shuffle_gen = torch.Generator().manual_seed(cfg.seed)
    if cached:
        xtr, ytr, e1 = _embed_all(model, train_samples, cfg, device)
        xva, yva, e2 = (
            _embed_all(model, val_samples, cfg, device) if val_samples else (None, None, [])
        )
        bad += e1 + e2
        loop_model: nn.Module = _HeadOnly(head)
        full = cfg.optimizer == "lbfgs"
        train_loader: Any = _tensor_loader(
            xtr, ytr, max(len(xtr), 1) if full else cfg.batch_size, not full, shuffle_gen
        )
        val_loader: Any = (
            _tensor_loader(xva, yva, 256, False, torch.Generator())
            if xva is not None and len(xva)
            else None
        )
    elif fast_paths and cfg.augment == "none" and _fits_in_memory(pre, len(scan.samples)):
        loop_model = model
        tf = eval_transform(pre)
        xtr, ytr, e1 = _decode_all(train_samples, tf, cfg)
        xva, yva, e2 = _decode_all(val_samples, tf, cfg)
        bad += e1 + e2
        train_loader = _tensor_loader(xtr, ytr, cfg.batch_size, True, shuffle_gen)
        val_loader = _tensor_loader(xva, yva, 256, False, torch.Generator()) if len(xva) else None
    else:
        loop_model = model
        # L-BFGS is full-batch: one batch of every training image.
        lcfg = replace(cfg, batch_size=len(train_samples)) if cfg.optimizer == "lbfgs" else cfg
        train_loader = _loader(
            train_samples,
            train_transform(pre, cfg.augment),
            lcfg,
            shuffle=True,
            g=shuffle_gen,
            device=device,
        )
        val_loader = (
            _loader(
                val_samples,
                eval_transform(pre),
                cfg,
                shuffle=False,
                g=torch.Generator(),
                device=device,
            )
            if val_samples
            else None
        )

    train_loader = shard_loader(train_loader, dist)  # this rank's share of each global batch
    assert cfg.lr is not None
    params = [
        p for p in (model.head_parameters() if frozen else model.parameters()) if p.requires_grad
    ]
    optimizer = _optimizer(params, cfg)
    check_optimizer(optimizer, dist)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    history: list[dict[str, Any]] = []
    start_epoch = 0
    if resume:
        doc = load_resume_point(out, model, optimizer, scheduler)
        start_epoch, history = int(doc["epoch"]), list(doc["history"])
        scheduler.T_max = cfg.epochs  # --epochs may extend the run: stretch the cosine
        if start_epoch >= cfg.epochs:
            raise VitrinaError(
                f"{out}: already trained {start_epoch} of {cfg.epochs} epochs; pass a larger --epochs to go on"
            )

    info = RunInfo(
        arch=cfg.arch,
        classes=list(scan.classes),
        preprocess=pre,
        weights_origin=model.weights_origin,
        data=data_record(data_root, scan, train_samples, val_samples),
        config=cfg.to_dict(),
    )

    def save_best(record: dict[str, Any]) -> None:
        info.metrics = best_metrics(record)
        save_run(out, model, info)

    save_resume = resume_saver(out, model, optimizer, scheduler)

    task = ClassificationTask(
        frozen_backbone=frozen, l2=cfg.weight_decay if cfg.optimizer == "lbfgs" else 0.0
    )
    callbacks: list[Callback] = [GlobalFigures(device)] if dist.enabled else []
    callbacks += [ProgressBar()] if progress and dist.is_main else []
    callbacks += [
        _ReseedShuffle(shuffle_gen, cfg.seed),
        BestCheckpoint(dist.main_only(save_best)),  # every rank marks the best: early stopping
        EarlyStopping(cfg.patience),
        *([MetricsLog(out / "metrics.jsonl")] if dist.is_main else []),
        ResumePoint(dist.main_only(save_resume)),
        *(extra_callbacks or []),
    ]
    loop_task: Any = DistributedTask(task, loop_model, loop_model, device) if dist.enabled else task
    workers = getattr(train_loader, "num_workers", 0)
    # A net this small spends more time waking threads than computing (and spins badly on
    # a busy machine): one thread.
    tiny = sum(p.numel() for p in model.parameters()) < 1_000_000
    with torch_threads(workers, max_threads=1 if tiny else None):
        state = fit(
            loop_model,
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
    bad += list(state.bad_files.values())
    if not dist.is_main:  # rank 0 measures, draws and writes the run's last figures
        return TrainResult(
            out, list(scan.classes), 0, {}, state.history, sorted(set(bad)), dist.rank
        )

    # Reload the best weights, then measure and draw with them.
    from vitrina.runs import load_model

    best = load_model(out)
    best_info = read_run(out)
    plots = out / "plots"
    plot_curves(state.history, plots / "curves.png")
    metrics = dict(best_info.metrics)
    if val_loader is not None:
        task_eval = ClassificationTask()
        if cached:
            head.load_state_dict(best.head_module().state_dict())
            task_eval.evaluate(_HeadOnly(head), val_loader)
        else:
            task_eval.evaluate(best.to(device), val_loader)
        if task_eval.last_eval is not None:
            y, p = task_eval.last_eval
            report = classification_report(y, p, scan.classes, ks=(1,))
            plot_confusion(
                report.confusion,
                scan.classes,
                plots / "confusion.png",
                title=f"validation confusion (accuracy {report.accuracy:.3f})",
            )
            metrics["val_per_class_f1"] = dict(zip(scan.classes, report.f1, strict=True))
    metrics["epochs_run"] = state.epoch
    metrics["layout"] = layout.describe()
    metrics.update(decoding_metrics(train_loader))
    metrics["unreadable_files"] = len(set(bad))
    best_info.metrics = metrics
    best_info.config = cfg.to_dict()
    write_info(out, best_info)
    return TrainResult(
        run_dir=out,
        classes=list(scan.classes),
        best_epoch=int(metrics.get("best_epoch", 0)),
        metrics=metrics,
        history=state.history,
        bad_files=sorted(set(bad)),
    )
