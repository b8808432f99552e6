"""What the service serves: a classifier and an image index, each behind a dynamic batcher.

Requests decode and transform their image in a worker thread (bounded by ``limiter``); the
batcher stacks the tensors of concurrent requests and runs them as one batch through the
shared :class:`vitrina.engine.Engine`, so answers equal ``Classifier.predict`` /
``Index.search`` on the same image.
"""

from __future__ import annotations

import asyncio
import io
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import numpy as np

from vitrina.engine import Logits, Prepared, short_side
from vitrina.errors import ImageReadError
from vitrina.service.batching import DynamicBatcher
from vitrina.service.errors import ServiceError
from vitrina.service.metrics import ServiceMetrics
from vitrina.service.uploads import decode_upload

__all__ = ["THUMBNAIL_SIDE", "Classification", "Search", "display_name"]

THUMBNAIL_SIDE = 256


def display_name(source: str | Path) -> str:
    """What the service calls a model / index / gallery: its folder's name, never its path."""
    return Path(source).name or str(source)


class Classification:
    """``vitrina.load(source)`` served through one engine and one batcher."""

    def __init__(
        self,
        source: str,
        *,
        backend: str,
        device: str,
        max_batch: int,
        window_ms: float,
        metrics: ServiceMetrics,
        limiter: anyio.CapacityLimiter,
    ) -> None:
        from vitrina.classify.classifier import load

        self.classifier = load(source)
        self.name = display_name(source)
        self.classes = self.classifier.classes
        self.engine = self.classifier.engine(
            backend=backend, device=device, batch_size=max_batch, num_workers=0
        )
        self.min_side = short_side(self.classifier.model.preprocess)
        self.task = Logits()
        self.limiter = limiter
        self.batcher: DynamicBatcher[tuple[Prepared, int], list[tuple[str, float]]] = (
            DynamicBatcher(
                self._run_batch,
                max_batch=max_batch,
                window_ms=window_ms,
                on_batch=metrics.batch_observer("classify"),
                name="classify",
            )
        )

    def _prepare(self, data: bytes, k: int) -> tuple[Prepared, int]:
        # As the engine's decode workers do for a file: the safe reader (here for bytes),
        # then the task's preparation.
        return self.engine.prepare(self.task, decode_upload(data, min_side=self.min_side)), k

    def _run_batch(self, items: list[tuple[Prepared, int]]) -> list[list[tuple[str, float]]]:
        task = Logits(top_k=max(k for _, k in items))  # preparation is the same for any k
        scores = self.engine.run_prepared(task, [p for p, _ in items])
        names = self.classes
        return [
            [(names[j], p) for j, p in s.top[:k]] for s, (_, k) in zip(scores, items, strict=True)
        ]

    async def classify(self, data: bytes, top_k: int) -> dict[str, Any]:
        k = max(1, min(int(top_k), len(self.classes)))
        top = await self.batcher.run(partial(self._prepare, data, k), limiter=self.limiter)
        return {
            "label": top[0][0],
            "confidence": top[0][1],
            "top": [{"label": label, "probability": p} for label, p in top],
            "model": self.name,
            "backend": self.engine.backend_name,
        }

    def close(self) -> None:
        self.batcher.close()


class Search:
    """``Index.open(path)``: queries embedded in batches with the index's own model.

    The index (its SQLite connection) lives in one thread of its own; embedding runs in the
    batcher's thread."""

    def __init__(
        self,
        path: str,
        *,
        backend: str,
        device: str,
        max_batch: int,
        window_ms: float,
        metrics: ServiceMetrics,
        limiter: anyio.CapacityLimiter,
    ) -> None:
        from vitrina.search.index import Index

        self.path = Path(path)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="vitrina-index")
        self.index = self._executor.submit(
            partial(Index.open, path, backend=backend, device=device, batch_size=max_batch)
        ).result()
        self.embedder = self._executor.submit(lambda: self.index.embedder).result()
        self.name = self.index.model_label or display_name(path)
        self.min_side = short_side(self.embedder.model.preprocess)
        self.limiter = limiter
        self.batcher: DynamicBatcher[Any, np.ndarray] = DynamicBatcher(
            self.embedder.embed_images,
            max_batch=max_batch,
            window_ms=window_ms,
            on_batch=metrics.batch_observer("search"),
            name="search",
        )

    def available(self) -> bool:
        return (self.path / "meta.sqlite").is_file()

    async def search(self, data: bytes, k: int) -> dict[str, Any]:
        vector = await self.batcher.run(
            partial(decode_upload, data, min_side=self.min_side), limiter=self.limiter
        )
        found = await self._on_index(lambda: self.index.search(np.asarray(vector)[None, :], int(k)))
        hits = [
            {
                "rank": h.rank,
                "id": h.id,
                "name": Path(h.path).name,
                "label": h.label or None,
                "similarity": h.similarity,
                "distance": h.distance,
            }
            for h in found[0].hits
        ]
        return {"hits": hits, "model": self.name}

    async def _on_index(self, operation: Any) -> Any:
        """Run ``operation`` in the index's thread after catching up with changes that other
        processes committed (`vitrina index add/remove`): one SQLite query when there are
        none, so a change is visible from the next request after it commits."""
        from vitrina.search.index import IndexFolderError

        def call() -> Any:
            try:
                self.index.refresh()
                return operation()
            except IndexFolderError as exc:
                message = str(exc).replace(str(self.path), "index")
                raise ServiceError(503, "index_unavailable", message) from None

        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    async def thumbnail(self, item_id: int) -> bytes:
        path = await self._on_index(lambda: self.index.path_of(int(item_id)))
        if path is None:
            raise ServiceError(404, "unknown_item", f"no item {item_id} in the index")
        try:
            return await anyio.to_thread.run_sync(_thumbnail_jpeg, path, limiter=self.limiter)
        except ImageReadError as exc:
            raise ServiceError(
                404, "item_unavailable", f"item {item_id}: its photo cannot be read ({exc.reason})"
            ) from None

    def close(self) -> None:
        self.batcher.close()
        self._executor.submit(self.index.close).result()
        self._executor.shutdown()


def _thumbnail_jpeg(path: str) -> bytes:
    from vitrina.io import read_image

    image = read_image(path, min_side=THUMBNAIL_SIDE)
    image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=85)
    return buf.getvalue()
