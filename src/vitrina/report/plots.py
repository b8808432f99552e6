"""Plots written next to results. matplotlib with the Agg backend, imported lazily."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["plot_confusion", "plot_curves", "plot_size_scatter"]


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    from vitrina.io import atomic_writer

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_writer(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110, bbox_inches="tight")
    return path


def plot_curves(history: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Loss and accuracy per epoch, train and validation; the best epoch marked."""
    plt = _plt()
    epochs = [r["epoch"] for r in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax1.plot(epochs, [r["train_loss"] for r in history], "o-", label="train")
    ax2.plot(epochs, [r["train_accuracy"] for r in history], "o-", label="train")
    if history and "val_loss" in history[0]:
        ax1.plot(epochs, [r["val_loss"] for r in history], "s-", label="validation")
        ax2.plot(epochs, [r["val_accuracy"] for r in history], "s-", label="validation")
    best = [r["epoch"] for r in history if r.get("best")]
    for ax, title in ((ax1, "loss (cross-entropy)"), (ax2, "accuracy")):
        if best:
            ax.axvline(best[-1], color="grey", ls="--", lw=1, label=f"best (epoch {best[-1]})")
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    out = _save(fig, Path(path))
    plt.close(fig)
    return out


def plot_confusion(
    matrix: np.ndarray, classes: Sequence[str], path: str | Path, title: str = "confusion"
) -> Path:
    """Confusion matrix (rows: true class, columns: predicted) with counts in the cells."""
    plt = _plt()
    m = np.asarray(matrix)
    n = len(classes)
    size = max(3.5, 0.55 * n + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(m, cmap="Blues")
    ax.set_xticks(range(n), classes, rotation=45, ha="right")
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    vmax = m.max() if m.size else 0
    for i in range(n):
        for j in range(n):
            ax.text(
                j,
                i,
                str(int(m[i, j])),
                ha="center",
                va="center",
                color="white" if m[i, j] > vmax / 2 else "black",
                fontsize=8,
            )
    fig.tight_layout()
    out = _save(fig, Path(path))
    plt.close(fig)
    return out


def plot_size_scatter(
    points: Sequence[tuple[str, float, float]],
    path: str | Path,
    *,
    xlabel: str,
    ylabel: str,
    title: str = "",
) -> Path:
    """``(label, x, y)`` points on a log-x scatter, each labelled (the zoo's size plots)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 6))
    xs = [p[1] for p in points]
    ys = [p[2] for p in points]
    ax.scatter(xs, ys, s=28, color="tab:blue", zorder=3)
    for label, x, y in points:
        ax.annotate(label, (x, y), xytext=(4, 3), textcoords="offset points", fontsize=8, zorder=4)
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    out = _save(fig, Path(path))
    plt.close(fig)
    return out
