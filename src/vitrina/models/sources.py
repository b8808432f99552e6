"""Where weights kept in folders that ``models`` cannot read itself come from.

A run folder is read by :mod:`vitrina.runs`, which registers ``"run"`` here when imported
(models sits below the run folder in the package layers and never imports it). This module
imports no PyTorch, so that loading a run does not (see :mod:`vitrina.lazy`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from vitrina.registry import Registry

if TYPE_CHECKING:
    from vitrina.models.contract import VitrinaModel

__all__ = ["WEIGHT_SOURCES"]

#: Loaders of weights kept in folders: ``"run"`` -> :func:`vitrina.runs.load_model`.
WEIGHT_SOURCES: Registry[Callable[[Path], VitrinaModel]] = Registry("weights source")
