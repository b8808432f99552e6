"""2-D maps of embeddings (t-SNE or UMAP), coloured by label, one panel per model.

Put the starting weights and the trained run side by side and the effect of metric learning
is visible at a glance: identities that were smeared together become tight, separate clusters.
Each panel's title carries the leave-one-out retrieval mAP of the vectors it shows, so the
picture never has to be trusted on its own (2-D projections distort distances).
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vitrina.errors import VitrinaError, refuse_existing, require
from vitrina.registry import suggest

__all__ = [
    "METHODS",
    "EmbeddingMap",
    "EmbeddingPanel",
    "LabelledImages",
    "embedding_panels",
    "plot_embedding_map",
    "plot_embeddings",
    "project",
    "sample_labelled_images",
    "starting_point",
]

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
        umap = require("umap", "umap", "a UMAP projection")

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


# --------------------------------------------------------------------------- folder -> map


@dataclass
class LabelledImages:
    """Images to draw: ``labels[i]`` indexes ``names`` (0..len(names)-1)."""

    paths: list[Path]
    labels: list[int]
    names: list[str]


def sample_labelled_images(
    data_dir: str | os.PathLike[str],
    *,
    max_labels: int = 20,
    max_images: int = 2000,
    seed: int = 0,
) -> LabelledImages:
    """The images of a folder worth drawing, with their labels.

    A folder with a sub-folder per label gives every image; a Market-1501 folder gives its
    ``query/`` and ``bounding_box_test/`` images of real identities (the people a model was
    not trained on; junk and distractors left out), labelled by person id. At most
    ``max_labels`` labels (a seeded choice) and then at most ``max_images`` images (seeded)
    are kept: a map of 50,000 points or 700 colours shows nothing. Same seed, same sample."""
    from vitrina.data.identities import scan_identities

    if max_labels < 1 or max_images < 1:
        raise VitrinaError(
            f"max_labels and max_images must be at least 1, got {max_labels} and {max_images}"
        )
    ids = scan_identities(data_dir)
    if ids.layout == "market1501":
        items = [(im.path, im.pid) for im in ids.query + ids.gallery if im.pid > 0]
        names_of = {pid: f"{pid:04d}" for _, pid in items}
    else:
        items = [(im.path, im.label) for im in ids.train]
        names_of = dict(enumerate(ids.names))
    labels = sorted({lab for _, lab in items})
    rng = random.Random(seed)
    chosen = sorted(rng.sample(labels, max_labels)) if len(labels) > max_labels else labels
    keep = {lab: i for i, lab in enumerate(chosen)}
    kept = [(p, keep[lab]) for p, lab in items if lab in keep]
    if len(kept) > max_images:
        kept = sorted(rng.sample(kept, max_images))
    return LabelledImages(
        [p for p, _ in kept], [lab for _, lab in kept], [names_of[lab] for lab in chosen]
    )


def starting_point(model: str | os.PathLike[str]) -> str | None:
    """What a run folder started from, when it can be drawn too: the zoo name for ImageNet
    weights, or the run folder it continued; ``None`` for random init, a weights file or a
    model that is not a run folder."""
    from vitrina.runs import is_run_dir, read_run

    if not is_run_dir(model):
        return None
    info = read_run(model)
    w = info.config.get("weights")
    if w in ("imagenet", "default", "pretrained"):
        return info.arch
    if w and is_run_dir(w):
        return str(w)
    return None


@dataclass
class EmbeddingMap:
    """What :func:`plot_embeddings` drew: the PNG, a panel per model (with its leave-one-out
    mAP), the images drawn, the label names, and the images that could not be read."""

    path: Path
    panels: list[EmbeddingPanel]
    images: int
    names: list[str]
    errors: list[tuple[Path, str]] = field(default_factory=list)


def plot_embeddings(
    data_dir: str | os.PathLike[str],
    models: Sequence[str],
    out: str | os.PathLike[str],
    *,
    before: bool = True,
    method: str = "tsne",
    max_labels: int = 20,
    max_images: int = 2000,
    seed: int = 0,
    backend: str = "eager",
    device: str = "auto",
    on_progress: Callable[[int, int], None] | None = None,
) -> EmbeddingMap:
    """Draw the images of ``data_dir`` (see :func:`sample_labelled_images`) as a 2-D map per
    model (a run folder or zoo name), side by side in the PNG ``out``, which must not exist.

    ``before``: a run trained from ImageNet weights (or from another run) gets the map of its
    starting point on its left, so the effect of training is in one picture. Each panel says
    its leave-one-out retrieval mAP. ``on_progress(done, total)`` counts images embedded over
    every panel."""
    if method not in METHODS:
        raise VitrinaError(f"unknown --method {method!r}{suggest(method, list(METHODS))}")
    if method == "umap":
        require("umap", "umap", "a UMAP projection")  # before minutes of embedding
    out = Path(out)
    refuse_existing(out)
    sample = sample_labelled_images(
        data_dir, max_labels=max_labels, max_images=max_images, seed=seed
    )
    specs: list[tuple[str, object]] = []
    for m in models:
        start = starting_point(m) if before else None
        if start is not None:
            specs.append((f"before: {Path(start).name} (ImageNet)", start))
        specs.append((Path(m).name if Path(m).exists() else m, m))
    n = len(sample.paths)
    total = n * len(specs)
    result = EmbeddingMap(out, [], n, sample.names)
    for i, (title, spec) in enumerate(specs):
        done_before = i * n

        def progress(done: int, _total: int, offset: int = done_before) -> None:
            if on_progress:
                on_progress(offset + done, total)

        panels, errors = embedding_panels(
            sample.paths,
            sample.labels,
            [(title, spec)],
            method=method,
            seed=seed,
            backend=backend,
            device=device,
            on_progress=progress,
        )
        result.panels += panels
        result.errors += [e for e in errors if e not in result.errors]
    plot_embedding_map(result.panels, sample.names, out, method=method)
    return result
