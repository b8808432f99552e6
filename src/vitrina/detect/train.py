"""``vitrina detect train``: a detector trained on annotated photos, left as a run folder.

The same loop as classification (:func:`vitrina.training.fit` with its progress bar,
resume point, best checkpoint, early stopping — here by validation mAP@[.5:.95] — and bf16),
driven by :class:`DetectionTrainTask`: torchvision's losses on letterboxed batches, COCO mAP
on the validation photos. The run folder is a run like any other (``task: "detection"`` in
``vitrina.json``, the network in ``config.detector``), so ``vitrina.runs.load_model`` rebuilds
it and the engine runs it with every backend.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from vitrina.data.annotations import AnnotatedSet, read_annotated
from vitrina.detect.cache import (
    CACHE_LIMIT_BYTES,
    CUT,
    CachedBatch,
    CachedBatches,
    FeatureCache,
    run_cached,
)
from vitrina.detect.data import (
    BOX_AUGMENTS,
    MOVING_AUGMENTS,
    PhotoBoxes,
    ScaledBatches,
    collate_boxes,
    scaled_sizes,
    split_photos,
)
from vitrina.detect.fitted import (
    default_score_temperature,
    fit_input_size,
    fit_nms_iou,
    fit_score_temperature,
)
from vitrina.engine import default_workers, resolve_device, torch_threads
from vitrina.errors import DataError, RunFolderError, VitrinaError
from vitrina.evaluate.detection import DetectionMetrics, coco_metrics
from vitrina.models.detection import (
    HEADS,
    TEMPERED_HEADS,
    Detector,
    DetectorSpec,
    create_detector,
)
from vitrina.registry import suggest
from vitrina.report.boxes import plot_detection_curves, plot_pr_curves
from vitrina.runs import RunInfo, is_run_dir, read_run, save_run, write_info
from vitrina.training import Callback, LoopState, StepOutput, TrainResult, fit
from vitrina.training.averaging import AveragedWeights
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
from vitrina.training.config import PRECISIONS as TRAIN_PRECISIONS
from vitrina.training.distributed import single_process
from vitrina.training.feeding import decoding_metrics, training_loader
from vitrina.training.layout import choose_memory_format, to_layout
from vitrina.training.precision import PrecisionChoice, choose_precision, record_precision

__all__ = [
    "DEFAULT_TRAIN_SCALES",
    "FREEZE",
    "OPTIMIZERS",
    "WEIGHTS",
    "DetectTrainConfig",
    "DetectionTrainTask",
    "parse_size",
    "size_from_options",
    "train_detector",
]

#: What stays frozen: ``stem`` (the backbone's layers before stride 8, as torchvision keeps
#: a ResNet's stem and layer1), ``lower`` (the backbone up to its stride-16 features: its
#: last stage, the pyramid and the heads learn), ``backbone`` (all of it: only the pyramid and
#: heads learn), ``none``. With ``lower`` or ``backbone`` and ``--augment none|flip`` the
#: frozen features are computed once (:mod:`vitrina.detect.cache`).
FREEZE = ("stem", "lower", "backbone", "none")
OPTIMIZERS = ("adamw", "sgd")
WEIGHTS = ("imagenet", "none")  # the backbone's start
#: ``--precision``: training's own choices but fp64 (torchvision's box ops are float32).
PRECISIONS = tuple(p for p in TRAIN_PRECISIONS if p != "fp64")


def parse_size(text: str | int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """The deprecated ``--size`` / ``size=`` reading, WIDTHxHEIGHT (the opposite of every other
    vitrina size): ``"320"`` -> (320, 320); ``"416x320"`` -> (320, 416) as (h, w). A tuple or
    list is already (h, w)."""
    if isinstance(text, int):
        return (text, text)
    if isinstance(text, tuple | list):
        h, w = (int(v) for v in text)
        return (h, w)
    try:
        parts = [int(v) for v in str(text).lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        return (parts[0], parts[0])
    if len(parts) == 2:
        return (parts[1], parts[0])
    raise VitrinaError(f"--size {text!r}: give one number (320) or width x height (416x320)")


def size_from_options(
    input_size: tuple[int, int] | list[int] | None, size: str | None
) -> tuple[tuple[int, int] | None, str | None]:
    """``(input_size, deprecation)`` from ``--input-size`` (HEIGHTxWIDTH, as every vitrina
    size) and the deprecated ``--size`` (WIDTHxHEIGHT). ``--size`` keeps its old meaning (a
    value never silently changes sense) and comes back with a one-line deprecation note
    giving the ``--input-size`` that says the same; both given and different raise."""
    hw = None if input_size is None else (int(input_size[0]), int(input_size[1]))
    if size is None:
        return hw, None
    old = parse_size(size)
    if hw is not None and hw != old:
        raise VitrinaError(
            f"--size {size} (WIDTHxHEIGHT, deprecated) and --input-size {hw[0]}x{hw[1]} "
            "(HEIGHTxWIDTH) disagree: give --input-size only"
        )
    note = (
        f"--size is deprecated: it reads WIDTHxHEIGHT, the opposite of every other vitrina "
        f"size; --size {size} is --input-size {old[0]}x{old[1]} (HEIGHTxWIDTH)"
    )
    return old, note


@dataclass
class DetectTrainConfig:
    """Options of ``vitrina detect train`` (defined once: the CLI, the API and the run read
    this). ``None`` means "choose" (see :meth:`resolved`)."""

    data_dir: str
    arch: str = "fasterrcnn"
    backbone: str = "efficientnet_lite0"
    weights: str = "imagenet"  # the backbone's: imagenet or none
    #: (height, width), multiples of 32; ``None``: fitted to the training photos
    #: (:func:`fit_input_size`)
    input_size: tuple[int, int] | None = None
    epochs: int = 12
    batch_size: int = 8
    lr: float | None = None
    optimizer: str = "adamw"
    #: ``None``: 0.05 with adamw (measured on 800 photos against 1e-4: its own photos at
    #: mAP@.5 0.973 instead of 0.992, +0.5 points held out, +4.7 zoomed out), 1e-4 with sgd
    weight_decay: float | None = None
    #: stochastic depth of the backbone's residual blocks in training (``DetectorSpec.
    #: drop_path``); 0: none
    drop_path: float = 0.0
    augment: str = "light"
    #: multiples of ``input_size`` to train at, one drawn per batch (multi-scale training);
    #: ``None``: :data:`DEFAULT_TRAIN_SCALES` with ``augment`` light, strong or mosaic, the input
    #: size only with none or flip (whose frozen features may be computed once, at one
    #: size); ``(1.0,)``: the input size only
    train_scales: tuple[float, ...] | None = None
    freeze: str = "stem"
    precision: str = "fp32"
    fpn_channels: int = 128
    #: the overlap (IoU) above which non-maximum suppression keeps only the best of two boxes
    #: of a class (``DetectorSpec.nms_thresh``); ``None``: fitted to the training boxes
    #: (:func:`~vitrina.detect.fitted.fit_nms_iou`)
    nms_iou: float | None = None
    #: Faster R-CNN's class logits are divided by it before the softmax that scores its boxes
    #: (``DetectorSpec.score_temperature``); ``None``: fitted on the validation photos after
    #: training (:func:`~vitrina.detect.fitted.fit_score_temperature`), without them
    #: :data:`~vitrina.detect.fitted.DEFAULT_SCORE_TEMPERATURE`; other heads: 1
    score_temperature: float | None = None
    seed: int = 0
    out: str | None = None
    val_dir: str | None = None
    val_fraction: float = 0.2
    patience: int = 5
    #: keep an exponential moving average of the weights during training; the run saves it
    #: (:class:`~vitrina.training.averaging.AveragedWeights`)
    ema: bool = False
    time_budget: float | None = None  # minutes; the run ends with the step that passes it
    budget_clock: str = "wall"  # or "process": this process's CPU time (benchmarks)
    format: str | None = None
    classes: str | None = None
    num_workers: int | None = None
    device: str = "auto"
    #: Deprecated: ``"WIDTHxHEIGHT"`` or ``"320"`` (use ``input_size``, (height, width)).
    #: Still read with its old meaning, with a ``FutureWarning``; runs record ``input_size``.
    size: str | None = None

    def resolved(self) -> DetectTrainConfig:
        """Check every choice and fill defaults; raise :class:`VitrinaError` if bad."""

        def choice(name: str, value: str, options: tuple[str, ...]) -> None:
            if value not in options:
                raise VitrinaError(
                    f"--{name.replace('_', '-')} {value!r} is not one of {', '.join(options)}"
                    f"{suggest(value, list(options))}"
                )

        choice("arch", self.arch, tuple(HEADS.names()))
        choice("augment", self.augment, BOX_AUGMENTS)
        choice("freeze", self.freeze, FREEZE)
        choice("optimizer", self.optimizer, OPTIMIZERS)
        choice("precision", self.precision, PRECISIONS)
        choice("budget_clock", self.budget_clock, tuple(CLOCKS))
        if self.weights not in WEIGHTS:
            raise VitrinaError(
                f"--weights {self.weights!r}: the backbone starts from imagenet or none"
            )
        c = DetectTrainConfig(**asdict(self))
        hw, note = size_from_options(c.input_size, c.size)
        if note:
            warnings.warn(note.replace("--size", "size=", 1), FutureWarning, stacklevel=2)
        c.input_size, c.size = hw, None
        if hw is not None:
            DetectorSpec(head=c.arch, backbone=c.backbone, num_classes=1, input_size=hw)
        if c.lr is None:
            c.lr = {"adamw": 3e-4, "sgd": 0.02}[c.optimizer]
        if c.weight_decay is None:
            c.weight_decay = {"adamw": 0.05, "sgd": 1e-4}[c.optimizer]
        for name, value, ok in (
            ("epochs", c.epochs, c.epochs >= 1),
            ("batch-size", c.batch_size, c.batch_size >= 1),
            ("lr", c.lr, c.lr > 0),
            ("weight-decay", c.weight_decay, c.weight_decay >= 0),
            ("drop-path", c.drop_path, 0 <= c.drop_path < 1),
            ("val-fraction", c.val_fraction, 0 <= c.val_fraction < 1),
            ("fpn-channels", c.fpn_channels, c.fpn_channels >= 32 and c.fpn_channels % 32 == 0),
            ("nms-iou", c.nms_iou, c.nms_iou is None or 0 < c.nms_iou < 1),
            (
                "score-temperature",
                c.score_temperature,
                c.score_temperature is None or 0 < c.score_temperature <= 4,
            ),
            ("time-budget", c.time_budget, c.time_budget is None or c.time_budget > 0),
            (
                "train-scales",
                ",".join(f"{v:g}" for v in c.train_scales or ()),
                c.train_scales is None
                or (len(c.train_scales) > 0 and all(0.25 <= v <= 4 for v in c.train_scales)),
            ),
        ):
            if not ok:
                raise VitrinaError(f"--{name} {value} is out of range")
        if c.score_temperature not in (None, 1.0) and c.arch not in TEMPERED_HEADS:
            raise VitrinaError(
                f"--score-temperature {c.score_temperature:g}: it tempers Faster R-CNN's softmax "
                f"box head only, not {c.arch}'s scores (leave it out)"
            )
        if c.weights == "none" and c.freeze != "none":
            raise VitrinaError(
                "--weights none trains the backbone from scratch: it cannot be frozen "
                "(use --freeze none)"
            )
        if c.out is None:
            c.out = str(Path("runs") / f"{Path(c.data_dir).resolve().name}-{c.arch}-{c.backbone}")
        return c

    def spec(self, num_classes: int) -> DetectorSpec:
        if self.input_size is None:
            raise VitrinaError("input_size is fitted to the photos first (fit_input_size)")
        return DetectorSpec(
            head=self.arch,
            backbone=self.backbone,
            num_classes=num_classes,
            input_size=tuple(self.input_size),
            fpn_channels=self.fpn_channels,
            drop_path=self.drop_path,
            **({} if self.nms_iou is None else {"nms_thresh": float(self.nms_iou)}),
            score_temperature=(
                default_score_temperature(self.arch)
                if self.score_temperature is None
                else float(self.score_temperature)
            ),
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_size"] = None if self.input_size is None else list(self.input_size)
        d["train_scales"] = None if self.train_scales is None else list(self.train_scales)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DetectTrainConfig:
        """From a run's ``vitrina.json``; a run written before ``input_size`` recorded
        ``size`` as WIDTHxHEIGHT, read with that meaning (no warning: nothing to fix)."""
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        if d.get("size") is not None and "input_size" not in d:
            d["input_size"] = parse_size(d["size"])
        d["size"] = None
        if d.get("input_size") is not None:
            d["input_size"] = tuple(int(v) for v in d["input_size"])
        if d.get("train_scales") is not None:
            d["train_scales"] = tuple(float(v) for v in d["train_scales"])
        return cls(**d)


#: Multi-scale training by default (``--train-scales``). Measured on the groceries' held-out
#: photos (Faster R-CNN at 224, 28 wall-minutes, AVX2): as they are 0.648 -> 0.644 mAP@.5
#: (one epoch fewer in the same minutes), zoomed out to 60% 0.512 -> 0.560, zoomed in 1.4x
#: 0.540 -> 0.554, with test-time flips and scales 0.690 -> 0.697.
DEFAULT_TRAIN_SCALES = (0.75, 1.0, 1.25)


def _trial_step(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """One training step's losses for ``--precision auto``'s trial: a box in the middle of
    each (random) image, of the first class."""
    h, w = x.shape[-2:]
    box = torch.tensor([[0.25 * w, 0.25 * h, 0.75 * w, 0.75 * h]], device=x.device)
    one = torch.zeros(1, dtype=torch.int64, device=x.device)
    losses = model.losses(x, [{"boxes": box, "labels": one} for _ in range(len(x))])  # type: ignore[operator]
    return sum(v.float() for v in losses.values())  # type: ignore[return-value]


def _precision(
    requested: str, model: Detector, device: torch.device, batch_size: int, cached: bool
) -> PrecisionChoice:
    """``requested``, or for ``auto`` what :func:`choose_precision` measures on training steps
    of this detector (its frozen part frozen) at its input size."""
    if requested == "auto" and cached:
        return PrecisionChoice(
            "fp32",
            "the frozen layers' features are cached (--freeze lower or backbone): auto times "
            "whole-network steps only; --precision bf16 tries it",
        )
    return choose_precision(requested, model, device, batch_size, step=_trial_step)


class DetectionTrainTask:
    """torchvision's detection losses (summed) per batch; COCO mAP on a validation loader.
    Batches of cached features (:class:`~vitrina.detect.cache.CachedBatch`) run the detector
    from the backbone's ``c<level>`` maps, through ``upper`` when part of the backbone learns."""

    def __init__(self, classes: list[str], upper: nn.Module | None = None, level: int = 2) -> None:
        self.classes = classes
        self.upper = upper
        self.level = level
        self.parts: dict[str, float] = {}
        self.seen = 0
        self.last_metrics: DetectionMetrics | None = None

    def set_train_mode(self, model: nn.Module) -> None:
        model.train()  # the Detector keeps its backbone's batch norms in eval mode
        self.parts, self.seen = {}, 0

    def step(self, model: nn.Module, batch: Any) -> StepOutput:
        device = batch.images.device
        targets = [{k: v.to(device) for k, v in t.items()} for t in batch.targets]
        if isinstance(batch, CachedBatch):
            losses = run_cached(
                model,  # type: ignore[arg-type]
                self.upper,
                self.level,
                batch,
                lambda x: model.losses(x, targets),  # type: ignore[operator]
            )
        else:
            losses = model.losses(batch.images, targets)  # type: ignore[operator]
        loss = sum(v.float() for v in losses.values())
        n = len(targets)
        for k, v in losses.items():
            name = k if k.startswith("loss_") else f"loss_{k}"
            self.parts[name] = self.parts.get(name, 0.0) + float(v.detach()) * n
        self.seen += n
        return StepOutput(loss, n, None)

    def epoch_parts(self) -> dict[str, float]:
        return {k: v / max(self.seen, 1) for k, v in self.parts.items()}

    @torch.no_grad()
    def predict(self, model: nn.Module, loader: Any) -> tuple[list, list]:
        model.eval()
        device = next(model.parameters()).device
        gts, preds = [], []
        for batch in loader:
            if batch.images.numel() == 0:
                continue
            x = batch.images.to(device)
            if isinstance(batch, CachedBatch):
                found = run_cached(model, self.upper, self.level, batch, model.boxes)  # type: ignore[arg-type]
            else:
                found = model.boxes(x)  # type: ignore[operator]
            for rows, t in zip(found, batch.targets, strict=True):
                r = rows.float().cpu().numpy().reshape(-1, 6)
                preds.append((r[:, :4], r[:, 4], np.rint(r[:, 5]).astype(np.int64)))
                gts.append((t["boxes"].numpy(), t["labels"].numpy()))
        return gts, preds

    def evaluate(self, model: nn.Module, loader: Any) -> dict[str, float]:
        gts, preds = self.predict(model, loader)
        if not gts:
            return {}
        m = coco_metrics(gts, preds, self.classes)
        self.last_metrics = m
        return {"val_mAP": _finite(m.mAP), "val_mAP50": _finite(m.mAP50)}


