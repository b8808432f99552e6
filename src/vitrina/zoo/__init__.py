"""The zoo: the classic CNN architectures as a catalogue, described and measured here.

>>> from vitrina import zoo
>>> zoo.describe("resnext50").params  # doctest: +SKIP
25028904
>>> [e.name for e in zoo.find(max_mb=20, pretrained_only=True).entries]  # doctest: +SKIP

A consumer of :mod:`vitrina.models` (it builds models by name) and of :mod:`vitrina.engine`
(it times them through the backends): ``models`` never imports it.
"""

from vitrina.zoo.catalogue import (
    CLASSIC,
    FAMILIES,
    OTHER,
    Family,
    Paper,
    Timing,
    ZooEntry,
    cache_dir,
    count_flops,
    describe,
    family_names,
    family_of,
    is_described,
    paper_of,
)
from vitrina.zoo.find import SORT_KEYS, ZooQuery, find, resolve_family, sort_entries
from vitrina.zoo.measurements import is_measured, machine_key, measure, measurement_backends
from vitrina.zoo.plot import plot_zoo

__all__ = [
    "CLASSIC",
    "FAMILIES",
    "OTHER",
    "SORT_KEYS",
    "Family",
    "Paper",
    "Timing",
    "ZooEntry",
    "ZooQuery",
    "cache_dir",
    "count_flops",
    "describe",
    "family_names",
    "family_of",
    "find",
    "is_described",
    "is_measured",
    "machine_key",
    "measure",
    "measurement_backends",
    "paper_of",
    "plot_zoo",
    "resolve_family",
    "sort_entries",
]
