"""Inference tasks: what the engine does with an item, from decoding to a result.

A task answers three questions, and the engine does everything else (decode workers,
batching, the backend, thread budget, progress, bad items):

1. **What an item becomes in a decode worker** (:meth:`Task.preparer`): the item is decoded
   (:func:`vitrina.engine.items.load_item`: a file, an image in memory, a region of a photo),
   then the task's preparation turns the PIL image into :class:`Prepared` — ``inputs`` of
   shape ``(k, C, H, W)`` and a picklable ``meta``. ``k`` is usually 1 (one photo, one crop);
   a task may make several inputs of one item (the faces of a photo) or none (no face), and
   record what it did to the pixels (a letterbox's scale and padding) in ``meta``.
2. **Which output of the model the backend computes** (:attr:`Task.output`): ``"logits"``
   (``model.classify``), ``"embed"`` (``model.embed``), or any other method the model has
   (``"boxes"`` for a detector). Backends run outputs, never tasks, so every backend serves
   every task that asks for an output it can compute, and ``auto`` compares backends per output.
3. **How raw outputs become results mapped back to items** (:meth:`Task.finish`): the batch's
   outputs (one row per input, or a list for variable-length outputs), how many inputs each
   item made, and the items' metas → one result per item (probabilities and top-k, a
   normalised vector, boxes in the photo's own pixels, the faces of a photo).

A consumer picks a task, hands items to :meth:`vitrina.engine.Engine.run` and reads results;
it never stacks tensors, applies softmax or runs a worker pool of its own. Tasks are small
frozen dataclasses, so they pickle into decode workers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from PIL import Image

from vitrina.data.pixels import EvalPixels, InputSpec, short_side
from vitrina.lazy import is_tensor, lazy_module
from vitrina.registry import Registry

if TYPE_CHECKING:
    import torch
else:
    torch = lazy_module("torch")

__all__ = [
    "TASKS",
    "Embedding",
    "ImagePreparer",
    "Logits",
    "Prepared",
    "Scores",
    "Task",
    "rows_per_item",
    "short_side",
]


@dataclass
class Prepared:
    """One item made ready by a decode worker.

    ``inputs``: ``(k, C, H, W)`` float32 array, a numpy array or a tensor; ``k`` may be 0
    (nothing to run for this item). The plain preparation makes numpy arrays, which
    OpenVINO and ONNX Runtime read as they are (a run on them never imports torch); the
    engine hands PyTorch backends tensors.
    ``meta``: whatever the task needs to map outputs back (picklable); ``None`` if nothing.
    """

    inputs: np.ndarray | torch.Tensor
    meta: Any = None

    def __len__(self) -> int:
        return int(self.inputs.shape[0])


class ImagePreparer:
    """The plain preparation: the model's eval transform (in numpy), one input per item, no
    meta."""

    def __init__(self, pre: InputSpec) -> None:
        self.transform = EvalPixels(pre)

    def __call__(self, image: Image.Image, item: Any = None) -> Prepared:
        return Prepared(self.transform(image)[None])


def rows_per_item(outputs: Any, counts: Sequence[int]) -> list[Any]:
    """Split a batch's outputs into one chunk per item (``counts[i]`` rows for item ``i``).

    Tensor outputs are split along the first dimension; list outputs (one entry per input,
    e.g. a detector's boxes of each image) and arrays are sliced."""
    if is_tensor(outputs):
        return list(torch.split(outputs, list(counts))) if len(counts) else []
    out, start = [], 0
    for n in counts:
        out.append(outputs[start : start + n])
        start += n
    return out


class Task:
    """Base class of inference tasks (see the module docstring). Subclasses are frozen
    dataclasses that set :attr:`output` and override :meth:`finish`, and
    :meth:`preparer` when an item is more than "the photo through the eval transform"."""

    #: registry name (``TASKS``), for messages and describe()
    name: ClassVar[str] = "task"
    #: the model output a backend computes for this task
    output: ClassVar[str] = "logits"
    #: preparation (detection, alignment...) costs far more than decoding: the engine gives
    #: the decode workers every core
    heavy_preparation: ClassVar[bool] = False
    #: :meth:`finish` takes numpy outputs as well as tensors (a runtime answering in numpy
    #: is then never converted, and the run may never import torch); otherwise the engine
    #: hands it tensors
    takes_arrays: ClassVar[bool] = False

    def image_mode(self, pre: InputSpec) -> str:
        """The PIL mode items are decoded to ("L" for one-channel models)."""
        return "L" if pre.channels == 1 else "RGB"

    def decode_side(self, pre: InputSpec) -> int | None:
        """The short side files may be decoded to (JPEG DCT scaling); ``None``: full size."""
        return short_side(pre)

    def preparer(self, pre: InputSpec) -> Callable[[Image.Image, Any], Prepared]:
        """A picklable callable ``(decoded image, item) -> Prepared`` (runs in decode workers;
        the item is there for tasks that record where the image came from)."""
        return ImagePreparer(pre)

    def finish(self, outputs: Any, counts: Sequence[int], metas: Sequence[Any]) -> list[Any]:
        """Raw outputs of a batch -> one result per item (``len(counts)`` results)."""
        raise NotImplementedError


TASKS: Registry[type[Task]] = Registry("task")


@dataclass(frozen=True)
class Scores:
    """A classifier's answer for one item: every class's probability and the best ``k``.

    ``probabilities``: ``(C,)`` float32, sums to 1; ``top``: ``[(class index, probability)]``,
    best first; ``logits``: the raw ``(C,)`` scores they came from."""

    probabilities: np.ndarray
    top: list[tuple[int, float]] = field(default_factory=list)
    logits: np.ndarray | None = None

    @property
    def best(self) -> tuple[int, float]:
        return self.top[0]


@TASKS.register("logits")
@dataclass(frozen=True)
class Logits(Task):
    """Classification: softmax probabilities and the top ``top_k`` classes per item.

    Each item gives one input, so each result is a :class:`Scores`."""

    top_k: int = 5
    name: ClassVar[str] = "logits"
    output: ClassVar[str] = "logits"
    takes_arrays: ClassVar[bool] = True

    def finish(self, outputs: Any, counts: Sequence[int], metas: Sequence[Any]) -> list[Any]:
        raw = _float32(outputs)
        probs = _softmax(raw)
        k = max(1, min(self.top_k, probs.shape[1])) if probs.size else 0
        # best first; among equal probabilities the lower class index first (as topk)
        order = np.argsort(-probs, axis=1, kind="stable")[:, :k] if k else None
        results: list[Any] = []
        row = 0
        for n in counts:
            if n == 0:
                results.append(None)
                continue
            top = [(int(j), float(probs[row, j])) for j in order[row]]  # type: ignore[index]
            results.append(Scores(probs[row], top, raw[row]))
            row += n
        return results


def _float32(outputs: Any) -> np.ndarray:
    """A batch's outputs as a float32 numpy array (tensors on any device, or arrays)."""
    if is_tensor(outputs):
        outputs = outputs.detach().float().cpu().numpy()
    return np.asarray(outputs, dtype=np.float32)


def _softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of ``(N, C)`` logits, in float32 (as ``torch.softmax``)."""
    if not logits.size:
        return logits.copy()
    z = logits - logits.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


@TASKS.register("embedding")
@dataclass(frozen=True)
class Embedding(Task):
    """An embedding per item: ``(D,)`` float32, L2-normalised when ``normalize`` is set
    (cosine search), raw otherwise (dlib's face vectors are compared by Euclidean distance)."""

    normalize: bool = True
    name: ClassVar[str] = "embedding"
    output: ClassVar[str] = "embed"
    takes_arrays: ClassVar[bool] = True

    def finish(self, outputs: Any, counts: Sequence[int], metas: Sequence[Any]) -> list[Any]:
        arr = _float32(outputs).reshape(len(outputs), -1)
        if self.normalize:  # as torch.nn.functional.normalize(p=2, eps=1e-12)
            norms = np.maximum(np.linalg.norm(arr, axis=1, keepdims=True), 1e-12)
            arr = (arr / norms).astype(np.float32, copy=False)
        results: list[Any] = []
        row = 0
        for n in counts:
            results.append(arr[row] if n == 1 else arr[row : row + n])
            row += n
        return results