def _finite(v: float) -> float:
    return 0.0 if v != v else float(v)


def _fit_temperature(
    cfg: DetectTrainConfig,
    best: nn.Module,
    val_loader: Any,
    val_photos: list,
    classes: list,
    given: str = "given",
) -> tuple[str, dict[float, float]]:
    """Set the trained detector's class-score temperature (``--score-temperature``: given, or
    fitted on the validation photos, or the default without them); say why (``given``: why a
    value in the config is there), and give the validation mAP@[.5:.95] of each one tried."""
    if cfg.score_temperature is not None:
        return f"--score-temperature {cfg.score_temperature:g}: {given}", {}
    if cfg.arch not in TEMPERED_HEADS:
        return f"--score-temperature 1: {cfg.arch} scores its boxes without a temperature", {}
    default = default_score_temperature(cfg.arch)
    if val_loader is None:
        return (
            f"--score-temperature {default:g}: the default (no validation photos to fit it on); "
            "give --score-temperature to choose"
        ), {}
    task = DetectionTrainTask(classes)

    def validation_map(t: float) -> float:
        best.set_score_temperature(t)  # type: ignore[operator]
        task.evaluate(best, val_loader)
        return _finite(task.last_metrics.mAP) if task.last_metrics is not None else 0.0

    n_boxes = sum(len(p.boxes) for p in val_photos)
    t, note, tried = fit_score_temperature(validation_map, n_boxes)
    best.set_score_temperature(t)  # type: ignore[operator]
    return note, tried


