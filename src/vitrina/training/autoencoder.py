"""Learn features without labels: a convolutional autoencoder on a folder of photos.

Any zoo backbone is the encoder (:class:`vitrina.models.autoencoder.Autoencoder`); the loss is
the mean squared error between the photo the encoder saw (normalised, augmented) and its
reconstruction. The best epoch (lowest reconstruction error on held-out photos) is kept.

The run folder holds the *encoder* (``task: "encoder"`` in ``vitrina.json``, no classifier,
no classes): ``vitrina embed`` / ``index`` / ``search`` read its embedding like any run's,
and ``vitrina train --arch ARCH --weights RUN`` starts from it ("pretrain without labels,
fine-tune with few labels"). Next to it: ``decoder.safetensors`` (the decoder's weights),
``plots/reconstructions/epoch-NNN.png`` (held-out photos and their reconstructions, one
picture per epoch), ``plots/curves.png`` and ``metrics.jsonl``.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save as st_save
from torch.utils.data import DataLoader

from vitrina.data import ImageFiles, Sample, collate_skip_bad, eval_transform, train_transform
from vitrina.data.folder import iter_image_files
from vitrina.data.transforms import AUGMENTS
from vitrina.engine import resolve_device, torch_threads
from vitrina.errors import DataError, RunFolderError, VitrinaError
from vitrina.io import atomic_write_bytes
from vitrina.models import Preprocess, VitrinaModel, check_input_size, create
from vitrina.models.autoencoder import Autoencoder
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
from vitrina.training.classification import data_fingerprint, prepare_out
from vitrina.training.distributed import single_process
from vitrina.training.feeding import decoding_metrics, training_loader
from vitrina.training.layout import choose_memory_format, to_layout
from vitrina.training.loop import Callback, LoopState, StepOutput, fit
from vitrina.training.precision import (
    check_precision,
    choose_precision,
    loss_dtype,
    model_dtype,
    param_dtype,
    record_precision,
)

__all__ = ["AutoencoderConfig", "AutoencoderResult", "ReconstructionTask", "train_autoencoder"]

DECODER_FILE = "decoder.safetensors"
PICTURE_PHOTOS = 8  # held-out photos shown with their reconstructions each epoch


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class AutoencoderConfig:
    """Options of ``vitrina train-autoencoder`` (help in each field's metadata)."""

    data_dir: str = field(metadata=_help("Folder of photos (sub-folders too; labels unused)."))
    arch: str = field(default="resnet18", metadata=_help("Encoder: any `vitrina zoo` name."))
    weights: str | None = field(
        default=None,
        metadata=_help(
            "Encoder start: none (learn without labels from scratch), imagenet, a weights "
            "file or a run folder."
        ),
    )
    input_size: tuple[int, int] | None = field(
        default=None,
        metadata=_help(
            "HEIGHTxWIDTH the photos are resized and center-cropped to (default: the "
            "encoder's; 64x64 trains a ResNet-18 in minutes on a CPU)."
        ),
    )
    width: int = field(
        default=128, metadata=_help("Channels of the decoder's first 4x4 map (halved per 2x).")
    )
    epochs: int = field(default=30, metadata=_help("Epochs (each photo once per epoch)."))
    batch_size: int = field(default=32, metadata=_help("Photos per step."))
    lr: float = field(default=1e-3, metadata=_help("AdamW learning rate (cosine decay)."))
    weight_decay: float = field(default=1e-4, metadata=_help("AdamW weight decay."))
    augment: str = field(
        default="light",
        metadata=_help("Augmentation of the inputs (and targets): none, light or standard."),
    )
    precision: str = field(
        default="fp32",
        metadata=_help(
            "fp64, fp32, bf16 (autocast) or auto (bf16 where it measures faster, else fp32); "
            "the run stores fp32 weights."
        ),
    )
    val_fraction: float = field(
        default=0.1,
        metadata=_help("Share of photos held out to pick the best epoch and to draw."),
    )
    patience: int = field(
        default=0, metadata=_help("Stop after this many epochs without a lower held-out error.")
    )
    seed: int = field(default=0, metadata=_help("Seed for the split, init and shuffling."))
    out: str | None = field(default=None, metadata=_help("Run folder to create."))
    num_workers: int | None = field(default=None, metadata=_help("Image decoding processes."))
    device: str = field(default="auto", metadata=_help("auto, cpu, cuda, cuda:1..."))

    def resolved(self) -> AutoencoderConfig:
        c = AutoencoderConfig(**asdict(self))
        if c.weights in ("none", ""):
            c.weights = None
        if c.augment not in AUGMENTS:
            raise VitrinaError(
                f"--augment {c.augment!r} is not one of {', '.join(AUGMENTS)}"
                f"{suggest(c.augment, list(AUGMENTS))}"
            )
        check_precision(c.precision)
        for name, value, ok in (
            ("epochs", c.epochs, c.epochs >= 1),
            ("batch-size", c.batch_size, c.batch_size >= 2),
            ("lr", c.lr, c.lr > 0),
            ("width", c.width, c.width >= 16),
            ("val-fraction", c.val_fraction, 0 <= c.val_fraction < 1),
        ):
            if not ok:
                raise VitrinaError(f"--{name} {value} is out of range")
        if c.input_size is not None:
            c.input_size = (int(c.input_size[0]), int(c.input_size[1]))
            if min(c.input_size) < 16:
                raise VitrinaError(f"--input-size {c.input_size} is too small (min 16)")
            check_input_size(c.arch, c.input_size)  # a fixed-size network: before any work
        if c.out is None:
            c.out = str(Path("runs") / f"{Path(c.data_dir).resolve().name}-{c.arch}-autoencoder")
        return c

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_size"] = list(self.input_size) if self.input_size else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AutoencoderConfig:
        known = {f.name for f in fields(cls)}
        c = cls(**{k: v for k, v in d.items() if k in known})
        if c.input_size is not None:
            c.input_size = (int(c.input_size[0]), int(c.input_size[1]))
        return c


@dataclass
class AutoencoderResult:
    run_dir: Path
    best_epoch: int
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    photos: int = 0
    bad_files: list[str] = field(default_factory=list)


class ReconstructionTask:
    """Mean squared error between the input and its reconstruction (no accuracy)."""

    def set_train_mode(self, model: torch.nn.Module) -> None:
        model.train()

    def step(self, model: torch.nn.Module, batch: Any) -> StepOutput:
        recon, _ = model(batch.images)
        loss = F.mse_loss(loss_dtype(recon), loss_dtype(batch.images))
        return StepOutput(loss, len(batch.images), None)

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, loader: Any) -> dict[str, float]:
        model.eval()
        device = next(model.parameters()).device
        dtype = model_dtype(model)
        total, n = 0.0, 0
        for batch in loader:
            if batch.images.numel() == 0:
                continue
            x = batch.images.to(device, dtype=dtype)
            recon, _ = model(x)
            total += float(F.mse_loss(loss_dtype(recon), loss_dtype(x), reduction="sum"))
            n += x.numel()
        return {"val_loss": total / n} if n else {}


