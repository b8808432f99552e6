"""Plots written next to results. matplotlib, imported lazily, drawing on ``Figure`` objects.

No pyplot and no ``matplotlib.use``: a plot made inside a notebook, a GUI or a service never
switches the process's backend or leaves figures in pyplot's registry (matplotlib's advice
for libraries and servers: "Embedding in a web application server").
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["plot_cmc", "plot_confusion", "plot_curves", "plot_roc", "plot_size_scatter"]


class _Figures:
    """The three pyplot calls vitrina's plots use, over bare ``Figure`` objects."""

    @staticmethod
    def subplots(*args: Any, figsize: Any = None, **kwargs: Any) -> tuple[Any, Any]:
        from matplotlib.figure import Figure

        fig = Figure(figsize=figsize)
        return fig, fig.subplots(*args, **kwargs)

    @staticmethod
    def close(fig: Any) -> None:
        """Nothing to release: the figure is not registered with pyplot; drop its artists."""
        fig.clear()

    @staticmethod
    def get_cmap(name: str) -> Any:
        from matplotlib import colormaps

        return colormaps[name]


def _plt() -> _Figures:
    return _Figures()


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
    first = history[0] if history else {}
    if "train_accuracy" in first:
        ax2.plot(epochs, [r["train_accuracy"] for r in history], "o-", label="train")
    if "val_loss" in first:
        ax1.plot(epochs, [r["val_loss"] for r in history], "s-", label="validation")
    if "val_accuracy" in first:
        ax2.plot(epochs, [r["val_accuracy"] for r in history], "s-", label="validation")
    embedding = "val_mAP" in first  # metric learning: retrieval on held-out identities
    if embedding:
        ax2.plot(epochs, [r["val_mAP"] for r in history], "s-", label="held-out mAP")
        ax2.plot(epochs, [r["val_rank1"] for r in history], "^-", label="held-out rank-1")
    best = [r["epoch"] for r in history if r.get("best")]
    titles = (
        ("loss", "retrieval on held-out identities")
        if embedding
        else ("loss (cross-entropy)", "accuracy")
    )
    axes = [ax1, ax2]
    if not embedding and "train_accuracy" not in first and "val_accuracy" not in first:
        titles = ("loss", "")  # no accuracy (an autoencoder's reconstruction error)
        ax2.set_visible(False)
        axes = [ax1]
    for ax, title in zip(axes, titles, strict=False):
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


def plot_cmc(curves: dict[str, Sequence[float]], path: str | Path, title: str = "CMC") -> Path:
    """CMC curves (``curve[k-1]`` = CMC@k in [0, 1]) of several models in one chart, ranks
    1..50, with markers at ranks 1, 5 and 10 and rank-1 in the legend."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, curve in curves.items():
        y = 100.0 * np.asarray(curve, dtype=float)[:50]
        if not len(y):
            continue
        x = np.arange(1, len(y) + 1)
        (line,) = ax.plot(x, y, "-", lw=1.6, label=f"{name} (rank-1 {y[0]:.1f}%)")
        marks = [k for k in (1, 5, 10) if k <= len(y)]
        ax.plot(marks, y[np.array(marks) - 1], "o", color=line.get_color(), ms=5)
    ax.set_xlim(0.5, 50.5)
    ax.set_xticks([1, 5, 10, 20, 30, 40, 50])
    ax.set_xlabel("rank")
    ax.set_ylabel("matching rate (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    out = _save(fig, Path(path))
    plt.close(fig)
    return out


def plot_roc(
    reports: dict[str, Any],
    path: str | Path,
    title: str = "ROC",
    *,
    target_far: float = 1e-2,
) -> Path:
    """Verification ROC curves on a log FAR axis. Each value is a ``VerificationReport`` (its
    operating point at ``target_far`` and its EER are marked) or a ``(far, tar)`` pair of
    sequences (the curve only). FAR = 0 points cannot sit on a log axis and are left out."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    lowest = 1.0
    for name, rep in reports.items():
        if hasattr(rep, "far") and hasattr(rep, "operating_point"):
            far, tar = np.asarray(rep.far, float), np.asarray(rep.tar, float)
        else:
            far, tar = (np.asarray(v, float) for v in rep)
        keep = far > 0
        if keep.any():
            lowest = min(lowest, float(far[keep].min()))
        label = name
        if hasattr(rep, "operating_point"):
            p = rep.operating_point(target_far)
            label = f"{name} (TAR {p.tar:.1%} @ FAR {target_far:g}, EER {rep.eer:.1%})"
        (line,) = ax.plot(far[keep], tar[keep], "-", lw=1.6, label=label)
        if hasattr(rep, "operating_point"):
            if p.far > 0:
                ax.plot([p.far], [p.tar], "o", color=line.get_color(), ms=6)
            ax.plot([rep.eer], [1.0 - rep.eer], "x", color=line.get_color(), ms=7, mew=2)
    ax.axvline(target_far, color="grey", ls="--", lw=1)
    ax.set_xscale("log")
    ax.set_xlim(min(lowest, target_far) / 2, 1.0)
    ax.set_ylim(0.0, 1.01)
    ax.set_xlabel("false accept rate (FAR)")
    ax.set_ylabel("true accept rate (TAR)")
    ax.set_title(title + "   (o: operating point, x: EER)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    out = _save(fig, Path(path))
    plt.close(fig)
    return out