class _LossParts(Callback):
    """Adds each loss term's epoch mean (``loss_classifier``...) to the epoch's record."""

    def __init__(self, task: DetectionTrainTask) -> None:
        self.task = task

    def on_epoch_end(self, state: LoopState, record: dict[str, Any]) -> None:
        record.update(self.task.epoch_parts())


class _StepSchedule(Callback):
    """Steps a per-iteration LR schedule (linear warm-up, then cosine) after each batch."""

    def __init__(self, scheduler: torch.optim.lr_scheduler.LRScheduler) -> None:
        self.scheduler = scheduler

    def on_batch_end(self, state: LoopState) -> None:
        self.scheduler.step()


class _ReseedShuffle(Callback):
    def __init__(self, generator: torch.Generator, seed: int) -> None:
        self.generator, self.seed = generator, seed

    def on_epoch_start(self, state: LoopState) -> None:
        self.generator.manual_seed(self.seed * 100_003 + state.epoch)


class WarmupCosine:
    """LR factor at iteration ``i``: linear warm-up over ``warmup`` iterations from 1/1000,
    then a cosine to 1/100 at ``total`` — or earlier, at the end of a time budget:
    ``spent`` (the share of the budget used, set as training goes) advances the cosine when
    the clock is ahead of the iterations. Picklable: a resume point stores its state."""

    def __init__(self, total: int, warmup: int) -> None:
        self.total, self.warmup = max(total, 1), max(warmup, 1)
        self.spent = 0.0

    def __call__(self, i: int) -> float:
        progress = min(1.0, max(i / self.total, self.spent))
        w = self.warmup / self.total
        if progress < w:
            return 1e-3 + (1 - 1e-3) * progress / w
        t = (progress - w) / max(1.0 - w, 1e-9)
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t))


