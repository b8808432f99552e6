"""Training callbacks: progress, metrics log, best checkpoint, early stopping, resume point."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from vitrina.training.loop import Callback, LoopState

__all__ = [
    "BestCheckpoint",
    "EarlyStopping",
    "MetricsLog",
    "ProgressBar",
    "ResumePoint",
    "TimeBudget",
    "score",
]


def score(record: dict[str, Any]) -> tuple[float, float]:
    """Higher is better. Embeddings: mAP on ``--val-dir`` when there is one (another folder of
    identities decides), else on the held-out identities; of a model with local stripes the
    combined (global + local) mAP, the distance it is used with; ties: rank-1. Detection:
    validation mAP@[.5:.95] (ties: mAP@.5). Classifiers: validation accuracy (ties: lower
    validation loss); the lower validation loss for tasks without accuracy (an autoencoder).
    Training figures when there is no validation set."""
    for prefix in ("valdir_", "val_"):
        if f"{prefix}mAP" in record:
            main = record.get(f"{prefix}mAP_combined", record[f"{prefix}mAP"])
            tie = record.get(f"{prefix}rank1", record.get(f"{prefix}mAP50", 0.0))
            return (main, tie)
    if "val_accuracy" in record:
        return (record["val_accuracy"], -record["val_loss"])
    if "val_loss" in record:  # no accuracy (an autoencoder): the lower held-out loss
        return (-record["val_loss"], -record["train_loss"])
    return (record.get("train_accuracy", 0.0), -record["train_loss"])


class ProgressBar(Callback):
    """A bar per epoch with loss, accuracy and images/s, then one summary line (stderr)."""

    def __init__(self, console: Console | None = None, *, accuracy: bool = True) -> None:
        self.console = console or Console(stderr=True)
        self.accuracy = accuracy  # False for tasks without one (metric learning)
        self.progress: Progress | None = None
        self.task_id: Any = None

    def on_fit_start(self, state: LoopState) -> None:
        if not self.console.is_terminal:  # a log gets the per-epoch lines only
            return
        self.progress = Progress(
            TextColumn("[bold]epoch {task.fields[epoch]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(
                "loss {task.fields[loss]:.4f}  "
                + ("acc {task.fields[acc]:.3f}  " if self.accuracy else "")
                + "{task.fields[ips]:.0f} img/s"
            ),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
        )
        self.progress.start()

    def on_epoch_start(self, state: LoopState) -> None:
        if self.progress is None:
            return
        self.task_id = self.progress.add_task(
            "train",
            total=state.steps_per_epoch or None,
            epoch=f"{state.epoch}/{state.epochs}",
            loss=0.0,
            acc=0.0,
            ips=0.0,
        )

    def on_batch_end(self, state: LoopState) -> None:
        if self.progress is None:
            return
        self.progress.update(
            self.task_id,
            advance=1,
            loss=state.train_loss,
            acc=state.train_accuracy,
            ips=state.images_per_s,
        )

    def on_bad_file(self, state: LoopState, message: str) -> None:
        self.console.print(f"[yellow]skipped unreadable image[/] {message}", highlight=False)

    def on_epoch_end(self, state: LoopState, record: dict[str, Any]) -> None:
        if self.progress is not None:
            self.progress.remove_task(self.task_id)
        line = f"epoch {state.epoch:>3}/{state.epochs}  loss {record['train_loss']:.4f}"
        if self.accuracy and "train_accuracy" in record:
            line += f"  acc {record['train_accuracy']:.3f}"
        if "val_mAP" in record:
            line += f"  val_mAP {record['val_mAP']:.3f}"
        if "val_rank1" in record:
            line += f"  val_rank1 {record['val_rank1']:.3f}"
        if "val_mAP50" in record:
            line += f"  val_mAP@.5 {record['val_mAP50']:.3f}"
        if "val_mAP_combined" in record:
            line += f"  (local {record['val_mAP_local']:.3f}, combined {record['val_mAP_combined']:.3f})"
        if "valdir_mAP" in record:
            line += f"  val-dir mAP {record['valdir_mAP']:.3f}"
        if "val_accuracy" in record:
            line += f"  val_loss {record['val_loss']:.4f}  val_acc {record['val_accuracy']:.3f}"
        elif "val_loss" in record:
            line += f"  val_loss {record['val_loss']:.4f}"
        line += f"  {record['images_per_s']:.0f} img/s"
        if record.get("best"):
            line += "  [green]* best[/]"
        self.console.print(line, highlight=False)

    def on_fit_end(self, state: LoopState) -> None:
        if self.progress is not None:
            self.progress.stop()


class MetricsLog(Callback):
    """Append one JSON line per epoch to ``metrics.jsonl`` (flushed and synced)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_epoch_end(self, state: LoopState, record: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())


class BestCheckpoint(Callback):
    """Call ``save(record)`` whenever the epoch beats every earlier one; marks ``record['best']``."""

    def __init__(self, save: Callable[[dict[str, Any]], None]) -> None:
        self.save = save
        self.best: tuple[float, float] | None = None

    def on_fit_start(self, state: LoopState) -> None:
        previous = [score(r) for r in state.history]
        self.best = max(previous) if previous else None

    def on_epoch_end(self, state: LoopState, record: dict[str, Any]) -> None:
        s = score(record)
        if self.best is None or s > self.best:
            self.best = s
            record["best"] = True
            self.save(record)
        else:
            record["best"] = False


class EarlyStopping(Callback):
    """Stop after ``patience`` epochs without a new best (needs :class:`BestCheckpoint` first)."""

    def __init__(self, patience: int) -> None:
        self.patience = patience

    def on_epoch_end(self, state: LoopState, record: dict[str, Any]) -> None:
        if self.patience <= 0:
            return
        since = 0
        for r in reversed(state.history):
            if r.get("best"):
                break
            since += 1
        if since >= self.patience:
            state.stop = True
            record["early_stop"] = True


class ResumePoint(Callback):
    """Call ``save(state)`` after every epoch so ``--resume`` can continue from there."""

    def __init__(self, save: Callable[[LoopState], None]) -> None:
        self.save = save

    def on_epoch_end(self, state: LoopState, record: dict[str, Any]) -> None:
        self.save(state)


class TimeBudget(Callback):
    """Stop before an epoch that would end past ``seconds`` of training (the last epoch's
    duration is the estimate): a fixed CPU budget, e.g. to compare models trained for the
    same time. Marks the record that stopped with ``time_budget``."""

    def __init__(self, seconds: float) -> None:
        self.seconds = float(seconds)
        self.start = 0.0
        self.epoch_start = 0.0

    def on_fit_start(self, state: LoopState) -> None:
        self.start = time.perf_counter()

    def on_epoch_start(self, state: LoopState) -> None:
        self.epoch_start = time.perf_counter()

    def on_epoch_end(self, state: LoopState, record: dict[str, Any]) -> None:
        now = time.perf_counter()
        if now - self.start + (now - self.epoch_start) > self.seconds:
            state.stop = True
            record["time_budget"] = True
