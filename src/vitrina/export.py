"""Deprecated: moved to :mod:`vitrina.classify.export`. This alias will be removed."""

import warnings

from vitrina.classify.export import *  # noqa: F403
from vitrina.classify.export import __all__  # noqa: F401

warnings.warn(
    "vitrina.export moved to vitrina.classify.export (or use vitrina.classify)",
    DeprecationWarning,
    stacklevel=2,
)