CLOCKS = {"wall": time.perf_counter, "process": time.process_time}


class _TimeBudget(Callback):
    """Stops training after the step in which ``seconds`` have passed on ``clock`` (since
    ``start``: feature caching counts), mid-epoch if need be, moving the LR cosine along with
    the clock so that it reaches its floor then. (Until 5 Dec 2026 the run went on to the end
    of that epoch at the floor's learning rate: a minute over the budget, spent on the
    smallest steps.)"""

    def __init__(self, seconds: float, clock: str, start: float, schedule: WarmupCosine) -> None:
        self.seconds, self.clock, self.start, self.schedule = (
            seconds,
            CLOCKS[clock],
            start,
            schedule,
        )

    def spent(self) -> float:
        return (self.clock() - self.start) / self.seconds

    def on_batch_end(self, state: LoopState) -> None:
        spent = self.spent()
        self.schedule.spent = min(1.0, spent)
        if spent >= 1.0:
            state.stop = True

    def on_epoch_end(self, state: LoopState, record: dict[str, Any]) -> None:
        if self.spent() >= 1.0:
            state.stop = True
            record["time_budget_reached"] = True


def _loader(
    photos: list, model: Detector, augment: str, cfg: DetectTrainConfig, *, shuffle: bool, g: Any
) -> DataLoader:
    """Decoding placed by measurement (:mod:`vitrina.training.feeding`): on a CPU a
    detector's step costs ~100x the decoding of its photos (Faster R-CNN at 320: 1.5 s for 8
    photos, their decoding and augmentation ~40 ms), so it decodes in this process there."""
    ds = PhotoBoxes(photos, model.preprocess, augment)
    sizes = scaled_sizes(tuple(model.preprocess.input_size), cfg.train_scales or (1.0,))
    if shuffle and len(sizes) > 1:
        return training_loader(
            ds,
            num_workers=cfg.num_workers,
            device=next(model.parameters()).device,
            batch_sampler=ScaledBatches(len(ds), cfg.batch_size, sizes, g),
            collate_fn=collate_boxes,
        )
    return training_loader(
        ds,
        num_workers=cfg.num_workers,
        device=next(model.parameters()).device,
        batch_size=cfg.batch_size,
        shuffle=shuffle,
        collate_fn=collate_boxes,
        generator=g,
        drop_last=shuffle and len(ds) > cfg.batch_size,
    )


