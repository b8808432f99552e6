"""Models: one contract (:class:`VitrinaModel`) over vitrina's own, torchvision and timm nets.

>>> from vitrina.models import create
>>> model = create("efficientnet_lite0", weights="imagenet", num_classes=5)  # doctest: +SKIP
>>> describe("resnext50").params  # the zoo (vitrina.models.zoo)  # doctest: +SKIP
25028904

Importing this package builds nothing and reads no file; torchvision and timm load on first use.
"""

from __future__ import annotations

from vitrina.models import zoo
from vitrina.models.contract import VitrinaModel
from vitrina.models.preprocess import Preprocess
from vitrina.models.registry import (
    create,
    imagenet_categories,
    list_models,
    model_source,
    register_model,
)
from vitrina.models.zoo import CLASSIC, ZooEntry, describe, measure, plot_zoo

__all__ = [
    "CLASSIC",
    "Preprocess",
    "VitrinaModel",
    "ZooEntry",
    "create",
    "describe",
    "imagenet_categories",
    "list_models",
    "measure",
    "model_source",
    "plot_zoo",
    "register_model",
    "zoo",
]
