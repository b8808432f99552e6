"""Typed, user-facing errors.

Every error a user can cause (bad file, bad folder, bad name, missing weights) is a
``VitrinaError``. Its message is one line that names the file or thing and the problem;
the CLI prints it and exits with code 1, never a traceback.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import ModuleType

__all__ = [
    "DataError",
    "DiskFullError",
    "ImageReadError",
    "InputSizeError",
    "MissingExtraError",
    "OutputExistsError",
    "RunFolderError",
    "UnknownNameError",
    "VitrinaError",
    "WeightsNotFoundError",
    "refuse_existing",
    "require",
]


class VitrinaError(Exception):
    """A failure the user can act on. ``str(error)`` is one line."""


class ImageReadError(VitrinaError):
    """An image file that cannot be decoded safely (missing, empty, truncated, not an image, too large)."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class DataError(VitrinaError):
    """A dataset folder that cannot be used (missing, empty, one class, bad class names)."""


class InputSizeError(VitrinaError):
    """An input size the network cannot take (a fixed-size network asked for another size)."""


class UnknownNameError(VitrinaError, KeyError):
    """A registry lookup with a name that does not exist; the message suggests the closest names."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class WeightsNotFoundError(VitrinaError):
    """Pretrained weights requested but not available offline; the message says what to put where."""


class RunFolderError(VitrinaError):
    """A run folder that is missing, incomplete, or whose checkpoint fails its integrity check."""


class DiskFullError(VitrinaError):
    """The disk filled up while writing; nothing half-written is left behind.

    ``path``: what was being written; ``disk``: the mount point it lives on (when known), so
    a message can say where to free space."""

    def __init__(self, message: str, *, path: str | Path | None = None, disk: str = "") -> None:
        super().__init__(message)
        self.path = Path(path) if path is not None else None
        self.disk = disk


class OutputExistsError(VitrinaError):
    """An output file is already there: vitrina never overwrites what the user owns."""


def refuse_existing(*paths: str | os.PathLike[str]) -> None:
    """Raise :class:`OutputExistsError` naming the first of ``paths`` that exists. Call it
    before any work: a run that would fail at the end should fail at the start."""
    for p in map(Path, paths):
        if p.exists() or p.is_symlink():
            raise OutputExistsError(f"{p}: file exists; choose another --out (nothing was written)")


class MissingExtraError(VitrinaError, ImportError):
    """An optional library that a command needs is not installed. ``pip install vitrina`` is
    the light core (train, sort, predict, evaluate, zoo, embed, index, search); faces,
    explanations, the web service and the rest are extras. The message is the one line to run.

    Also an ``ImportError``, so code that already falls back on a missing import keeps doing so.
    """

    def __init__(self, module: str, extra: str, feature: str = "") -> None:
        self.module = module
        self.extra = extra
        self.feature = feature
        who = f"{feature} needs {module}, which is" if feature else f"{module} is"
        super().__init__(f"{who} not installed: pip install 'vitrina[{extra}]'")

    def __reduce__(self) -> tuple:  # raised in a worker process, re-raised in the parent
        return (type(self), (self.module, self.extra, self.feature))


def require(module: str, extra: str, feature: str = "") -> ModuleType:
    """Import and return the optional ``module``, or raise :class:`MissingExtraError` naming the
    extra that installs it: ``dlib = require("dlib", "faces", "face recognition")``.

    The one gate for every optional import, so that ``import vitrina`` and the core commands
    never need an extra, and a missing one is a one-line error with exit code 1."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(module.split(".")[0], extra, feature) from exc
