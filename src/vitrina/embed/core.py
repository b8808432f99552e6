"""Embeddings of images from any vitrina model: the classifier's input (default) or pooled
intermediate layers, batched through the shared :class:`vitrina.engine.Engine`."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vitrina.embed.layers import POOLS, LayerEmbedding, layer_names, resolve_layers
from vitrina.engine.tasks import Embedding
from vitrina.errors import VitrinaError
from vitrina.models import VitrinaModel

__all__ = ["EmbedResult", "Embedder", "EmbeddingSpec", "embed_paths", "list_layers", "load_source"]


@dataclass(frozen=True)
class EmbeddingSpec:
    """What to embed with.

    Args:
        model: a run folder (stored as a resolved path) or a zoo name (ImageNet weights).
        layers: layer names (see :func:`list_layers`); ``()`` is the model's own embedding,
            the input of its classifier.
        pool: how feature maps become vectors: ``avg``, ``max`` or ``gem`` (GeM, p=3).
        normalize: L2-normalize each layer's pooled vector, then their concatenation.
    """

    model: str
    layers: tuple[str, ...] = ()
    pool: str = "avg"
    normalize: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model.strip():
            raise VitrinaError(f"invalid model {self.model!r}: a run folder or a zoo name")
        if isinstance(self.layers, str):
            object.__setattr__(self, "layers", (self.layers,))
        object.__setattr__(self, "layers", tuple(str(n) for n in self.layers))
        if self.pool not in POOLS:
            raise VitrinaError(f"unknown pool {self.pool!r}; choose one of {', '.join(POOLS)}")
        from vitrina.runs import is_run_dir

        if is_run_dir(self.model):
            object.__setattr__(self, "model", str(Path(self.model).resolve()))

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "layers": list(self.layers),
            "pool": self.pool,
            "normalize": self.normalize,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EmbeddingSpec:
        try:
            return cls(
                model=d["model"],
                layers=tuple(d.get("layers", ())),
                pool=d.get("pool", "avg"),
                normalize=bool(d.get("normalize", True)),
            )
        except (KeyError, TypeError) as e:
            raise VitrinaError(f"invalid embedding spec {d!r} ({type(e).__name__}: {e})") from None


@dataclass
class EmbedResult:
    """``vectors[i]`` belongs to ``paths[i]``; unreadable inputs are in ``errors``.

    ``rows[i]``: the input position of ``vectors[i]`` (:meth:`Embedder.embed` fills it; a
    photo held in memory is named in ``paths`` by its description, e.g. ``<image 64x48>``)."""

    vectors: np.ndarray
    paths: list[Path]
    errors: list[tuple[Path, str]] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)

    def __repr__(self) -> str:
        bad = f", {len(self.errors)} unreadable" if self.errors else ""
        return f"EmbedResult({len(self.vectors)} vectors of {self.vectors.shape[1]}{bad})"

    def to_pandas(self) -> Any:
        """One row per embedded photo: ``photo`` and the vector's components ``v0 .. vN``."""
        from vitrina.report.notebook import dataframe

        cols = ["photo", *(f"v{j}" for j in range(self.vectors.shape[1]))]
        recs = [
            {"photo": str(p), **{f"v{j}": float(x) for j, x in enumerate(v)}}
            for p, v in zip(self.paths, self.vectors, strict=True)
        ]
        return dataframe(recs, cols)


def load_source(model: str) -> tuple[VitrinaModel, str, str]:
    """(model, identity, origin label) for a run folder or a zoo name.

    ``identity`` names the weights: a run's checkpoint sha256, or a hash of the state dict
    of zoo weights."""
    from vitrina.runs import is_run_dir, load_model, read_run

    path = Path(model)
    if is_run_dir(path):
        info = read_run(path)
        m = load_model(path)
        sha = info.checkpoint_sha256 or _state_hash(m)
        return m, f"{info.arch}|run-weights:{sha}", f"run {path.resolve().name}"
    if path.exists():
        read_run(path)  # raises the precise "not a run folder" error
    if "/" in model and model.split("/", 1)[0] not in ("timm", "torchvision", "vitrina"):
        read_run(path)  # a path, not a model name: "run folder not found"
    from vitrina.models import create

    m = create(model, weights="imagenet").eval()
    return m, f"{m.arch}|weights:{_state_hash(m)}", "imagenet"


