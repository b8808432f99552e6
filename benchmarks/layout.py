"""Training in the layout the trial chooses (channels-last where measured faster) against the
default NCHW layout, in one run, for ``train``, ``train-embedding`` and ``detect train``.

Each contender trains the same run from the same seed on the same photos; only the memory
layout differs: ``contiguous`` is forced with ``VITRINA_LAYOUT=contiguous`` (the baseline:
what every run did before the trial), ``auto`` is the default (the trial's choice, recorded
in the run's metrics). Figures: the wall time of training (the trial included), the ratio,
and the quality of the trained weights measured the same way (eager fp32 inference), which
must not move beyond float rounding:

* ``train``: EfficientNet-Lite0 fine-tuned on ``--per-class`` cats/dogs photos per class,
  accuracy on ``--heldout`` other photos per class;
* ``train-embedding``: Lite0 fine-tuned with ArcFace on 20 ORL people (``to_market``), mAP on
  the 20 people it never saw;
* ``detect train``: Faster R-CNN over Lite0 (``--freeze stem``, 224x224) on ``--det-photos``
  grocery photos, mAP@.5 on 100 others.

    python benchmarks/layout.py [--epochs 2] [--per-class 100] [--only train]

Target: ``auto`` trains faster wherever it picks channels-last, and never slower than the
baseline by more than its trial's seconds.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _common import cpu_flags, data_dir, labelled_and_heldout, machine, print_against_baseline

from vitrina.training.layout import ENV

CONTENDERS = ("contiguous", "auto")


def _contend(name: str, train: Callable[[Path], tuple[dict, float]], work: Path) -> list[tuple]:
    rows = []
    for who in CONTENDERS:
        if who == "auto":
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = who
        t = time.perf_counter()
        metrics, quality = train(work / f"{name}-{who}")
        secs = time.perf_counter() - t
        rows.append((name, who, metrics.get("layout", "?"), secs, quality))
        print(f"{name} [{who}]: {secs:.0f} s, quality {quality:.4f}, {rows[-1][2]}", flush=True)
    os.environ.pop(ENV, None)
    return rows


def classify(args: argparse.Namespace, work: Path) -> list[tuple]:
    import vitrina
    from vitrina.classify.classifier import load

    labelled, held = labelled_and_heldout(args.data, args.per_class, args.heldout, work)

    def train(out: Path) -> tuple[dict, float]:
        res = vitrina.train(
            str(labelled), arch="efficientnet_lite0", mode="finetune", epochs=args.epochs,
            seed=0, out=str(out),
        )  # fmt: skip
        return res.metrics, load(res.run_dir).evaluate(held, backend="eager").accuracy

    return _contend("train", train, work)


def embed(args: argparse.Namespace, work: Path) -> list[tuple]:
    from vitrina.data.identities import to_market
    from vitrina.embed.reid import evaluate_reid
    from vitrina.training.embedding import EmbeddingConfig, train_embedding

    market = work / "market"
    to_market(data_dir("orl_faces", None), market, train_ids=20, seed=0)

    def train(out: Path) -> tuple[dict, float]:
        cfg = EmbeddingConfig(
            data_dir=str(market), loss="arcface", epochs=args.epochs + 1, input_size=(112, 96),
            trainable="all", out=str(out), seed=0,
        )  # fmt: skip
        res = train_embedding(cfg, progress=False)
        return res.metrics, evaluate_reid(market, str(res.run_dir), backend="eager").report.mAP

    return _contend("train-embedding", train, work)


def detect(args: argparse.Namespace, work: Path) -> list[tuple]:
    from vitrina.data.annotations import AnnotatedSet, read_annotated, write_annotated
    from vitrina.detect import DetectTrainConfig, evaluate_detector, load_detector, train_detector
    from vitrina.detect.data import split_photos

    s = read_annotated(data_dir("groceries_det", None))
    rest, test = split_photos(s.photos, 100 / len(s.photos), seed=0)
    train_photos = split_photos(rest, 1 - args.det_photos / len(rest), seed=0)[0]
    for name, photos in (("train", train_photos), ("test", test)):
        part = AnnotatedSet(s.root, s.format, s.classes, photos)
        write_annotated(part, work / "det" / name, "voc", photos="link")

    def train(out: Path) -> tuple[dict, float]:
        cfg = DetectTrainConfig(
            data_dir=str(work / "det" / "train"), arch="fasterrcnn", input_size=(224, 224),
            epochs=args.epochs, freeze="stem", augment="light", val_fraction=0.0,
            out=str(out), device="cpu", seed=0,
        )  # fmt: skip
        res = train_detector(cfg, progress=False)
        det = load_detector(res.run_dir, backend="eager")
        return res.metrics, evaluate_detector(det, work / "det" / "test").metrics.mAP50

    return _contend("detect train", train, work)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", help="class-folder tree (default ../shared/data/cats_dogs)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--per-class", type=int, default=100)
    ap.add_argument("--heldout", type=int, default=200, help="held-out photos per class")
    ap.add_argument("--det-photos", type=int, default=160, help="grocery photos to train on")
    ap.add_argument("--only", choices=["train", "train-embedding", "detect"])
    args = ap.parse_args()
    print(f"machine: {machine()}; CPU flags: {cpu_flags()}")
    with tempfile.TemporaryDirectory(prefix="vitrina-layout-") as tmp:
        rows = []
        for name, fn in (("train", classify), ("train-embedding", embed), ("detect", detect)):
            if args.only in (None, name):
                rows += fn(args, Path(tmp))
    print_against_baseline(rows, "layout", "contiguous", digits=2)


if __name__ == "__main__":
    main()
