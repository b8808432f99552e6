"""The main job: a trained classifier (:func:`load`, :class:`Classifier`), sorting a folder of
photos by it (:func:`sort_folder`), and exporting it (:func:`export_model`).

A consumer of the engine: every prediction goes through :mod:`vitrina.engine` (the
``Logits`` task); nothing here stacks tensors or runs a worker pool of its own.
"""

from vitrina.classify.classifier import Classifier, Prediction, Predictions, load
from vitrina.classify.export import export_model
from vitrina.classify.sort import METHODS, SortItem, SortSummary, sort_folder

__all__ = [
    "METHODS",
    "Classifier",
    "Prediction",
    "Predictions",
    "SortItem",
    "SortSummary",
    "export_model",
    "load",
    "sort_folder",
]