def _to_pixels(x: torch.Tensor, pre: Preprocess) -> np.ndarray:
    """Normalised ``(B, C, H, W)`` -> ``(B, H, W, C)`` float in [0, 1]."""
    mean = torch.tensor(pre.mean).view(1, -1, 1, 1)
    std = torch.tensor(pre.std).view(1, -1, 1, 1)
    return (x.detach().float().cpu() * std + mean).clamp(0, 1).permute(0, 2, 3, 1).numpy()


class _Reconstructions(Callback):
    """After each epoch: ``plots/reconstructions/epoch-NNN.png``, held-out photos (top) and
    their reconstructions (bottom)."""

    def __init__(self, model: Autoencoder, images: torch.Tensor, folder: Path) -> None:
        self.model, self.images, self.folder = model, images, folder

    @torch.no_grad()
    def on_epoch_end(self, state: LoopState, record: dict[str, Any]) -> None:
        from vitrina.report.sheets import write_image_rows

        if not len(self.images):
            return
        was = self.model.training
        self.model.eval()
        p = next(self.model.parameters())
        recon, _ = self.model(self.images.to(p.device, dtype=p.dtype))
        self.model.train(was)
        pre = self.model.encoder.preprocess
        loss = record.get("val_loss", record["train_loss"])
        write_image_rows(
            [("photo", _to_pixels(self.images, pre)), ("reconstruction", _to_pixels(recon, pre))],
            self.folder / f"epoch-{state.epoch:03d}.png",
            title=f"epoch {state.epoch}: reconstruction error (MSE) {loss:.4f}",
        )


