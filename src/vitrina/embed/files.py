"""Embed photo files into a vectors file, and list the layers a model can be embedded at.

>>> from vitrina.embed.files import describe_layers, embed_files
>>> run = embed_files("efficientnet_lite0", ["photos/"], "vectors.npy", layers=("blocks.5",))  # doctest: +SKIP
>>> run.files, run.result.vectors.shape                                          # doctest: +SKIP
>>> describe_layers("efficientnet_lite0").shapes["blocks.5"]                     # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vitrina.embed.core import Embedder, EmbeddingSpec, EmbedResult, list_layers, load_source
from vitrina.embed.output import output_files, write_vectors
from vitrina.errors import VitrinaError, refuse_existing

__all__ = ["EmbedFilesRun", "LayerTable", "describe_layers", "embed_files"]


@dataclass
class EmbedFilesRun:
    """The files written, the vectors (``result.errors``: the unreadable inputs, which are
    left out) and the embedder that made them."""

    files: list[Path]
    result: EmbedResult
    embedder: Embedder

    def summary(self) -> dict[str, Any]:
        """What a caller reports: files, how many vectors of which size, from which model."""
        emb = self.embedder
        return {
            "files": [str(f) for f in self.files],
            "vectors": len(self.result.paths),
            "dim": emb.dim,
            "unreadable": len(self.result.errors),
            "model": emb.model_label,
            "fingerprint": emb.fingerprint,
            "backend": emb.backend_name,
        }


def embed_files(
    model: str,
    inputs: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    layers: Sequence[str] = (),
    pool: str = "avg",
    normalize: bool = True,
    backend: str = "auto",
    device: str = "auto",
    batch_size: int = 32,
    recursive: bool = False,
    on_progress: Callable[[int, int], None] | None = None,
    embedder: Embedder | None = None,
) -> EmbedFilesRun:
    """Embed the photos ``inputs`` (files, or folders: their images, sub-folders too with
    ``recursive``) with ``model`` (a run folder or zoo name; ``layers``, ``pool`` and
    ``normalize`` as in :class:`EmbeddingSpec`) and write ``out``: ``.npy`` with a ``.csv`` of
    index,path beside it, or ``.parquet`` (spec and fingerprint in its metadata).

    Existing output files are refused before the model is loaded. Unreadable photos are left
    out and listed in ``result.errors``; when none can be read nothing is written.

    ``embedder``: one built by the caller (e.g. :class:`vitrina.scale.RayEmbedder`, which
    embeds on Ray); ``model``, ``layers``... are then its own and the arguments are ignored."""
    from vitrina.data import expand_image_paths

    if not inputs:
        raise VitrinaError("no images given: vitrina embed MODEL DIR_OR_FILES... --out vectors.npy")
    refuse_existing(*output_files(out))  # before spending minutes on the model
    paths = expand_image_paths(inputs, recursive=recursive)
    if not paths:
        hint = "" if recursive else " (--recursive descends into sub-folders)"
        raise VitrinaError(f"no images in {', '.join(str(p) for p in inputs)}{hint}")
    if embedder is None:
        spec = EmbeddingSpec(model, tuple(layers), pool=pool, normalize=normalize)
        embedder = Embedder(spec, backend=backend, device=device, batch_size=batch_size)
    emb = embedder
    res = emb.embed_paths(paths, on_progress=on_progress)
    if not len(res.paths):
        raise VitrinaError(f"none of the {len(paths)} images could be read; nothing written")
    meta = {"spec": emb.spec.to_dict(), "fingerprint": emb.fingerprint, "model": emb.model_label}
    return EmbedFilesRun(write_vectors(res, out, meta=meta), res, emb)


@dataclass
class LayerTable:
    """The layers to pick ``--layer`` from: module names up to two levels with their output
    shape for one input, and how many names are accepted in all (every graph node)."""

    arch: str
    shapes: dict[str, tuple[int, ...]]
    total: int


def describe_layers(model: str) -> LayerTable:
    """The layers of ``model`` (a run folder or zoo name) and their output shapes."""
    from vitrina.embed.layers import layer_shapes, module_layers

    source = load_source(model)[0]
    shapes = layer_shapes(source, module_layers(source))
    return LayerTable(source.arch, shapes, len(list_layers(source)))
