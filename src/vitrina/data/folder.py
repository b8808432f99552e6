"""Folder datasets: one sub-folder per class.

``scan_folder`` walks ``ROOT/<class>/**/<image>``: hidden files and folders are skipped and
counted, non-image files are skipped and counted. Splits are seeded and stratified.
"""

from __future__ import annotations

import os
import random
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from vitrina.errors import DataError
from vitrina.io import is_image_path

__all__ = [
    "FolderScan",
    "Sample",
    "check_class_name",
    "expand_image_paths",
    "iter_image_files",
    "scan_folder",
    "stratified_split",
]


@dataclass(frozen=True)
class Sample:
    """One labelled image: ``label`` indexes ``FolderScan.classes``."""

    path: Path
    label: int


@dataclass
class FolderScan:
    """What a class-folder tree holds."""

    root: Path
    classes: list[str]
    samples: list[Sample]
    skipped_hidden: int = 0
    skipped_non_image: list[Path] = field(default_factory=list)
    loose_images: int = 0  # images directly in ROOT, outside any class folder

    def counts(self) -> dict[str, int]:
        c = Counter(s.label for s in self.samples)
        return {name: c.get(i, 0) for i, name in enumerate(self.classes)}


_MAX_NAME_BYTES = 255  # NAME_MAX of Linux, macOS and Windows file systems


def check_class_name(name: str) -> str:
    """Refuse class names that could escape an output folder or clash with it."""
    bad = (
        not name
        or name in (".", "..")
        or "/" in name
        or "\\" in name
        or "\x00" in name
        or name.startswith(".")
        or os.path.isabs(name)
    )
    if bad:
        raise DataError(f"class name {name!r} is not a safe folder name (no '/', '\\', '..')")
    try:
        raw = os.fsencode(name)  # undecodable bytes read from disk come back as they were
    except UnicodeEncodeError:
        raise DataError(
            f"class name {name!r} cannot be written as a folder name (it holds a lone surrogate)"
        ) from None
    if len(raw) > _MAX_NAME_BYTES:
        raise DataError(
            f"class name {name[:24]!r}... is {len(raw)} bytes long; a folder name holds at most "
            f"{_MAX_NAME_BYTES} bytes"
        )
    return name


def _walk(folder: Path, recursive: bool) -> tuple[list[Path], int, list[Path]]:
    """Return (images, hidden_count, non_images) under folder, sorted for determinism."""
    images: list[Path] = []
    non_images: list[Path] = []
    hidden = 0
    for dirpath, dirnames, filenames in os.walk(folder):
        keep = sorted(d for d in dirnames if not d.startswith("."))
        hidden += len(dirnames) - len(keep)
        dirnames[:] = keep if recursive else []
        for name in sorted(filenames):
            p = Path(dirpath) / name
            if name.startswith("."):
                hidden += 1
            elif is_image_path(p):
                images.append(p)
            else:
                non_images.append(p)
    return images, hidden, non_images


def iter_image_files(
    folder: str | Path, *, recursive: bool = False
) -> tuple[list[Path], int, list[Path]]:
    """Image files in a folder (not a class tree): (images, hidden_count, non_images)."""
    root = Path(folder)
    _require_dir(root)
    return _walk(root, recursive)


def expand_image_paths(
    items: Iterable[str | os.PathLike[str]], *, recursive: bool = True
) -> list[Path]:
    """Photos named on a command line: files as given (a file that turns out unreadable is
    reported by whoever reads it), folders expanded to the images inside them (sorted, hidden
    ones skipped; sub-folders too unless ``recursive=False``), in argument order.

    A path that does not exist raises :class:`DataError` naming it: a typo should stop the
    run before any work, not show up as one unreadable photo among thousands."""
    found: list[Path] = []
    for p in map(Path, items):
        if p.is_dir():
            found += _walk(p, recursive)[0]
        elif p.exists() or p.is_symlink():
            found.append(p)
        else:
            raise DataError(f"{p}: no such file or folder")
    return found


def _require_dir(root: Path) -> None:
    if not root.exists():
        raise DataError(f"{root}: folder not found")
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")


def scan_folder(
    root: str | Path, *, classes: list[str] | None = None, min_classes: int = 1
) -> FolderScan:
    """Scan ``ROOT/<class>/...``. With ``classes`` given, labels follow that order and a
    folder that is not one of them is an error (evaluation against a trained model)."""
    root = Path(root)
    _require_dir(root)
    entries = sorted(os.scandir(root), key=lambda e: e.name)
    hidden = sum(1 for e in entries if e.name.startswith("."))
    class_dirs = [e for e in entries if e.is_dir() and not e.name.startswith(".")]
    loose = [e for e in entries if e.is_file() and not e.name.startswith(".")]
    loose_images = sum(1 for e in loose if is_image_path(e.name))
    non_images = [Path(e.path) for e in loose if not is_image_path(e.name)]

    found: dict[str, list[Path]] = {}
    for e in class_dirs:
        imgs, h, non = _walk(Path(e.path), recursive=True)
        hidden += h
        non_images += non
        if imgs:
            found[e.name] = imgs

    if not found:
        hint = f" ({loose_images} images lie directly in it)" if loose_images else ""
        raise DataError(
            f"{root}: no images in class sub-folders{hint}; expected {root}/<class>/<image>"
        )
    if classes is None:
        names = sorted(found)
    else:
        names = list(classes)
        unknown = sorted(set(found) - set(names))
        if unknown:
            raise DataError(
                f"{root}: class folder {unknown[0]!r} is not one of the model's classes "
                f"({', '.join(names)})"
            )
    for n in names:
        check_class_name(n)
    if len(found) < min_classes:
        only = ", ".join(repr(n) for n in sorted(found))
        raise DataError(
            f"{root}: only {len(found)} class ({only}); a classifier needs at least "
            f"{min_classes} class folders with images"
        )
    index = {n: i for i, n in enumerate(names)}
    samples = [Sample(p, index[n]) for n in names for p in found.get(n, [])]
    return FolderScan(root, names, samples, hidden, non_images, loose_images)


def stratified_split(
    samples: list[Sample], val_fraction: float = 0.2, seed: int = 0
) -> tuple[list[Sample], list[Sample]]:
    """Seeded split keeping class proportions; every class with >= 2 images gets >= 1 in
    validation and keeps >= 1 in training."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    rng = random.Random(seed)
    by_class: dict[int, list[Sample]] = {}
    for s in samples:
        by_class.setdefault(s.label, []).append(s)
    train: list[Sample] = []
    val: list[Sample] = []
    for label in sorted(by_class):
        group = sorted(by_class[label], key=lambda s: str(s.path))
        rng.shuffle(group)
        n_val = round(len(group) * val_fraction) if len(group) >= 2 else 0
        n_val = min(max(n_val, 1 if len(group) >= 2 else 0), len(group) - 1)
        val += group[:n_val]
        train += group[n_val:]
    return train, val
