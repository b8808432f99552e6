"""Contact sheets moved to :mod:`vitrina.report.sheets` (every picture lives in ``report``);
this alias keeps old imports working."""

from vitrina.report.sheets import *  # noqa: F403
from vitrina.report.sheets import __all__  # noqa: F401
