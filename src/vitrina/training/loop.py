"""One small training loop, driven by a task object and callbacks.

The loop knows nothing about classification or metric learning: the task computes the loss
of a batch and evaluates a loader; callbacks show progress, write metrics, checkpoint and
stop early.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from vitrina.data.dataset import Batch
from vitrina.training.layout import memory_format
from vitrina.training.precision import autocast, param_dtype

__all__ = ["Callback", "LoopState", "StepOutput", "Task", "fit"]


@dataclass
class StepOutput:
    loss: torch.Tensor  # scalar, with grad
    n: int  # examples in the batch
    correct: int | None = 0  # for tasks with an accuracy; None for tasks without one


class Task(Protocol):
    def set_train_mode(self, model: torch.nn.Module) -> None: ...

    def step(self, model: torch.nn.Module, batch: Batch) -> StepOutput: ...

    def evaluate(self, model: torch.nn.Module, loader: Iterable[Batch]) -> dict[str, float]: ...


@dataclass
class LoopState:
    epochs: int
    epoch: int = 0  # 1-based once running
    steps_per_epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    bad_files: dict[str, str] = field(default_factory=dict)  # message by path text
    stop: bool = False
    # running figures of the current epoch
    seen: int = 0
    loss_sum: float = 0.0
    correct: int = 0
    has_accuracy: bool = False
    epoch_start: float = 0.0

    @property
    def train_loss(self) -> float:
        return self.loss_sum / max(self.seen, 1)

    @property
    def train_accuracy(self) -> float:
        return self.correct / max(self.seen, 1)

    @property
    def images_per_s(self) -> float:
        return self.seen / max(time.perf_counter() - self.epoch_start, 1e-9)


class Callback:
    """Hooks; each does one thing. Override what you need."""

    def on_fit_start(self, state: LoopState) -> None: ...

    def on_epoch_start(self, state: LoopState) -> None: ...

    def on_batch_end(self, state: LoopState) -> None:
        """After each optimizer step; setting ``state.stop`` here ends the epoch now."""

    def on_batches_end(self, state: LoopState) -> None:
        """After an epoch's last training step (or the one that stopped it), before its
        validation."""

    def on_bad_file(self, state: LoopState, message: str) -> None: ...

    def on_epoch_end(self, state: LoopState, record: dict[str, Any]) -> None: ...

    def on_fit_end(self, state: LoopState) -> None: ...


def _optimizer_step(
    model: torch.nn.Module,
    task: Task,
    batch: Batch,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    precision: str,
) -> StepOutput:
    """One optimizer step; closure-driven optimizers (L-BFGS) re-evaluate the batch."""
    last: list[StepOutput] = []

    def closure() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, precision):
            out = task.step(model, batch)
        out.loss.backward()
        last.append(out)
        return out.loss

    if isinstance(optimizer, torch.optim.LBFGS):
        optimizer.step(closure)
    else:
        closure()
        optimizer.step()
    return last[-1]


def _recording(
    loader: Iterable[Batch], state: LoopState, callbacks: Sequence[Callback]
) -> Iterable[Batch]:
    """Pass batches through, reporting each unreadable file once to the callbacks."""
    for batch in loader:
        for idx, msg in batch.errors:
            key = msg.split(":", 1)[0] if ":" in msg else str(idx)
            if key not in state.bad_files:
                state.bad_files[key] = msg
                for cb in callbacks:
                    cb.on_bad_file(state, msg)
        yield batch


def fit(
    model: torch.nn.Module,
    task: Task,
    train_loader: Iterable[Batch],
    val_loader: Iterable[Batch] | None,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    *,
    epochs: int,
    start_epoch: int = 0,
    history: Sequence[dict[str, Any]] = (),
    callbacks: Sequence[Callback] = (),
    device: torch.device,
    precision: str = "fp32",
    layout: str = "contiguous",
) -> LoopState:
    """Train for epochs ``start_epoch+1 .. epochs``; returns the final state.

    ``precision``: ``fp32``, ``bf16`` (autocast) or ``fp64`` — the caller converts the model
    (and any loss parameters) to float64 before making the optimizer; the loop moves each
    batch's images to that dtype (see :mod:`vitrina.training.precision`). ``layout``:
    ``contiguous`` or ``channels_last`` — the caller converts the model
    (:func:`~vitrina.training.layout.to_layout`); the loop puts each batch of images in that
    layout (see :mod:`vitrina.training.layout`)."""
    input_dtype = param_dtype(precision)
    image_format = memory_format(layout)
    state = LoopState(epochs=epochs, epoch=start_epoch, history=list(history))
    try:
        state.steps_per_epoch = len(train_loader)  # type: ignore[arg-type]
    except TypeError:
        state.steps_per_epoch = 0
    for cb in callbacks:
        cb.on_fit_start(state)
    for epoch in range(start_epoch + 1, epochs + 1):
        state.epoch = epoch
        state.seen, state.loss_sum, state.correct = 0, 0.0, 0
        state.epoch_start = time.perf_counter()
        task.set_train_mode(model)
        for cb in callbacks:
            cb.on_epoch_start(state)
        decoders = int(getattr(train_loader, "num_workers", 0))  # read before it may change
        for batch in _recording(train_loader, state, callbacks):
            if batch.images.numel() == 0:
                continue
            images = batch.images.to(device, dtype=input_dtype, non_blocking=True)
            if images.dim() == 4 and image_format is not torch.contiguous_format:
                images = images.contiguous(memory_format=image_format)
            batch.images = images
            batch.labels = batch.labels.to(device, non_blocking=True)
            out = _optimizer_step(model, task, batch, optimizer, device, precision)
            state.seen += out.n
            state.loss_sum += float(out.loss.detach()) * out.n
            if out.correct is not None:
                state.correct += out.correct
                state.has_accuracy = True
            for cb in callbacks:
                cb.on_batch_end(state)
            if state.stop:  # a callback ended training here (a time budget), mid-epoch
                break
        for cb in callbacks:
            cb.on_batches_end(state)
        record: dict[str, Any] = {
            "epoch": epoch,
            "lr": optimizer.param_groups[0]["lr"],
            "train_loss": state.train_loss,
            "images_per_s": state.images_per_s,
            # where this epoch decoded (0: in this process; see vitrina.training.feeding)
            "decode_processes": decoders,
        }
        if state.has_accuracy:
            record["train_accuracy"] = state.train_accuracy
        if scheduler is not None:
            scheduler.step()
        if val_loader is not None:
            with autocast(device, precision):
                record.update(task.evaluate(model, _recording(val_loader, state, callbacks)))
        state.history.append(record)
        for cb in callbacks:
            cb.on_epoch_end(state, record)
        if state.stop:
            break
    for cb in callbacks:
        cb.on_fit_end(state)
    return state