def _read_sets(cfg: DetectTrainConfig) -> tuple[AnnotatedSet, list, list, AnnotatedSet | None]:
    data = read_annotated(cfg.data_dir, fmt=cfg.format, classes=cfg.classes)
    if not data.num_boxes:
        raise DataError(f"{cfg.data_dir}: no valid box in any photo; nothing to learn from")
    if cfg.val_dir:
        val_set = read_annotated(cfg.val_dir, classes=data.classes)
        return data, data.photos, val_set.photos, val_set
    train, val = split_photos(data.photos, cfg.val_fraction, cfg.seed)
    return data, train, val, None


def train_detector(
    cfg: DetectTrainConfig,
    *,
    resume: bool = False,
    progress: bool = True,
    extra_callbacks: list[Callback] | None = None,
    fast_paths: bool = True,
) -> TrainResult:
    """Train (or resume) a detector; the run folder holds the best weights by validation
    mAP@[.5:.95] (by training loss without validation photos), plots and metrics.

    Fast path (``fast_paths=False`` runs the plain loop, which gives the same weights): with
    ``freeze`` ``lower`` or ``backbone`` and ``augment`` ``none`` or ``flip``, the frozen
    features of every photo are computed once (:mod:`vitrina.detect.cache`).

    ``TrainResult.bad_files`` lists every problem met: unreadable photos (training goes on
    without them) and the boxes skipped while reading the annotations.

    One process only: refused under torchrun (``WORLD_SIZE`` > 1), before any work.
    """
    single_process("vitrina detect train")
    saved: dict[str, Any] = {}
    temperature_given = "given"
    if resume:
        out = Path(cfg.out or "")
        if not is_run_dir(out) and not (out / CKPT_DIR).is_dir():
            raise RunFolderError(f"{out}: nothing to resume (no run there)")
        saved = read_run(out).config if is_run_dir(out) else {}
        if saved:
            epochs = cfg.epochs
            cfg = DetectTrainConfig.from_dict(saved)
            cfg.epochs = epochs
            if "train_scales" not in saved:  # made before multi-scale training: one size
                cfg.train_scales = (1.0,)
            if "nms_iou" not in saved:  # made before it was fitted: what the run had
                cfg.nms_iou = float(saved.get("detector", {}).get("nms_thresh", 0.5))
            if "score_temperature" not in saved:  # made before it was fitted: as it scored
                detector = saved.get("detector", {})
                cfg.score_temperature = float(detector.get("score_temperature", 1.0))
                temperature_given = "the run's own (made before it was fitted)"
    cfg = cfg.resolved()
    assert cfg.lr is not None
    clock_start = CLOCKS[cfg.budget_clock]()
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    data, train_photos, val_photos, _ = _read_sets(cfg)
    # what is fitted to the training photos when not given (a resumed run keeps its reasons)
    input_note = str(saved.get("input_size_choice", ""))
    nms_note = str(saved.get("nms_iou_choice", ""))
    fitted: list[str] = []
    if cfg.input_size is None:
        cfg.input_size, input_note = fit_input_size(train_photos)
        fitted.append(input_note)
    if cfg.nms_iou is None:
        cfg.nms_iou, nms_note = fit_nms_iou(train_photos)
        fitted.append(nms_note)
    if progress and fitted:
        from rich.console import Console

        Console(stderr=True).print("\n".join(fitted), markup=False, highlight=False)
    out = prepare_out(Path(cfg.out or "runs/detect"), resume)

    spec = cfg.spec(len(data.classes))
    model = create_detector(spec, pretrained_backbone=cfg.weights == "imagenet")
    model.class_names = list(data.classes)
    frozen: list[nn.Parameter] = []
    upper: nn.Module | None = None
    level = CUT.get(cfg.freeze, 2)
    # runs made before the stem's norms were frozen resume as they trained (their optimizer
    # holds those norms)
    stem_norms = not saved or bool(saved.get("stem_norms_frozen", False))
    if cfg.freeze == "stem":
        frozen = model.stem_parameters(norms=stem_norms)
    elif cfg.freeze in CUT:
        _, upper = model.split_backbone(level)
        learning = {id(p) for p in upper.parameters()} if upper is not None else set()
        frozen = [p for p in model.net.backbone.body.parameters() if id(p) not in learning]
    for p in frozen:
        p.requires_grad_(False)
    model.to(device)

    shuffle_gen = torch.Generator().manual_seed(cfg.seed)
    if cfg.train_scales is None:  # multi-scale with the augmentations that move pixels
        moving = cfg.augment in MOVING_AUGMENTS
        cfg.train_scales = DEFAULT_TRAIN_SCALES if moving else (1.0,)
    cached = (
        fast_paths
        and tuple(cfg.train_scales) == (1.0,)  # cached features are of one input size
        and cfg.freeze in CUT
        and cfg.augment not in MOVING_AUGMENTS  # none or flip: the cached pixels stay valid
        and FeatureCache.estimate_bytes(
            model, len(train_photos) + len(val_photos), level, cfg.augment == "flip"
        )
        <= CACHE_LIMIT_BYTES
    )
    val_plain = (
        _loader(val_photos, model, "none", cfg, shuffle=False, g=torch.Generator())
        if val_photos
        else None
    )
    cache_started = time.perf_counter()
    if cached:
        workers = default_workers() if cfg.num_workers is None else cfg.num_workers
        if progress:
            from rich.console import Console

            Console(stderr=True).print(
                f"computing the frozen features of {len(train_photos) + len(val_photos)} photos "
                "once (--freeze " + cfg.freeze + ")",
                highlight=False,
            )
        with torch_threads(workers):
            train_cache = FeatureCache.build(
                model,
                train_photos,
                level,
                flip=cfg.augment == "flip",
                batch_size=cfg.batch_size,
                num_workers=workers,
                device=device,
            )
            val_cache = (
                FeatureCache.build(
                    model,
                    val_photos,
                    level,
                    flip=False,
                    batch_size=cfg.batch_size,
                    num_workers=workers,
                    device=device,
                )
                if val_photos
                else None
            )
        cache_errors = [m for _, m in train_cache.errors] + (
            [m for _, m in val_cache.errors] if val_cache is not None else []
        )
        train_loader: Any = CachedBatches(
            train_cache,
            cfg.batch_size,
            shuffle=True,
            flip=cfg.augment == "flip",
            generator=shuffle_gen,
        )
        val_loader: Any = (
            CachedBatches(val_cache, cfg.batch_size, shuffle=False, flip=False)
            if val_cache is not None and len(val_cache)
            else None
        )
    else:
        cache_errors = []
        train_loader = _loader(train_photos, model, cfg.augment, cfg, shuffle=True, g=shuffle_gen)
        val_loader = val_plain
    choice = _precision(cfg.precision, model, device, cfg.batch_size, cached)
    if cfg.precision == "auto":
        record_precision(choice, out)
    cfg.precision = choice.chosen  # the run records what it trained with
    layout = choose_memory_format(
        model, device, cfg.batch_size, precision=cfg.precision, trainable=not cached,
        step=_trial_step,
    )  # fmt: skip
    to_layout(model, layout.chosen)
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        optimizer: torch.optim.Optimizer = torch.optim.SGD(
            params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay
        )
    else:
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = len(train_loader)
    total = steps * cfg.epochs
    schedule = WarmupCosine(total, min(max(steps, 50), total // 3 + 1))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    history: list[dict[str, Any]] = []
    start_epoch = 0
    if resume:
        doc = load_resume_point(out, model, optimizer, scheduler)
        start_epoch, history = int(doc["epoch"]), list(doc["history"])
        schedule = WarmupCosine(total, scheduler.lr_lambdas[0].warmup)
        scheduler.lr_lambdas[0] = schedule
        if start_epoch >= cfg.epochs:
            raise VitrinaError(
                f"{out}: already trained {start_epoch} of {cfg.epochs} epochs; pass a larger "
                "--epochs to go on"
            )

    run_config = {
        **cfg.to_dict(),
        "detector": model.spec.to_dict(),
        **({"input_size_choice": input_note} if input_note else {}),
        **({"nms_iou_choice": nms_note} if nms_note else {}),
        "stem_norms_frozen": stem_norms,
    }
    info = RunInfo(
        arch=spec.arch,
        classes=list(data.classes),
        preprocess=model.preprocess,
        task="detection",
        weights_origin=model.weights_origin,
        data={
            "root": str(Path(cfg.data_dir).resolve()),
            "format": data.format,
            "num_images": len(data.photos),
            "num_boxes": data.num_boxes,
            "boxes_per_class": data.boxes_per_class(),
            "train": len(train_photos),
            "validation": len(val_photos),
            "problems": data.problem_counts(),
        },
        config=run_config,
    )

    def save_best(record: dict[str, Any]) -> None:
        info.metrics = best_metrics(record)
        save_run(out, model, info)

    save_resume = resume_saver(out, model, optimizer, scheduler, curves=plot_detection_curves)

    task = DetectionTrainTask(list(data.classes), upper, level)
    callbacks: list[Callback] = [_LossParts(task)]
    if cfg.time_budget is not None:
        callbacks.append(_TimeBudget(cfg.time_budget * 60, cfg.budget_clock, clock_start, schedule))
    callbacks.append(_StepSchedule(scheduler))
    callbacks += [ProgressBar(accuracy=False)] if progress else []
    callbacks += [
        _ReseedShuffle(shuffle_gen, cfg.seed),
        BestCheckpoint(save_best),
        EarlyStopping(cfg.patience if val_loader is not None else 0),
        MetricsLog(out / "metrics.jsonl"),
        ResumePoint(save_resume),
        *(extra_callbacks or []),
    ]
    average = AveragedWeights(model, start_step=start_epoch * steps) if cfg.ema else None
    if average is not None:  # last: it sees every other callback's batch; epochs end on it
        callbacks.append(average)
    started = time.perf_counter()
    with torch_threads(getattr(train_loader, "num_workers", 0)):
        state = fit(
            model,
            task,
            train_loader,
            val_loader,
            optimizer,
            None,
            epochs=cfg.epochs,
            start_epoch=start_epoch,
            history=history,
            callbacks=callbacks,
            device=device,
            precision=cfg.precision,
            layout=layout.chosen,
        )
    seconds = time.perf_counter() - started
    bad = sorted(set(state.bad_files.values()) | set(cache_errors))

    from vitrina.runs import load_model

    best = load_model(out).to(device)
    best_info = read_run(out)
    plots = out / "plots"
    plot_detection_curves(state.history, plots / "curves.png")
    metrics = dict(best_info.metrics)
    temperature_note, tried = _fit_temperature(
        cfg, best, val_plain, val_photos, list(data.classes), temperature_given
    )
    run_config["detector"] = best.spec.to_dict()  # type: ignore[operator]
    run_config["score_temperature_choice"] = temperature_note
    if tried:
        metrics["score_temperature_val_mAP"] = {f"{t:g}": round(v, 4) for t, v in tried.items()}
    if progress:
        from rich.console import Console

        Console(stderr=True).print(temperature_note, markup=False, highlight=False)
    if val_plain is not None:
        # The whole network on the photos (not the cache): what the saved run will do.
        final = DetectionTrainTask(list(data.classes))
        final.evaluate(best, val_plain)
        m = final.last_metrics
        if m is not None:
            plot_pr_curves(m.pr50, m.ap50, plots / "pr_curves.png")
            metrics["val"] = m.to_dict()
    metrics["epochs_run"] = state.epoch
    metrics.update(decoding_metrics(train_loader))
    metrics["train_seconds"] = round(seconds, 1)
    metrics["cached_features"] = bool(cached)
    if average is not None:
        metrics["ema"] = average.describe()
    metrics["layout"] = layout.describe()
    metrics["budget_seconds"] = round(CLOCKS[cfg.budget_clock]() - clock_start, 1)
    metrics["budget_clock"] = cfg.budget_clock
    metrics["cache_seconds"] = round(started - cache_started, 1)
    metrics["unreadable_files"] = len(bad)
    best_info.metrics = metrics
    best_info.config = run_config
    write_info(out, best_info)
    return TrainResult(
        run_dir=out,
        classes=list(data.classes),
        best_epoch=int(metrics.get("best_epoch", 0)),
        metrics=metrics,
        history=state.history,
        bad_files=bad + [p.message for p in data.problems],
    )