def _state_hash(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(str(tuple(v.shape)).encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _run_photos(model: str) -> Path | None:
    from vitrina.runs import is_run_dir, read_run

    if not is_run_dir(model):
        return None
    root = read_run(model).data.get("root")
    return Path(root) if root and Path(root).is_dir() else None


def _as_spec(spec: EmbeddingSpec | str) -> EmbeddingSpec:
    if isinstance(spec, EmbeddingSpec):
        return spec
    if isinstance(spec, str | Path):
        return EmbeddingSpec(str(spec))
    raise VitrinaError(f"expected an EmbeddingSpec or a model name, got {type(spec).__name__}")


class Embedder:
    """Vectors for images, one model and one layer choice (:class:`EmbeddingSpec`).

    Attributes:
        spec: the spec, layer names canonical (``net.`` prefix dropped).
        dim: vector length.
        fingerprint: 16 hex chars; equal for two embedders iff their vectors are comparable
            (same architecture and weights, layers, pooling, normalization).

    ``calib``: photos for int8 calibration (``backend="int8"``); for named layers of a run
    it defaults to the run's training photos. ``threads``: intra-op threads of the engine
    (default: every core; a Ray actor gives its own share).
        model_label: short human label, e.g. ``efficientnet_lite0 (imagenet) avg-pool L2``.
    """

    def __init__(
        self,
        spec: EmbeddingSpec | str,
        *,
        backend: str = "auto",
        device: str = "auto",
        batch_size: int = 32,
        num_workers: int | None = None,
        calib: str | Path | Sequence[str | Path] | None = None,
        threads: int | None = None,
    ) -> None:
        spec = _as_spec(spec)
        source, identity, origin = load_source(spec.model)
        if spec.layers:
            layers = resolve_layers(source, spec.layers, spec.model)
            spec = EmbeddingSpec(spec.model, layers, spec.pool, spec.normalize)
            self.model: VitrinaModel = LayerEmbedding(source, layers, spec.pool, spec.normalize)
            self._post_normalize = False
            where = "+".join(layers)
        else:
            self.model = source
            self._post_normalize = spec.normalize
            where = "embed"
        self.spec = spec
        self.source = source
        self.dim = int(self.model.num_features)
        # Pooling only matters for named layers: the model's own embedding is pooled already.
        key = {
            "identity": identity,
            "layers": list(getattr(self.model, "nodes", ())),
            "pool": spec.pool if spec.layers else None,
            "normalize": spec.normalize,
        }
        self.fingerprint = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        pooled = f"{spec.pool}-pool " if spec.layers else ""
        layer = f" {where}" if spec.layers else ""
        self.model_label = (
            f"{source.arch} ({origin}){layer} {pooled}{'L2' if spec.normalize else 'raw'}"
        ).replace("  ", " ")
        if calib is None and backend == "int8" and spec.layers:
            # A run's int8 variant computes its own embedding, not these layers: calibrate
            # the layer model on the run's training photos instead.
            calib = _run_photos(spec.model)
        self._engine_kw: dict[str, Any] = dict(
            backend=backend, device=device, batch_size=batch_size, num_workers=num_workers
        )
        if calib is not None:
            self._engine_kw["calib"] = calib
        if threads is not None:
            self._engine_kw["threads"] = threads
        self._engine = None

    @property
    def engine(self):
        """The :class:`vitrina.engine.Engine` running the model (built on first use)."""
        if self._engine is None:
            from vitrina.engine import Engine

            self._engine = Engine(self.model, **self._engine_kw)
        return self._engine

    @property
    def backend_name(self) -> str:
        """The backend that runs (what ``auto`` chose, once it has run)."""
        return self.engine.backend_name

    @property
    def task(self) -> Embedding:
        """The engine task this embedder runs (normalised unless the spec says raw; named
        layers are normalised inside the layer model)."""
        return Embedding(normalize=self._post_normalize)

    def embed_paths(
        self,
        paths: Sequence[str | Path],
        *,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> EmbedResult:
        """Vectors for the readable files, in input order; unreadable ones in ``errors``."""
        return self.embed([Path(p) for p in paths], on_progress=on_progress)

    def embed(
        self,
        photos: Any,
        *,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> EmbedResult:
        """Vectors for photos as they come -- paths, PIL images, numpy arrays, torch tensors,
        one or a list (:func:`vitrina.engine.as_items`) -- in input order; unreadable ones
        in ``errors`` (the run goes on). One photo still gives a ``(1, dim)`` matrix."""
        from vitrina.engine import as_items, item_name

        items, _ = as_items(photos)
        names = [Path(i) if isinstance(i, str | os.PathLike) else Path(item_name(i)) for i in items]
        total, done = len(items), 0

        def step(n: int) -> None:
            nonlocal done
            done += n
            if on_progress:
                on_progress(done, total)

        rows: list[np.ndarray] = []
        kept: list[Path] = []
        positions: list[int] = []
        errors: list[tuple[Path, str]] = []
        for r in self.engine.run(self.task, items, on_progress=step):
            if r.ok:
                rows.append(r.value)
                kept.append(names[r.index])
                positions.append(r.index)
            else:
                errors.append((names[r.index], r.error))
        vectors = (
            np.stack(rows).astype(np.float32, copy=False)
            if rows
            else np.zeros((0, self.dim), dtype=np.float32)
        )
        return EmbedResult(vectors, kept, errors, positions)

    def embed_images(self, images: Sequence[Any]) -> np.ndarray:
        """(N, dim) float32 vectors for images in memory (PIL images, arrays, tensors), e.g.
        in a service. An image that is not one raises :class:`~vitrina.errors.VitrinaError`."""
        if not len(images):
            return np.zeros((0, self.dim), dtype=np.float32)
        eng, task = self.engine, self.task
        out: list[np.ndarray] = []
        for i in range(0, len(images), eng.batch_size):
            prepared = [eng.prepare(task, im) for im in images[i : i + eng.batch_size]]
            out += eng.run_prepared(task, prepared)
        return np.stack(out).astype(np.float32, copy=False)

    def __repr__(self) -> str:
        return f"Embedder({self.model_label}, dim={self.dim}, fingerprint={self.fingerprint})"


def list_layers(model: str | VitrinaModel) -> list[str]:
    """Names usable in :attr:`EmbeddingSpec.layers`: module names up to two levels deep
    (``blocks.5``, ``layer3``) first, then every graph node (``blocks.5.3.conv_pwl``)."""
    m = model if isinstance(model, VitrinaModel) else load_source(str(model))[0]
    return layer_names(m)


def embed_paths(
    spec_or_model: EmbeddingSpec | str,
    paths: Sequence[str | Path],
    *,
    on_progress: Callable[[int, int], None] | None = None,
    **kw: Any,
) -> EmbedResult:
    """``Embedder(spec_or_model, **kw).embed_paths(paths)``."""
    return Embedder(spec_or_model, **kw).embed_paths(paths, on_progress=on_progress)
