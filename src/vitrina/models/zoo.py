"""Deprecated: the zoo moved to :mod:`vitrina.zoo`. This alias will be removed."""

import warnings

from vitrina.zoo import *  # noqa: F403
from vitrina.zoo import __all__  # noqa: F401

warnings.warn(
    "vitrina.models.zoo moved to vitrina.zoo (import it from there)",
    DeprecationWarning,
    stacklevel=2,
)
