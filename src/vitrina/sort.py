"""Deprecated: moved to :mod:`vitrina.classify.sort`. This alias will be removed."""

import warnings

from vitrina.classify.sort import *  # noqa: F403
from vitrina.classify.sort import __all__  # noqa: F401

warnings.warn(
    "vitrina.sort moved to vitrina.classify.sort (or use vitrina.classify)",
    DeprecationWarning,
    stacklevel=2,
)
