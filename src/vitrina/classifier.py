"""Deprecated: moved to :mod:`vitrina.classify.classifier`. This alias will be removed."""

import warnings

from vitrina.classify.classifier import *  # noqa: F403
from vitrina.classify.classifier import __all__  # noqa: F401

warnings.warn(
    "vitrina.classifier moved to vitrina.classify.classifier (or use vitrina.classify)",
    DeprecationWarning,
    stacklevel=2,
)