def _encoder(cfg: AutoencoderConfig) -> VitrinaModel:
    if cfg.weights and is_run_dir(cfg.weights):
        m = load_model(cfg.weights)
        return getattr(m, "net", m) if read_run(cfg.weights).task == "embedding" else m
    return create(cfg.arch, weights=cfg.weights)


def _preprocess(pre: Preprocess, size: tuple[int, int] | None, name: str) -> Preprocess:
    pre.check_size(size, name)  # a fixed-size network (e.g. from a run folder): one line
    if size is None:
        return pre
    return Preprocess(
        input_size=size,
        channels=pre.channels,
        mean=pre.mean,
        std=pre.std,
        crop_pct=pre.crop_pct,
        interpolation=pre.interpolation,
    )


def _split(paths: list[Path], fraction: float, seed: int) -> tuple[list[Path], list[Path]]:
    n_val = round(len(paths) * fraction)
    if fraction <= 0 or n_val < 1 or len(paths) - n_val < 2:
        return paths, []
    order = list(range(len(paths)))
    random.Random(seed).shuffle(order)
    val = sorted(order[:n_val])
    keep = set(val)
    return [p for i, p in enumerate(paths) if i not in keep], [paths[i] for i in val]


def _loader(
    paths: list[Path],
    transform: Any,
    cfg: AutoencoderConfig,
    device: torch.device,
    *,
    shuffle: bool,
    g: Any,
) -> DataLoader:
    ds = ImageFiles(paths, [0] * len(paths), transform)
    return training_loader(
        ds,
        num_workers=cfg.num_workers,
        device=device,
        batch_size=cfg.batch_size,
        shuffle=shuffle,
        drop_last=shuffle and len(ds) > cfg.batch_size,  # BN needs more than one image
        collate_fn=collate_skip_bad,
        generator=g,
    )


class _Reseed(Callback):
    def __init__(self, generator: torch.Generator, seed: int) -> None:
        self.generator, self.seed = generator, seed

    def on_epoch_start(self, state: LoopState) -> None:
        self.generator.manual_seed(self.seed * 100_003 + state.epoch)


