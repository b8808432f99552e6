"""vitrina: train, sort, embed and search images — offline on a CPU, fast on a GPU.

The Python API mirrors the command line::

    import vitrina
    result = vitrina.train("photos/", arch="efficientnet_lite0", mode="probe")
    model = vitrina.load(result.run_dir)
    model.predict(["new/1.jpg"])
    vitrina.sort_folder("new/", result.run_dir, "sorted/")

Importing is cheap: heavy modules load on first use.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from vitrina._version import __version__

__all__ = [
    "Classifier",
    "Embedder",
    "EmbeddingSpec",
    "Index",
    "VitrinaError",
    "__version__",
    "create",
    "list_models",
    "load",
    "sort_folder",
    "train",
]

_LAZY = {
    "Classifier": "vitrina.classify.classifier",
    "Embedder": "vitrina.embed",
    "EmbeddingSpec": "vitrina.embed",
    "load": "vitrina.classify.classifier",
    "create": "vitrina.runs",  # models.create, with run folders as weights
    "list_models": "vitrina.models",
    "sort_folder": "vitrina.classify.sort",
    "VitrinaError": "vitrina.errors",
    "Index": "vitrina.search.index",
}


def train(data_dir: str, *, resume: bool = False, progress: bool = False, **options: Any):
    """Train a classifier on ``data_dir/<class>/<image>``; options are those of
    :class:`vitrina.training.TrainConfig` (arch, weights, mode, epochs, batch_size, lr, optimizer,
    augment, precision, seed, out, ...). Returns a :class:`vitrina.training.TrainResult`."""
    from vitrina.training import TrainConfig, train_classifier

    return train_classifier(
        TrainConfig(data_dir=str(data_dir), **options), resume=resume, progress=progress
    )


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vitrina' has no attribute {name!r}")


if TYPE_CHECKING:
    from vitrina.classify.classifier import Classifier, load
    from vitrina.classify.sort import sort_folder
    from vitrina.embed import Embedder, EmbeddingSpec
    from vitrina.errors import VitrinaError
    from vitrina.models import create, list_models
    from vitrina.search.index import Index
