"""The widths of a network's layers before and after pruning, as one picture."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from vitrina.report.plots import _plt, _save

__all__ = ["plot_layer_widths"]


def _short(name: str) -> str:
    """``net.blocks.5.2.conv_pwl`` -> ``5.2.conv_pwl``: enough to find the layer."""
    for prefix in ("net.", "blocks."):
        if name.startswith(prefix):
            name = name[len(prefix) :]
    return name


def plot_layer_widths(
    names: Sequence[str],
    before: Sequence[int],
    after: Sequence[int],
    path: str | Path,
    *,
    title: str = "output channels per layer",
) -> Path:
    """Bars of every layer's output channels (forward order): the full width in grey, what
    pruning kept in colour, the share kept written above each pruned layer."""
    if not (len(names) == len(before) == len(after)):
        raise ValueError("names, before and after must have the same length")
    plt = _plt()
    n = len(names)
    fig, ax = plt.subplots(figsize=(max(8.0, 0.22 * n + 2), 4.2))
    xs = list(range(n))
    ax.bar(xs, before, color="#d0d0d0", width=0.8, label="before")
    ax.bar(xs, after, color="#2a7ab9", width=0.55, label="after")
    top = max(before) if before else 1
    for x, b, a in zip(xs, before, after, strict=True):
        if a != b and b:
            ax.text(
                x, b + top * 0.01, f"{a / b:.0%}", ha="center", va="bottom", fontsize=6, rotation=90
            )
    ax.set_xticks(xs)
    ax.set_xticklabels([_short(s) for s in names], rotation=90, fontsize=6)
    ax.set_ylabel("output channels")
    ax.set_xlim(-0.7, n - 0.3)
    ax.set_ylim(0, top * 1.15)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper left")
    return _save(fig, Path(path))