def train_autoencoder(
    cfg: AutoencoderConfig,
    *,
    resume: bool = False,
    progress: bool = True,
    extra_callbacks: list[Callback] | None = None,
) -> AutoencoderResult:
    """Train (or resume) an autoencoder on the photos of ``cfg.data_dir``; the run folder
    holds its encoder (see the module docstring). One process only: refused under torchrun."""
    single_process("vitrina train-autoencoder")
    if resume:
        out = Path(cfg.out or "")
        if not (out / CKPT_DIR).is_dir():
            raise RunFolderError(f"{out}: nothing to resume (no {CKPT_DIR}/ there)")
        if is_run_dir(out):
            epochs = cfg.epochs
            cfg = AutoencoderConfig.from_dict(read_run(out).config)
            cfg.epochs = epochs
    cfg = cfg.resolved()
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    root = Path(cfg.data_dir)
    paths, _, _ = iter_image_files(root, recursive=True)
    if len(paths) < 2:
        raise DataError(f"{root}: {len(paths)} photos; an autoencoder needs at least 2")
    train_paths, val_paths = _split(paths, cfg.val_fraction, cfg.seed)
    encoder = _encoder(cfg)
    encoder.preprocess = _preprocess(encoder.preprocess, cfg.input_size, cfg.arch)
    out = prepare_out(Path(cfg.out or "runs/autoencoder"), resume)
    pre = encoder.preprocess
    model = Autoencoder(encoder, width=cfg.width)
    model.to(device=device, dtype=param_dtype(cfg.precision))
    choice = choose_precision(cfg.precision, model, device, cfg.batch_size, preprocess=pre)
    if cfg.precision == "auto":
        record_precision(choice, out)
    cfg.precision = choice.chosen
    layout = choose_memory_format(
        model, device, cfg.batch_size, precision=cfg.precision, preprocess=pre
    )
    to_layout(model, layout.chosen)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    shuffle_gen = torch.Generator().manual_seed(cfg.seed)
    train_loader = _loader(
        train_paths, train_transform(pre, cfg.augment), cfg, device, shuffle=True, g=shuffle_gen
    )
    val_loader = (
        _loader(val_paths, eval_transform(pre), cfg, device, shuffle=False, g=torch.Generator())
        if val_paths
        else None
    )
    shown = val_paths or train_paths
    tf = eval_transform(pre)
    pictures = []
    for p in shown:
        if len(pictures) >= PICTURE_PHOTOS:
            break
        try:
            from vitrina.io import read_image

            pictures.append(tf(read_image(p)))
        except VitrinaError:
            continue
    picture_batch = torch.stack(pictures) if pictures else torch.empty(0)

    history: list[dict[str, Any]] = []
    start_epoch = 0
    if resume:
        doc = load_resume_point(out, model, optimizer, scheduler)
        start_epoch, history = int(doc["epoch"]), list(doc["history"])
        scheduler.T_max = cfg.epochs
        if start_epoch >= cfg.epochs:
            raise VitrinaError(
                f"{out}: already trained {start_epoch} of {cfg.epochs} epochs; pass a larger "
                "--epochs to go on"
            )

    samples = [Sample(p, 0) for p in paths]
    info = RunInfo(
        arch=encoder.arch,
        classes=[],
        preprocess=pre,
        task="encoder",
        weights_origin=encoder.weights_origin,
        data={
            "root": str(root.resolve()),
            "fingerprint": data_fingerprint(root, samples, ["photos"]),
            "num_images": len(paths),
            "train": len(train_paths),
            "validation": len(val_paths),
        },
        config={**cfg.to_dict(), "autoencoder": {"decoder": model.decoder.settings()}},
    )

    def save_best(record: dict[str, Any]) -> None:
        info.metrics = best_metrics(record)
        decoder = {
            k: v.detach().cpu().float().contiguous().clone()
            for k, v in model.decoder.state_dict().items()
        }
        atomic_write_bytes(out / DECODER_FILE, st_save(decoder))
        save_run(out, model.encoder, info)

    save_resume = resume_saver(out, model, optimizer, scheduler)

    callbacks: list[Callback] = [ProgressBar(accuracy=False)] if progress else []
    callbacks += [
        _Reseed(shuffle_gen, cfg.seed),
        BestCheckpoint(save_best),
        EarlyStopping(cfg.patience),
        MetricsLog(out / "metrics.jsonl"),
        ResumePoint(save_resume),
        _Reconstructions(model, picture_batch, out / "plots" / "reconstructions"),
        *(extra_callbacks or []),
    ]
    with torch_threads(getattr(train_loader, "num_workers", 0)):
        state = fit(
            model,
            ReconstructionTask(),
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
    from vitrina.report import plot_curves

    plot_curves(state.history, out / "plots" / "curves.png")
    best_info = read_run(out)
    metrics = dict(best_info.metrics)
    metrics["epochs_run"] = state.epoch
    metrics["layout"] = layout.describe()
    metrics.update(decoding_metrics(train_loader))
    metrics["unreadable_files"] = len(state.bad_files)
    best_info.metrics = metrics
    from vitrina.runs import write_info

    write_info(out, best_info)
    return AutoencoderResult(
        run_dir=out,
        best_epoch=int(metrics.get("best_epoch", 0)),
        metrics=metrics,
        history=state.history,
        photos=len(paths),
        bad_files=sorted(state.bad_files.values()),
    )
