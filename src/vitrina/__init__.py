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

__version__ = "0.1.0"

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
    "Classifier": "vitrina.classifier",
    "Embedder": "vitrina.embed",
    "EmbeddingSpec": "vitrina.embed",
    "load": "vitrina.classifier",
    "create": "vitrina.models",
    "list_models": "vitrina.models",
    "sort_folder": "vitrina.sort",
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
    from vitrina.classifier import Classifier, load
    from vitrina.embed import Embedder, EmbeddingSpec
    from vitrina.errors import VitrinaError
    from vitrina.models import create, list_models
    from vitrina.search.index import Index
    from vitrina.sort import sort_folder
