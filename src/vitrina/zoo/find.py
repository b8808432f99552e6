"""Which model fits? :func:`find` answers a query over the zoo (name pattern, family, size,
weights on this machine), describing only what the cheap filters let through, and measuring
on request."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from vitrina.errors import VitrinaError
from vitrina.models import list_models
from vitrina.models.registry import resolve_name
from vitrina.zoo import catalogue
from vitrina.zoo.catalogue import OTHER, ZooEntry, describe, family_names, family_of

__all__ = ["SORT_KEYS", "ZooQuery", "find", "resolve_family", "sort_entries"]

#: Orders :func:`find` accepts (``top1``: best first; ``year``: oldest first).
SORT_KEYS = ("size", "params", "gflops", "top1", "year", "name")


@dataclass
class ZooQuery:
    """What :func:`find` found.

    ``entries``: described models that pass every filter, in the requested order;
    ``skipped``: ``(name, why)`` for names that cannot be described (not a classifier...);
    ``matched``: how many names the pattern and cheap filters gave before ``limit``.
    """

    entries: list[ZooEntry] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    matched: int = 0
    limit: int = 0

    @property
    def truncated(self) -> bool:
        return self.matched > self.limit


def resolve_family(name: str) -> str:
    """The family's canonical name, whatever its case; unknown names raise with the list."""
    valid = family_names()
    for v in valid:
        if v.lower() == name.strip().lower():
            return v
    raise VitrinaError(f"unknown family {name!r} (valid: {', '.join(valid)})")


def _family_name(name: str) -> str:
    fam = family_of(name)
    return fam.name if fam else OTHER


def _names(pattern: str | None) -> list[str]:
    if pattern is None:
        return [*catalogue.BEFORE_CNNS, *catalogue.CLASSIC]
    if not any(c in pattern for c in "*?["):
        resolve_name(pattern)  # unknown: one line with suggestions
        return [pattern]
    return list_models(pattern)


def sort_entries(entries: list[ZooEntry], key: str) -> None:
    """Sort in place by one of :data:`SORT_KEYS`."""
    if key not in SORT_KEYS:
        raise VitrinaError(f"unknown sort key {key!r} (choose {', '.join(SORT_KEYS)})")
    if key == "name":
        entries.sort(key=lambda e: e.name)
    elif key == "top1":  # best first, unknown last
        entries.sort(key=lambda e: (e.top1 is None, -(e.top1 or 0.0), e.size_mb_fp32))
    elif key == "year":
        entries.sort(key=lambda e: (e.year is None, e.year or 0, e.name))
    else:
        attr = {"size": "size_mb_fp32", "params": "params", "gflops": "gflops"}[key]
        entries.sort(key=lambda e: (getattr(e, attr), e.name))


def find(
    pattern: str | None = None,
    *,
    family: str | None = None,
    max_mb: float | None = None,
    pretrained_only: bool = False,
    limit: int = 60,
    sort: str = "size",
    measure: Sequence[str] = (),
    threads: int | None = None,
    refresh: bool = False,
    on_progress: Callable[[str, int, int], Any] | None = None,
) -> ZooQuery:
    """Models of the zoo matching every criterion.

    Args:
        pattern: a model name, or a shell wildcard over every torchvision / timm / vitrina
            name (``"*mobilenet*"``); ``None``: the review's list, the models before CNNs
            (:data:`BEFORE_CNNS`) then the classic CNNs (:data:`CLASSIC`).
        family: keep one family (``"ResNet"``, any case).
        max_mb: keep models whose fp32 weights take at most this many MB.
        pretrained_only: keep models whose ImageNet weights are on this machine.
        limit: describe at most this many names (describing builds the network).
        sort: one of :data:`SORT_KEYS`.
        measure: backends to time each kept model with (:func:`vitrina.zoo.measure`).
        on_progress: ``(stage, done, total)`` with stage ``"describe"`` or ``"measure"``.

    Example::

        >>> from vitrina import zoo
        >>> [e.name for e in zoo.find(max_mb=20, pretrained_only=True).entries]  # doctest: +SKIP
        ['mobilenet_v3_small', 'efficientnet_lite0', ...]
    """
    if max_mb is not None and max_mb <= 0:
        raise VitrinaError(f"--max-mb must be positive, got {max_mb:g}")
    if limit < 1:
        raise VitrinaError(f"--limit must be at least 1, got {limit}")
    if sort not in SORT_KEYS:
        raise VitrinaError(f"unknown --sort {sort!r} (choose {', '.join(SORT_KEYS)})")
    wanted = resolve_family(family) if family else None
    # cheap filters first (name, family, weights on disk): describing is the cost
    names = _names(pattern)
    if wanted is not None:
        names = [n for n in names if _family_name(n) == wanted]
    if pretrained_only:
        from vitrina.models.weights import pretrained_available_offline

        names = [n for n in names if pretrained_available_offline(*resolve_name(n))]
    result = ZooQuery(matched=len(names), limit=limit)
    names = names[:limit]
    for i, name in enumerate(names, 1):
        try:
            result.entries.append(describe(name, refresh=refresh))
        except VitrinaError as e:
            result.skipped.append((name, str(e).removeprefix(f"{name}: ")))
        if on_progress:
            on_progress("describe", i, len(names))
    if max_mb is not None:
        result.entries = [e for e in result.entries if e.size_mb_fp32 <= max_mb]
    if measure and result.entries:
        from vitrina.zoo.measurements import measure as measure_one

        total, done = len(result.entries) * len(measure), 0
        for e in result.entries:
            for b in measure:
                e.timings.update(measure_one(e.name, (b,), threads=threads, refresh=refresh))
                done += 1
                if on_progress:
                    on_progress("measure", done, total)
    sort_entries(result.entries, sort)
    return result
