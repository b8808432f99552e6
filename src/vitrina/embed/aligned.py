"""Global vectors and AlignedReID stripes of images, on the engine.

An embedding run trained with ``--local-stripes S`` computes, in one forward pass, its global
embedding and S local stripe features (:meth:`vitrina.models.embedding.EmbeddingModel.aligned_features`,
one tensor). :class:`AlignedFeatures` is the engine task that asks a backend for that output
and splits each row back into ``(global vector, (S, D) stripes)``; :func:`embed_aligned` runs
it over files with an :class:`~vitrina.embed.Embedder`'s engine (decode workers, batching,
bad files reported, never raised).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from vitrina.engine.tasks import TASKS, Task
from vitrina.errors import VitrinaError

__all__ = ["AlignedEmbeddings", "AlignedFeatures", "embed_aligned", "local_stripes_of"]


@TASKS.register("aligned-features")
@dataclass(frozen=True)
class AlignedFeatures(Task):
    """Per item ``(global (dim,), stripes (stripes, local_dim))`` float32; the global vector
    L2-normalised when ``normalize`` (the stripes are unit length already)."""

    dim: int
    stripes: int
    local_dim: int
    normalize: bool = True
    name: ClassVar[str] = "aligned-features"
    output: ClassVar[str] = "aligned_features"

    def finish(self, outputs: Any, counts: Sequence[int], metas: Sequence[Any]) -> list[Any]:
        y = outputs.float().reshape(len(outputs), -1)
        width = self.dim + self.stripes * self.local_dim
        if y.shape[1] != width:
            raise VitrinaError(
                f"aligned features of width {y.shape[1]}, expected {self.dim} + "
                f"{self.stripes} x {self.local_dim} = {width}"
            )
        g = y[:, : self.dim]
        if self.normalize:
            g = torch.nn.functional.normalize(g, p=2.0, dim=1, eps=1e-12)
        glob = g.numpy().astype(np.float32, copy=False)
        loc = y[:, self.dim :].reshape(len(y), self.stripes, self.local_dim).numpy()
        results: list[Any] = []
        row = 0
        for n in counts:
            results.append(
                (glob[row], loc[row]) if n == 1 else (glob[row : row + n], loc[row : row + n])
            )
            row += n
        return results


@dataclass
class AlignedEmbeddings:
    """``vectors[i]`` and ``stripes[i]`` belong to ``paths[i]``; unreadable files in ``errors``."""

    vectors: np.ndarray  # (N, dim)
    stripes: np.ndarray  # (N, S, local_dim)
    paths: list[Path]
    errors: list[tuple[Path, str]] = field(default_factory=list)


def local_stripes_of(model: Any) -> int:
    """The number of local stripes of a model (0: none: not an AlignedReID embedding)."""
    return int(getattr(model, "local_stripes", 0) or 0)


def embed_aligned(
    embedder: Any,
    paths: Sequence[str | Path],
    *,
    on_progress: Callable[[int, int], None] | None = None,
) -> AlignedEmbeddings:
    """Global vectors (normalised as the embedder's spec says) and stripes of the readable
    files, in input order, through ``embedder``'s engine. Raises :class:`VitrinaError` when
    the embedder's model has no local stripes or the embedder pools named layers."""
    model = embedder.model
    stripes = local_stripes_of(model)
    if not stripes or embedder.spec.layers:
        raise VitrinaError(
            f"{embedder.model_label}: no local stripes (train the embedding with "
            "`--local-stripes S`; named layers have none)"
        )
    task = AlignedFeatures(
        int(model.num_features), stripes, int(model.local_dim), normalize=embedder.spec.normalize
    )
    paths = [Path(p) for p in paths]
    total, done = len(paths), 0

    def step(n: int) -> None:
        nonlocal done
        done += n
        if on_progress:
            on_progress(done, total)

    glob: list[np.ndarray] = []
    loc: list[np.ndarray] = []
    kept: list[Path] = []
    errors: list[tuple[Path, str]] = []
    for r in embedder.engine.run(task, paths, on_progress=step):
        if r.ok:
            glob.append(r.value[0])
            loc.append(r.value[1])
            kept.append(paths[r.index])
        else:
            errors.append((paths[r.index], r.error))
    if not kept:
        return AlignedEmbeddings(
            np.zeros((0, task.dim), np.float32),
            np.zeros((0, stripes, task.local_dim), np.float32),
            [],
            errors,
        )
    return AlignedEmbeddings(np.stack(glob), np.stack(loc), kept, errors)
