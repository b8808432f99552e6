"""2-D maps of embeddings (t-SNE or UMAP), coloured by label, one panel per model.

Put the starting weights and the trained run side by side and the effect of metric learning
is visible at a glance: identities that were smeared together become tight, separate clusters.
Each panel's title carries the leave-one-out retrieval mAP of the vectors it shows, so the
picture never has to be trusted on its own (2-D projections distort distances).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vitrina.errors import VitrinaError
from vitrina.registry import suggest

__all__ = ["METHODS", "EmbeddingPanel", "embedding_panels", "plot_embedding_map", "project"]

METHODS = ("tsne", "umap")


def project(vectors: np.ndarray, method: str = "tsne", seed: int = 0) -> np.ndarray:
    """(N, D) -> (N, 2) with t-SNE (scikit-learn, PCA init) or UMAP (umap-learn), seeded."""
    if method not in METHODS:
        raise VitrinaError(f"unknown projection {method!r}{suggest(method, list(METHODS))}")
    x = np.asarray(vectors, dtype=np.float32)
    n = len(x)
    if n < 3:
        raise VitrinaError(f"need at least 3 embeddings to draw a map, got {n}")
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = float(min(30.0, max(2.0, (n - 1) / 3)))
        return TSNE(
            n_components=2, perplexity=perplexity, init="pca", random_state=seed
        ).fit_transform(x)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # umap warns that a seed disables parallelism
        import umap

        return umap.UMAP(
            n_components=2, n_neighbors=min(15, n - 1), random_state=seed
        ).fit_transform(x)


@dataclass
class EmbeddingPanel:
    title: str
    xy: np.ndarray  # (N, 2)
    labels: np.ndarray  # (N,) ints indexing the label names
    mAP: float | None = None


def embedding_panels(
    paths: Sequence[Path],
    labels: Sequence[int],
    specs: Sequence[tuple[str, object]],
    *,
    method: str = "tsne",
    seed: int = 0,
    backend: str = "auto",
    device: str = "auto",
    on_progress: Callable[[int, int], None] | None = None,
) -> tuple[list[EmbeddingPanel], list[tuple[Path, str]]]:
    """One panel per ``(title, EmbeddingSpec or model name)``; unreadable images skipped."""
    from vitrina.embed.core import Embedder
    from vitrina.evaluate.retrieval import loo_retrieval

    label_of = dict(zip((Path(p) for p in paths), labels, strict=True))
    panels, errors = [], []
    for title, spec in specs:
        res = Embedder(spec, backend=backend, device=device).embed_paths(
            list(paths), on_progress=on_progress
        )
        errors += [e for e in res.errors if e not in errors]
        y = np.array([label_of[p] for p in res.paths])
        m = loo_retrieval(res.vectors, y)["val_mAP"] if len(set(y.tolist())) > 1 else None
        panels.append(EmbeddingPanel(title, project(res.vectors, method, seed), y, m))
    return panels, errors


def plot_embedding_map(
    panels: Sequence[EmbeddingPanel],
    names: Sequence[str],
    path: str | Path,
    *,
    method: str = "tsne",
) -> Path:
    """Panels side by side; a colour (and marker, past 20 labels) per label; legend up to 20."""
    from vitrina.report.plots import _plt, _save

    plt = _plt()
    n = len(panels)
    fig, axes = plt.subplots(1, n, figsize=(5.2 * n + (1.8 if len(names) <= 20 else 0), 5))
    axes = np.atleast_1d(axes)
    cmap = plt.get_cmap("tab20")
    markers = "os^Dvp*h<>"
    for ax, panel in zip(axes, panels, strict=True):
        for lab in np.unique(panel.labels):
            sel = panel.labels == lab
            ax.scatter(
                panel.xy[sel, 0],
                panel.xy[sel, 1],
                s=14,
                color=cmap(int(lab) % 20),
                marker=markers[(int(lab) // 20) % len(markers)],
                label=names[int(lab)] if int(lab) < len(names) else str(lab),
                alpha=0.85,
                linewidths=0,
            )
        sub = f"\nleave-one-out mAP {panel.mAP:.3f}" if panel.mAP is not None else ""
        ax.set_title(f"{panel.title}{sub}", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    if len(names) <= 20:
        axes[-1].legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    fig.suptitle(f"{method.upper()} of the embeddings, coloured by identity", fontsize=11)
    fig.tight_layout()
    out = _save(fig, Path(path))
    plt.close(fig)
    return out
