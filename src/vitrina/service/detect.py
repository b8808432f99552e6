"""The detector behind ``POST /v1/detect`` (``vitrina serve --detector RUN``).

A detection run is served like the classifier: each request decodes and letterboxes its
photo in a worker thread (``Engine.prepare``), and the dynamic batcher runs the photos of
concurrent requests as one batch (``Engine.run_prepared``), so answers equal ``vitrina detect
predict`` on the same photo (``--flip`` on both: each photo also mirrored, the answers
fused; ``--scales`` on both: each photo letterboxed once per input size, each size's engine
run over the batch, the answers fused). A detector that needs no training (``hog_people``...)
runs in a worker thread per request. Boxes are in the uploaded photo's own pixels.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import anyio
import numpy as np

from vitrina.detect import Detections, DetectionTask, RunDetector, load_detector
from vitrina.engine import Prepared
from vitrina.service.batching import DynamicBatcher
from vitrina.service.components import display_name
from vitrina.service.metrics import ServiceMetrics
from vitrina.service.uploads import decode_upload

__all__ = ["Detection"]


class Detection:
    """A detector (run folder or name) and, for runs, its engine and batcher."""

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
        flip: bool = False,
        scales: tuple[float, ...] = (1.0,),
    ) -> None:
        self.detector = load_detector(
            source,
            backend=backend,
            device=device,
            batch_size=max_batch,
            num_workers=0,
            flip=flip,
            scales=scales,
        )
        self.name = display_name(source)
        self.classes = list(self.detector.classes)
        self.limiter = limiter
        # Every box (each request applies its own floor), each photo mirrored too if asked.
        self.task = DetectionTask(flip=flip)
        self.scales = tuple(float(v) for v in scales)
        self.batcher: DynamicBatcher[tuple[Prepared, ...], Detections] | None = None
        if isinstance(self.detector, RunDetector):
            self.batcher = DynamicBatcher(
                self._run_batch,
                max_batch=max_batch,
                window_ms=window_ms,
                on_batch=metrics.batch_observer("detect"),
                name="detect",
            )

    @property
    def backend(self) -> str:
        if isinstance(self.detector, RunDetector):
            return self.detector.engine.backend_name
        return "opencv/dlib"

    def _prepare(self, data: bytes) -> tuple[Prepared, ...]:
        """The photo letterboxed for each input size (one, unless ``--scales``)."""
        assert isinstance(self.detector, RunDetector)
        image = decode_upload(data)
        return tuple(e.prepare(self.task, image) for e in self.detector.engines)

    def _run_batch(self, items: list[tuple[Prepared, ...]]) -> list[Detections]:
        det = self.detector
        assert isinstance(det, RunDetector)
        per_size = [
            e.run_prepared(self.task, [views[k] for views in items])
            for k, e in enumerate(det.engines)
        ]
        return [det.fuse(views) for views in zip(*per_size, strict=True)]

    def _classic(self, data: bytes) -> Detections:
        return self.detector.find(np.asarray(decode_upload(data)))  # type: ignore[attr-defined]

    async def detect(self, data: bytes, min_score: float | None) -> dict[str, Any]:
        if self.batcher is not None:
            found = await self.batcher.run(partial(self._prepare, data), limiter=self.limiter)
        else:
            found = await anyio.to_thread.run_sync(self._classic, data, limiter=self.limiter)
        floor = self.detector.default_min_score if min_score is None else float(min_score)
        found = found.above(floor)
        boxes = [
            {
                "label": r["label"],
                "class_index": r["class_index"],
                "score": r["score"],
                "box": dict(zip(("left", "top", "right", "bottom"), r["box"], strict=True)),
            }
            for r in found.records(self.classes)
        ]
        return {
            "boxes": boxes,
            "width": found.size[0],
            "height": found.size[1],
            "min_score": floor,
            "detector": self.name,
            "backend": self.backend,
            "flip": self.task.flip,
            "scales": list(self.scales),
        }

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()
