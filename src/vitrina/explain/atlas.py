"""The activation atlas (Carter, Armstrong, Schubert, Johnson & Olah, Distill 2019): what a
layer's activation space holds, laid out as one picture.

1. **Activations**: the layer's feature map of every photo, computed through the engine (decode
   workers, batches, bad photos reported by name), and ``positions`` spatial positions per
   photo sampled (seeded; the border row and column are skipped where the map is large
   enough, as padding shapes them): one ``C``-vector per position.
2. **Layout**: UMAP (umap-learn, cosine metric, seeded) places the vectors in 2-D.
3. **Grid**: a ``grid`` x ``grid`` grid over the layout (the 1st-99th percentiles of each axis,
   so a few outliers do not squeeze the rest); each cell with at least ``min_count`` vectors
   gets their mean: the direction that cell stands for.
4. **Icons**: each direction's feature visualisation
   (:func:`vitrina.explain.featureviz.visualize_directions`: the Fourier-parameterised,
   transformation-robust optimiser with lucid's direction objective), cells optimised in
   batches.
5. **Picture**: each icon drawn in its cell, with the cell's most typical photo patches
   beside it (the sampled positions whose vectors are closest, by cosine, to the cell's mean:
   the photo region around that position, as the network saw the photo).

:func:`activation_atlas` returns an :class:`Atlas` (the picture, the cells, the layout);
:func:`write_atlas` writes ``atlas.png`` and ``atlas.json``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import nn

from vitrina.data import expand_image_paths
from vitrina.errors import VitrinaError, refuse_existing, require
from vitrina.explain.layers import frozen, layer_extractor, model_device, resolve_layer, save_png
from vitrina.models import VitrinaModel

__all__ = [
    "LAYOUTS",
    "Atlas",
    "AtlasCell",
    "activation_atlas",
    "atlas_files",
    "layer_activations",
    "write_atlas",
]

#: ``on_progress(stage, done, total)``; stages: "activations", "layout", "icons"
Progress = Callable[[str, int, int], None]


@dataclass
class AtlasCell:
    """One occupied cell: its grid position, how many vectors fell in it, and where its most
    typical patches come from (``(photo, (x0, y0, x1, y1))`` in the pixels the network saw)."""

    row: int
    col: int
    count: int
    patches: list[tuple[str, tuple[int, int, int, int]]] = field(default_factory=list)


@dataclass
class Atlas:
    """The atlas: ``image`` (PIL), ``cells`` (occupied ones), ``icons[i]`` the ``(H, W, 3)``
    visualisation of ``cells[i]``, ``layout`` the 2-D position of every sampled vector and
    ``photos``/``bad`` the photos used and skipped."""

    layer: str
    grid: int
    image: Image.Image
    cells: list[AtlasCell]
    icons: np.ndarray
    layout: np.ndarray
    photos: list[str]
    bad: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)


class _LayerMap(VitrinaModel):
    """``embed(x)`` = the flattened ``(C, H, W)`` output of one layer of ``source`` (so the
    engine computes it like any output)."""

    def __init__(self, source: VitrinaModel, layer: str) -> None:
        net = layer_extractor(source, layer)
        with torch.inference_mode():
            h, w = source.preprocess.input_size
            probe = net(torch.zeros(1, source.preprocess.channels, h, w).to(model_device(source)))
        out = probe[layer]
        if not isinstance(out, torch.Tensor) or out.dim() != 4:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise VitrinaError(
                f"layer {layer!r} of {source.arch} outputs {shape}, not a feature map "
                "(B, C, H, W): the atlas samples spatial positions; pick a convolutional layer"
            )
        self.map_shape = tuple(int(v) for v in out.shape[1:])
        super().__init__(
            net,
            arch=f"{source.arch}@{layer}/map",
            preprocess=source.preprocess,
            num_classes=1,
            num_features=math.prod(self.map_shape),
            weights_origin=source.weights_origin,
        )
        self.layer = layer
        self.no_head = nn.Identity()

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[self.layer].flatten(1)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(x)

    def head_module(self) -> nn.Module:
        return self.no_head

    def _replace_head(self, num_classes: int) -> None:  # pragma: no cover - never trained
        raise VitrinaError("an activation map has no classifier")


def _positions(h: int, w: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """``k`` distinct (y, x) positions of an ``h`` x ``w`` map, border skipped when it is at
    least 5 wide; all positions when there are fewer."""
    ys = np.arange(1, h - 1) if h >= 5 else np.arange(h)
    xs = np.arange(1, w - 1) if w >= 5 else np.arange(w)
    grid = np.stack(np.meshgrid(ys, xs, indexing="ij"), -1).reshape(-1, 2)
    if len(grid) <= k:
        return grid
    return grid[np.sort(rng.choice(len(grid), k, replace=False))]


def layer_activations(
    model: VitrinaModel,
    photos: Sequence[str | Path],
    layer: str,
    *,
    positions: int = 16,
    seed: int = 0,
    batch_size: int = 16,
    num_workers: int | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray, list[str], tuple[int, int, int]]:
    """Sampled activation vectors of ``layer`` over ``photos`` (through the engine, eager).

    Returns ``(vectors (N, C), where (N, 3) = (photo index, y, x), error lines, map shape
    (C, H, W))``; positions are drawn per photo from ``(seed, photo index)``."""
    from vitrina.engine import Embedding, Engine

    mapper = _LayerMap(model, layer)
    c, h, w = mapper.map_shape
    engine = Engine(
        mapper,
        backend="eager",
        device=model_device(model),
        batch_size=batch_size,
        num_workers=num_workers,
    )
    from vitrina.engine import default_workers, torch_threads

    vectors, where, errors = [], [], []
    workers = (
        0
        if len(photos) <= batch_size
        else (default_workers() if num_workers is None else num_workers)
    )
    with torch_threads(workers):  # decode workers and OpenMP threads share the cores
        for r in engine.run(Embedding(normalize=False), list(photos), on_progress=on_progress):
            if not r.ok:
                errors.append(r.error)
                continue
            fmap = np.asarray(r.value, np.float32).reshape(c, h, w)
            pos = _positions(h, w, positions, np.random.default_rng([seed, r.index]))
            vectors.append(fmap[:, pos[:, 0], pos[:, 1]].T)
            where.append(np.column_stack([np.full(len(pos), r.index), pos]))
    if not vectors:
        return np.zeros((0, c), np.float32), np.zeros((0, 3), np.int64), errors, (c, h, w)
    return np.concatenate(vectors), np.concatenate(where).astype(np.int64), errors, (c, h, w)


#: 2-D layouts of the activations: UMAP (the atlas paper's) or t-SNE (scikit-learn; no
#: compilation on first use, slower on many points).
LAYOUTS = ("umap", "tsne")


def _layout(vectors: np.ndarray, seed: int, neighbours: int, method: str = "umap") -> np.ndarray:
    """UMAP to 2-D (cosine metric, seeded: single-threaded and reproducible), or t-SNE."""
    import warnings

    if method not in LAYOUTS:
        from vitrina.registry import suggest

        raise VitrinaError(
            f"unknown layout {method!r}; choose one of {', '.join(LAYOUTS)}"
            f"{suggest(method, list(LAYOUTS))}"
        )
    if method == "tsne":
        from vitrina.embed.projection import project

        return np.asarray(project(vectors, "tsne", seed), np.float32)
    umap = require("umap", "umap", "a UMAP projection")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # umap's notes on n_jobs with a random_state
        reducer = umap.UMAP(
            n_components=2,
            n_neighbors=max(2, min(neighbours, len(vectors) - 1)),
            min_dist=0.01,
            metric="cosine",
            random_state=seed,
        )
        return reducer.fit_transform(vectors).astype(np.float32)


def _cells_of(layout: np.ndarray, grid: int) -> np.ndarray:
    """Grid cell (row, col) of each point, over the 1st-99th percentiles of each axis."""
    xy = np.asarray(layout, np.float64)
    lo = np.percentile(xy, 1, axis=0)
    hi = np.percentile(xy, 99, axis=0)
    span = np.where(hi - lo > 0, hi - lo, 1.0)
    u = (xy - lo) / span
    col = np.clip(np.floor(u[:, 0] * grid), 0, grid - 1).astype(np.int64)
    row = np.clip(np.floor((1 - u[:, 1]) * grid), 0, grid - 1).astype(np.int64)  # y up
    return np.column_stack([row, col])


def _patch_box(y: int, x: int, map_hw: tuple[int, int], img_hw: tuple[int, int]) -> tuple:
    """The input region around map position (y, x): 3 strides a side (at least 1/8 of the
    image), clipped to the image."""
    (mh, mw), (ih, iw) = map_hw, img_hw
    sy, sx = ih / mh, iw / mw
    side = max(3 * max(sy, sx), min(ih, iw) / 8)
    cy, cx = (y + 0.5) * sy, (x + 0.5) * sx
    x0 = round(min(max(cx - side / 2, 0), max(iw - side, 0)))
    y0 = round(min(max(cy - side / 2, 0), max(ih - side, 0)))
    return (x0, y0, int(min(iw, x0 + side)), int(min(ih, y0 + side)))


def _seen(photo: str | Path, model: VitrinaModel) -> Image.Image:
    """The photo as the network saw it (the eval transform's resize and crop), RGB."""
    from vitrina.data.transforms import eval_transform
    from vitrina.io import read_image

    resize = eval_transform(model.preprocess)[0]
    return resize(read_image(photo)).convert("RGB")


def _draw(
    cells: list[AtlasCell],
    icons: np.ndarray,
    grid: int,
    tile: int,
    patch_images: list[list[Image.Image]],
    title: str,
) -> Image.Image:
    """Each cell: its icon (``tile`` px) and, beside it, its patches stacked (``tile/2`` px)."""
    half = tile // 2
    cw, ch = tile + half + 6, tile + 6
    head = 24
    canvas = Image.new("RGB", (grid * cw + 6, grid * ch + head + 6), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((6, 5), title, fill=(0, 0, 0))
    for cell, icon, patches in zip(cells, icons, patch_images, strict=True):
        x, y = 6 + cell.col * cw, head + cell.row * ch
        im = Image.fromarray((np.clip(icon, 0, 1) * 255).round().astype(np.uint8))
        canvas.paste(im.resize((tile, tile), Image.Resampling.LANCZOS), (x, y))
        for i, p in enumerate(patches[:2]):
            canvas.paste(
                p.resize((half, half), Image.Resampling.LANCZOS), (x + tile + 2, y + i * half)
            )
    return canvas


def activation_atlas(
    model: VitrinaModel,
    photos: Sequence[str | Path],
    layer: str,
    *,
    grid: int = 20,
    positions: int = 16,
    min_count: int = 3,
    size: int = 48,
    steps: int = 64,
    patches: int = 2,
    tile: int = 64,
    seed: int = 0,
    batch: int = 32,
    neighbours: int = 15,
    layout: str = "umap",
    num_workers: int | None = None,
    on_progress: Progress | None = None,
) -> Atlas:
    """The activation atlas of ``layer`` over ``photos`` (see the module docstring).

    ``grid``: cells per side; ``positions``: vectors sampled per photo; ``min_count``: vectors
    a cell needs to be drawn; ``size``/``steps``: side and optimisation steps of each icon;
    ``patches``: typical photo patches per cell (up to 2 are drawn); ``tile``: icon side in
    the picture; ``layout``: ``umap`` or ``tsne``. Seeded: the same photos and seed give the
    same atlas."""
    if grid < 1 or positions < 1 or min_count < 1 or patches < 0:
        raise VitrinaError("grid, positions and min_count must be >= 1, patches >= 0")
    photos = [Path(p) for p in photos]
    if not photos:
        raise VitrinaError("no photos for the atlas")
    name = resolve_layer(model, layer)
    step = (lambda stage, d, t: on_progress(stage, d, t)) if on_progress else None
    done = [0]

    def act_progress(n: int) -> None:
        done[0] += n
        if step:
            step("activations", done[0], len(photos))

    with frozen(model):
        vectors, where, bad, (_, mh, mw) = layer_activations(
            model,
            photos,
            name,
            positions=positions,
            seed=seed,
            num_workers=num_workers,
            on_progress=act_progress,
        )
    if len(vectors) < max(4 * min_count, 10):
        raise VitrinaError(
            f"only {len(vectors)} activation vectors from {len(photos) - len(bad)} readable "
            "photos: give more photos or more --positions"
        )
    if step:
        step("layout", 0, 1)
    xy = _layout(vectors, seed, neighbours, layout)
    if step:
        step("layout", 1, 1)
    rc = _cells_of(xy, grid)
    key = rc[:, 0] * grid + rc[:, 1]
    cells: list[AtlasCell] = []
    directions = []
    typical: list[np.ndarray] = []
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    for k in np.unique(key):
        members = np.flatnonzero(key == k)
        if len(members) < min_count:
            continue
        mean = vectors[members].mean(axis=0)
        order = np.argsort(-(unit[members] @ (mean / max(np.linalg.norm(mean), 1e-12))))
        typical.append(members[order[:patches]])
        cells.append(AtlasCell(int(k // grid), int(k % grid), len(members)))
        directions.append(mean)
    icons = visualize_icons(model, name, np.stack(directions), size, steps, seed, batch, step)
    img_hw = tuple(model.preprocess.input_size)
    patch_images: list[list[Image.Image]] = []
    seen_cache: dict[int, Image.Image] = {}
    for cell, members in zip(cells, typical, strict=True):
        row = []
        for m in members:
            pi, y, x = (int(v) for v in where[m])
            if pi not in seen_cache:
                seen_cache[pi] = _seen(photos[pi], model)
            box = _patch_box(y, x, (mh, mw), img_hw)  # type: ignore[arg-type]
            cell.patches.append((str(photos[pi]), box))
            row.append(seen_cache[pi].crop(box))
        patch_images.append(row)
    title = (
        f"activation atlas of {model.arch} {name}: {len(vectors)} activations of "
        f"{len(photos) - len(bad)} photos, {len(cells)} cells of a {grid}x{grid} grid"
    )
    image = _draw(cells, icons, grid, tile, patch_images, title)
    return Atlas(
        layer=name,
        grid=grid,
        image=image,
        cells=cells,
        icons=icons,
        layout=xy,
        photos=[str(p) for p in photos],
        bad=bad,
        settings={
            "positions": positions,
            "min_count": min_count,
            "size": size,
            "steps": steps,
            "seed": seed,
            "neighbours": neighbours,
            "layout": layout,
            "vectors": len(vectors),
            "map": [int(mh), int(mw)],
        },
    )


def visualize_icons(
    model: VitrinaModel,
    layer: str,
    directions: np.ndarray,
    size: int,
    steps: int,
    seed: int,
    batch: int,
    step: Progress | None,
) -> np.ndarray:
    from vitrina.explain.featureviz import visualize_directions

    return visualize_directions(
        model,
        layer,
        directions,
        steps=steps,
        size=size,
        seed=seed,
        batch=batch,
        on_progress=(lambda d, t: step("icons", d, t)) if step else None,
    )


def write_atlas(atlas: Atlas, out: str | Path) -> tuple[Path, Path]:
    """``out`` (PNG) and the JSON beside it (same name, ``.json``): layer, grid, settings, each
    cell's position, count and patch sources. Both written atomically."""
    from vitrina.io import atomic_write_text

    png = save_png(atlas.image, out)
    doc = {
        "layer": atlas.layer,
        "grid": atlas.grid,
        "settings": atlas.settings,
        "photos": len(atlas.photos),
        "skipped": atlas.bad,
        "cells": [asdict(c) for c in atlas.cells],
    }
    meta = Path(png).with_suffix(".json")
    atomic_write_text(meta, json.dumps(doc, indent=1) + "\n")
    return png, meta


def atlas_files(
    model: str,
    photos: Sequence[str | Path],
    layer: str,
    out: str | Path = "atlas.png",
    *,
    grid: int = 20,
    positions: int = 16,
    min_count: int = 3,
    size: int = 48,
    steps: int = 64,
    layout: str = "umap",
    max_photos: int | None = 1000,
    seed: int = 0,
    num_workers: int | None = None,
    on_progress: Progress | None = None,
) -> tuple[Atlas, Path, Path]:
    """The atlas of ``layer`` of ``model`` (a run folder or a zoo name with ImageNet weights)
    over ``photos`` (files and folders, searched recursively; at most ``max_photos``, a seeded
    sample), written to ``out`` and its ``.json``; nothing is overwritten (checked before any
    work). The other options are :func:`activation_atlas`'s."""
    from vitrina.embed.core import load_source

    out = Path(out)
    refuse_existing(out, out.with_suffix(".json"))
    if layout == "umap":
        require("umap", "umap", "the atlas's UMAP layout (or --layout tsne)")  # before any work
    paths = expand_image_paths(photos)
    if max_photos is not None and len(paths) > max_photos:
        keep = np.sort(np.random.default_rng(seed).choice(len(paths), max_photos, replace=False))
        paths = [paths[i] for i in keep]
    net, _, _ = load_source(model)
    atlas = activation_atlas(
        net.eval(),
        paths,
        layer,
        grid=grid,
        positions=positions,
        min_count=min_count,
        size=size,
        steps=steps,
        layout=layout,
        seed=seed,
        num_workers=num_workers,
        on_progress=on_progress,
    )
    png, meta = write_atlas(atlas, out)
    return atlas, png, meta
