"""What a training run returns, and what its run folder records about the training data.

Its own module so that every trainer (neural, classic, detection) shares it without importing
another trainer."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vitrina.data import Sample
from vitrina.io import file_digest


@dataclass
class TrainResult:
    run_dir: Path
    classes: list[str]
    best_epoch: int
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    bad_files: list[str] = field(default_factory=list)
    rank: int = 0  # under torchrun: this process's rank (rank 0 wrote the run folder)


def data_fingerprint(root: Path, samples: list[Sample], classes: list[str]) -> str:
    """sha256 over (class, relative path, content sha256) of every training image."""
    h = hashlib.sha256()
    for s in sorted(samples, key=lambda s: str(s.path)):
        try:
            digest = file_digest(s.path)
        except OSError:
            digest = "unreadable"
        rel = s.path.relative_to(root) if s.path.is_relative_to(root) else s.path
        h.update(f"{classes[s.label]}\t{rel}\t{digest}\n".encode())
    return h.hexdigest()


def data_record(
    data_root: Path, scan: Any, train_samples: list[Sample], val_samples: list[Sample]
) -> dict[str, Any]:
    """What ``vitrina.json`` records about the training data (``data``)."""
    return {
        "root": str(data_root.resolve()),
        "fingerprint": data_fingerprint(data_root, scan.samples, scan.classes),
        "num_images": len(scan.samples),
        "counts": scan.counts(),
        "train": len(train_samples),
        "validation": len(val_samples),
        "skipped_hidden": scan.skipped_hidden,
        "skipped_non_image": len(scan.skipped_non_image),
    }
