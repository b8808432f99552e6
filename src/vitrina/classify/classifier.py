"""A trained classifier ready to use: ``vitrina.load(run_dir).predict(paths)``."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vitrina.data import scan_folder
from vitrina.engine import Engine, Logits
from vitrina.errors import VitrinaError
from vitrina.evaluate import ClassificationReport, classification_report
from vitrina.models import VitrinaModel, create
from vitrina.runs import is_run_dir, load_model

__all__ = ["Classifier", "Prediction", "load"]


@dataclass
class Prediction:
    """One image's answer. ``label`` is None when the file could not be read (see ``error``)."""

    path: Path
    label: str | None
    confidence: float
    top: list[tuple[str, float]] = field(default_factory=list)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "label": self.label,
            "confidence": self.confidence,
            "top": [{"label": lbl, "probability": p} for lbl, p in self.top],
            "error": self.error,
        }


class Classifier:
    """A :class:`VitrinaModel` with class names, run through the shared :class:`Engine`."""

    def __init__(self, model: VitrinaModel, source: str = "") -> None:
        if not model.class_names:
            raise VitrinaError(f"{source or model.arch}: model has no class names")
        self.model = model.eval()
        self.source = source
        self.last_engine: Engine | None = None  # the engine of the latest run (its backend)
        # One engine per setting, reused: building one costs an ONNX export check or a
        # runtime session (~0.3 s), which dominated repeated predict() calls on few photos.
        self._engines: dict[tuple[Any, ...], Engine] = {}
        self._engines_lock = threading.Lock()

    @property
    def classes(self) -> list[str]:
        return list(self.model.class_names or [])

    def engine(self, **kw: Any) -> Engine:
        """The :class:`Engine` for these settings (built once, then reused)."""
        key = tuple(sorted((k, str(v)) for k, v in kw.items()))
        with self._engines_lock:
            eng = self._engines.get(key)
            if eng is None:
                eng = self._engines[key] = Engine(self.model, **kw)
        return eng

    def iter_predict(
        self,
        paths: Sequence[str | Path],
        *,
        top_k: int = 3,
        backend: str = "auto",
        device: str = "auto",
        batch_size: int = 16,
        num_workers: int | None = None,
        on_progress: Callable[[int], None] | None = None,
    ) -> Iterator[Prediction]:
        """Predictions in input order, streamed batch by batch (unreadable files included)."""
        paths = [Path(p) for p in paths]
        names = self.classes
        eng = self.engine(
            backend=backend, device=device, batch_size=batch_size, num_workers=num_workers
        )
        self.last_engine = eng
        for r in eng.run(Logits(top_k=top_k), paths, on_progress=on_progress):
            if not r.ok:
                yield Prediction(paths[r.index], None, 0.0, [], r.error)
                continue
            top = [(names[j], p) for j, p in r.value.top]
            yield Prediction(paths[r.index], top[0][0], top[0][1], top)

    def predict(self, paths: Sequence[str | Path], **kw: Any) -> list[Prediction]:
        """Top-k labels with probabilities for each path, in input order."""
        return list(self.iter_predict(paths, **kw))

    def evaluate(
        self,
        data_dir: str | Path,
        *,
        top_k: int = 5,
        backend: str = "auto",
        device: str = "auto",
        batch_size: int = 16,
        on_progress: Callable[[int, int], None] | None = None,
        out: str | Path | None = None,
    ) -> ClassificationReport:
        """Accuracy, top-k, per-class P/R/F1 and confusion on a labelled class-folder tree.
        ``on_progress(done, total)`` is called after each batch. With ``out``, also draws
        into that folder ``confusion.png``, ``per_class.png`` (precision and recall bars),
        ``mistakes.png`` (the most confident mistakes: photo, true and predicted label,
        confidence) and ``index.html`` showing them (``report.pictures`` lists the files)."""
        if out is not None:
            from vitrina.report.pictures import check_writable

            check_writable(out, option="--out", folder=True)
        scan = scan_folder(data_dir, classes=self.classes)
        eng = self.engine(backend=backend, device=device, batch_size=batch_size)
        self.last_engine = eng
        y, probs, bad, paths = [], [], [], []
        total, done = len(scan.samples), 0

        def step(n: int) -> None:
            nonlocal done
            done += n
            if on_progress:
                on_progress(done, total)

        for r in eng.run(Logits(), [s.path for s in scan.samples], on_progress=step):
            if r.ok:
                probs.append(r.value.probabilities)
                y.append(scan.samples[r.index].label)
                paths.append(str(scan.samples[r.index].path))
            else:
                bad.append(r.error)
        p = np.stack(probs) if probs else np.zeros((0, len(self.classes)), dtype=np.float32)
        ks = tuple(sorted({1, top_k}))
        report = classification_report(np.array(y, dtype=np.int64), p, self.classes, ks=ks)
        report.unreadable = bad
        if len(p):
            pred, conf = p.argmax(1), p.max(1)
            report.mistakes = [
                (paths[i], int(y[i]), int(pred[i]), float(conf[i]))
                for i in np.flatnonzero(pred != np.asarray(y))
            ]
        if out is not None:
            from vitrina.report.pictures import write_evaluation_pictures

            report.pictures = write_evaluation_pictures(
                out,
                classes=self.classes,
                confusion=report.confusion,
                precision=report.precision,
                recall=report.recall,
                support=report.support,
                mistakes=report.mistakes,
                accuracy=report.accuracy,
                n=report.n,
                title=f"{self.source}: evaluated on {data_dir}",
            )
        return report


def load(source: str | Path, *, weights: str = "imagenet") -> Classifier:
    """A run folder, or a zoo name with pretrained weights (e.g. ``efficientnet_lite0``)."""
    path = Path(source)
    if is_run_dir(path):
        from vitrina.runs import read_run

        if read_run(path).task == "encoder":
            raise VitrinaError(
                f"{path}: an encoder trained without labels (vitrina train-autoencoder) has no "
                "classes to predict; use it with vitrina embed / index, or fine-tune it: "
                f"vitrina train PHOTOS --arch {read_run(path).arch} --weights {path}"
            )
        return Classifier(load_model(path), str(path))
    from vitrina.runs import read_run

    if path.exists():
        read_run(path)  # raises the precise "not a run folder" error
    text = str(source)
    if "/" in text and text.split("/", 1)[0] not in ("timm", "torchvision", "vitrina"):
        read_run(path)  # a path, not a model name: "run folder not found"
    return Classifier(create(str(source), weights=weights), str(source))
