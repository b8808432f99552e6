"""Models: one contract (:class:`VitrinaModel`) over vitrina's own, torchvision and timm nets.

>>> from vitrina.models import create
>>> model = create("efficientnet_lite0", weights="imagenet", num_classes=5)  # doctest: +SKIP

Importing this package builds nothing and reads no file; torchvision and timm load on first use.
"""

from __future__ import annotations

from vitrina.models.contract import VitrinaModel
from vitrina.models.preprocess import Preprocess
from vitrina.models.registry import (
    create,
    imagenet_categories,
    list_models,
    model_source,
    register_model,
)

__all__ = [
    "Preprocess",
    "VitrinaModel",
    "create",
    "imagenet_categories",
    "list_models",
    "model_source",
    "register_model",
]
