"""Models: one contract (:class:`VitrinaModel`) over vitrina's own, torchvision and timm nets.

>>> from vitrina.models import create
>>> model = create("efficientnet_lite0", weights="imagenet", num_classes=5)  # doctest: +SKIP

Importing this package builds nothing, reads no file and imports no PyTorch: the contract,
the registry and vitrina's own networks are imported when first named (a run whose backend
has its own compiled copy never needs them, see :mod:`vitrina.lazy`); torchvision and timm
load on first use.
``models`` is a leaf of the package graph: it imports no engine, run folder, report or io code.
The zoo (what each architecture costs, measured here) is :mod:`vitrina.zoo`.
"""

from __future__ import annotations

import importlib
import warnings
from typing import TYPE_CHECKING, Any

from vitrina.lazy import lazy_exports
from vitrina.models.preprocess import Preprocess
from vitrina.models.sources import WEIGHT_SOURCES

if TYPE_CHECKING:
    from vitrina.models.contract import VitrinaModel
    from vitrina.models.registry import (
        check_input_size,
        create,
        imagenet_categories,
        list_models,
        model_source,
        register_model,
    )

__all__ = [
    "WEIGHT_SOURCES",
    "Preprocess",
    "VitrinaModel",
    "check_input_size",
    "create",
    "imagenet_categories",
    "list_models",
    "model_source",
    "register_model",
]

# Names that moved to vitrina.zoo (kept as deprecated aliases; loaded by name so that this
# package never imports the zoo, which sits above it).
_MOVED_TO_ZOO = ("CLASSIC", "ZooEntry", "describe", "measure", "plot_zoo", "zoo")


#: The names on PyTorch, by module: imported when first read.
_ON_TORCH = {
    "VitrinaModel": "contract",
    "check_input_size": "registry",
    "create": "registry",
    "imagenet_categories": "registry",
    "list_models": "registry",
    "model_source": "registry",
    "register_model": "registry",
}


_on_torch = lazy_exports(globals(), _ON_TORCH)


def __getattr__(name: str) -> Any:
    if name in _ON_TORCH:
        return _on_torch(name)
    if name in _MOVED_TO_ZOO:
        warnings.warn(
            f"vitrina.models.{name} moved to vitrina.zoo (import it from there)",
            DeprecationWarning,
            stacklevel=2,
        )
        zoo = importlib.import_module("vitrina.zoo")
        return zoo if name == "zoo" else getattr(zoo, name)
    raise AttributeError(f"module 'vitrina.models' has no attribute {name!r}")
