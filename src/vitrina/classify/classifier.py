"""A trained classifier ready to use: ``vitrina.load(run_dir).predict(photos)``.

``predict`` takes photos as they come: paths, PIL images, numpy arrays, torch tensors
(:func:`vitrina.engine.as_items`), one or a list. One photo gives one :class:`Prediction`, a
list gives :class:`Predictions`; both show as a table with thumbnails in a notebook and turn
into a pandas table with ``to_pandas()``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

import numpy as np
from PIL import Image

from vitrina.data import scan_folder
from vitrina.engine import Engine, Logits, as_items, item_name, thumbnail
from vitrina.errors import VitrinaError
from vitrina.evaluate import ClassificationReport, classification_report
from vitrina.report.notebook import Error, Tile, dataframe, html_table
from vitrina.runs import is_run_dir, load_model

if TYPE_CHECKING:
    from vitrina.models import VitrinaModel

__all__ = ["Classifier", "Prediction", "Predictions", "load"]

_TABLE_COLUMNS = ("photo", "label", "confidence", "top", "error")
_SHOWN = 50  # rows a notebook shows; to_pandas() has them all


@dataclass
class Prediction:
    """One image's answer. ``label`` is None when the file could not be read (see ``error``).

    ``path``: the file, or for a photo held in memory its description (``<image 64x48>``);
    ``item``: what was passed (kept for the notebook thumbnail, not serialised)."""

    path: Path | str
    label: str | None
    confidence: float
    top: list[tuple[str, float]] = field(default_factory=list)
    error: str | None = None
    item: Any = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "label": self.label,
            "confidence": self.confidence,
            "top": [{"label": lbl, "probability": p} for lbl, p in self.top],
            "error": self.error,
        }

    def _row(self) -> list[Any]:
        photo = thumbnail(self.item if self.item is not None else self.path)
        name = self.path.name if isinstance(self.path, Path) else str(self.path)
        top = ", ".join(f"{lbl} {p:.2f}" for lbl, p in self.top)
        error = Error(self.error) if self.error else None
        return [Tile(photo, name), self.label, self.confidence, top, error]

    def _record(self) -> dict[str, Any]:
        top = "; ".join(f"{lbl} {p:.4f}" for lbl, p in self.top)
        d = self.to_dict()
        return {
            "photo": d["path"],
            **{k: d[k] for k in ("label", "confidence", "error")},
            "top": top,
        }

    def _repr_html_(self) -> str:
        return html_table(f"prediction: {self.label}", _TABLE_COLUMNS, [self._row()])

    def to_pandas(self) -> Any:
        """A one-row ``pandas.DataFrame``: photo, label, confidence, top, error."""
        return dataframe([self._record()], _TABLE_COLUMNS)


class Predictions(list[Prediction]):
    """The predictions of several photos, in input order: a list that shows as a table with
    thumbnails in a notebook and becomes a ``pandas.DataFrame`` with :meth:`to_pandas`."""

    def _repr_html_(self) -> str:
        bad = sum(p.error is not None for p in self)
        title = f"{len(self)} predictions" + (f" ({bad} unreadable)" if bad else "")
        rows = [p._row() for p in self[:_SHOWN]]
        return html_table(title, _TABLE_COLUMNS, rows, more=len(self) - len(rows))

    def to_pandas(self) -> Any:
        """One row per photo: photo (path or description), label, confidence, top (``label
        probability; ...``), error."""
        return dataframe([p._record() for p in self], _TABLE_COLUMNS)


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
        photos: Any,
        *,
        top_k: int = 3,
        backend: str = "auto",
        device: str = "auto",
        batch_size: int = 16,
        num_workers: int | None = None,
        on_progress: Callable[[int], None] | None = None,
    ) -> Iterator[Prediction]:
        """Predictions in input order, streamed batch by batch (unreadable photos included,
        with ``error`` set). ``photos``: see :meth:`predict`."""
        items, _ = as_items(photos)
        names = self.classes
        eng = self.engine(
            backend=backend, device=device, batch_size=batch_size, num_workers=num_workers
        )
        self.last_engine = eng
        for r in eng.run(Logits(top_k=top_k), items, on_progress=on_progress):
            item = items[r.index]
            where = Path(item) if isinstance(item, str | os.PathLike) else item_name(item)
            if not r.ok:
                yield Prediction(where, None, 0.0, [], r.error, item=item)
                continue
            top = [(names[j], p) for j, p in r.value.top]
            yield Prediction(where, top[0][0], top[0][1], top, item=item)

    @overload
    def predict(self, photos: str | os.PathLike[str] | Image.Image, **kw: Any) -> Prediction: ...
    @overload
    def predict(self, photos: Any, **kw: Any) -> Prediction | Predictions: ...
    def predict(self, photos: Any, **kw: Any) -> Prediction | Predictions:
        """Top-k labels with probabilities, in input order.

        ``photos``: one photo -- a path, a PIL image, a numpy array (``(H, W, 3)`` uint8 RGB,
        ``(H, W)`` grey, floats in [0, 1]), a torch tensor (``(C, H, W)`` float in [0, 1] or
        uint8) -- or a list of them (or a 4-D batch array / tensor). One photo gives one
        :class:`Prediction`, several give :class:`Predictions` (a list). An unreadable photo
        gets ``label=None`` and ``error``; the others are still predicted. Keywords: see
        :meth:`iter_predict`."""
        items, single = as_items(photos)
        out = Predictions(self.iter_predict(items, **kw))
        return out[0] if single else out

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


def load(source: str | Path, *, weights: str = "imagenet", deferred: bool = False) -> Classifier:
    """A run folder, or a zoo name with pretrained weights (e.g. ``efficientnet_lite0``).

    ``deferred``: a run's network is built only when a backend needs it (a
    :class:`vitrina.runs.DeferredModel`): a run with a cached ``auto`` decision and a
    compiled runtime starts without importing the network's library (``vitrina sort`` and
    ``predict`` load this way)."""
    path = Path(source)
    if is_run_dir(path):
        from vitrina.runs import read_run

        if read_run(path).task == "encoder":
            raise VitrinaError(
                f"{path}: an encoder trained without labels (vitrina train-autoencoder) has no "
                "classes to predict; use it with vitrina embed / index, or fine-tune it: "
                f"vitrina train PHOTOS --arch {read_run(path).arch} --weights {path}"
            )
        return Classifier(load_model(path, deferred=deferred), str(path))
    from vitrina.runs import read_run

    if path.exists():
        read_run(path)  # raises the precise "not a run folder" error
    text = str(source)
    if "/" in text and text.split("/", 1)[0] not in ("timm", "torchvision", "vitrina"):
        read_run(path)  # a path, not a model name: "run folder not found"
    from vitrina.models import create

    return Classifier(create(str(source), weights=weights), str(source))
