"""The embedded demo: scikit-learn's handwritten digits, LeNet-5 from scratch, then sort.

Needs nothing but the install. Writes the 1,797 digits as PNG files (a folder per digit for
80% of them, a flat folder of "new photos" for the held-out 20%), trains LeNet-5, sorts the
new photos into ten folders plus ``unsure/``, and measures held-out accuracy.
"""

from __future__ import annotations

import csv
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vitrina.errors import VitrinaError
from vitrina.io import atomic_write_bytes

__all__ = ["DemoResult", "run_demo", "write_digits"]

MARKER = ".vitrina-demo"


@dataclass
class DemoResult:
    workdir: Path
    run_dir: Path
    sorted_dir: Path
    accuracy: float  # top-1 on every held-out digit
    n_heldout: int
    n_unsure: int
    sure_accuracy: float  # accuracy of the digits that were not put in unsure/
    seconds: float


def write_digits(
    root: Path, *, heldout_fraction: float = 0.2, seed: int = 0
) -> tuple[Path, Path, dict[str, str]]:
    """Write sklearn's digits as 8x8 grayscale PNGs. Returns (labelled dir, new dir, truth)."""
    from io import BytesIO

    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images * (255.0 / 16.0)).round().astype(np.uint8)
    idx = np.arange(len(images))
    tr, te = train_test_split(
        idx, test_size=heldout_fraction, stratify=digits.target, random_state=seed
    )
    labelled, new = root / "labelled", root / "new"

    def png(a: np.ndarray) -> bytes:
        buf = BytesIO()
        Image.fromarray(a, mode="L").save(buf, format="PNG")
        return buf.getvalue()

    for i in tr:
        d = labelled / str(digits.target[i])
        d.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(d / f"digit-{i:04d}.png", png(images[i]))
    new.mkdir(parents=True, exist_ok=True)
    truth: dict[str, str] = {}
    rng = np.random.default_rng(seed)
    for k, i in enumerate(rng.permutation(te)):
        name = f"photo-{k:04d}.png"  # the name does not give the label away
        atomic_write_bytes(new / name, png(images[i]))
        truth[name] = str(digits.target[i])
    with open(root / "new-truth.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "digit"])
        w.writerows(sorted(truth.items()))
    return labelled, new, truth


def _claim_workdir(workdir: Path) -> None:
    """Use ``workdir`` only if it is new or an earlier demo's (marked); never a user folder."""
    if workdir.exists():
        if not (workdir / MARKER).is_file():
            if any(workdir.iterdir()):
                raise VitrinaError(
                    f"{workdir}: folder exists and was not made by `vitrina demo`; choose another --out"
                )
        else:
            shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / MARKER).write_text("made by `vitrina demo`; safe to delete\n")


def run_demo(
    workdir: str | Path = "vitrina-demo",
    *,
    epochs: int = 30,
    seed: int = 0,
    min_confidence: float = 0.6,
    progress: bool = True,
    on_sort_progress: Callable[[int, int], None] | None = None,
) -> DemoResult:
    import time

    from vitrina.classify.sort import sort_folder
    from vitrina.training import TrainConfig, train_classifier

    t0 = time.perf_counter()
    workdir = Path(workdir)
    _claim_workdir(workdir)
    labelled, new, truth = write_digits(workdir / "digits", seed=seed)
    cfg = TrainConfig(
        data_dir=str(labelled),
        arch="lenet5",
        mode="scratch",
        epochs=epochs,
        batch_size=32,
        lr=2e-3,
        optimizer="adamw",
        augment="none",
        seed=seed,
        out=str(workdir / "run"),
        val_fraction=0.1,
        patience=0,
    )
    result = train_classifier(cfg, progress=progress)
    sorted_dir = workdir / "sorted"
    summary = sort_folder(
        new,
        result.run_dir,
        sorted_dir,
        min_confidence=min_confidence,
        backend="eager",
        on_progress=on_sort_progress,
    )
    right = sum(1 for it in summary.items if it.label == truth[it.source.name])
    sure = [it for it in summary.items if it.status == "sorted"]
    sure_right = sum(1 for it in sure if it.label == truth[it.source.name])
    return DemoResult(
        workdir=workdir,
        run_dir=result.run_dir,
        sorted_dir=sorted_dir,
        accuracy=right / max(len(summary.items), 1),
        n_heldout=len(summary.items),
        n_unsure=sum(1 for it in summary.items if it.status == "unsure"),
        sure_accuracy=sure_right / max(len(sure), 1),
        seconds=time.perf_counter() - t0,
    )
