"""``--precision auto`` against fp32 for ``train`` and ``train-embedding``, in one run.

Each contender trains the same run from the same seed on the same photos; only the
precision differs. Figures: what ``auto`` chose (and its measured step rates, from the run's
record), the wall time of training, and the quality of the trained weights, always measured
the same way (eager fp32 inference) so that only the training arithmetic differs:

* ``train``: EfficientNet-Lite0 fine-tuned (every weight trains) on ``--per-class`` cats/dogs
  photos per class, accuracy on ``--heldout`` other photos per class (``--arch resnet18
  --mode scratch``: a dense convolutional network, where matrix units pay most);
* ``train-embedding``: Lite0 fine-tuned with ArcFace on 20 ORL people (``to_market``), mAP
  on the 20 people it never saw (Market-1501 protocol).

    python benchmarks/precision.py [--epochs 3] [--per-class 100] [--heldout 200]
    python benchmarks/precision.py --only train --arch resnet18 --mode scratch

Target (issue 17, deliverable 4): ``auto`` picks bf16 on AMX CPUs and bf16 GPUs and fp32
elsewhere, trains faster where it picks bf16, and keeps the quality of fp32 (here: within
1 point of accuracy / mAP).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _common import cpu_flags, data_dir, labelled_and_heldout, machine, print_against_baseline

import vitrina


def _choice(run: Path) -> str:
    """What the run's ``precision.json`` records: ``auto`` resolved, with the step rates it
    measured (or why it measured nothing)."""
    f = run / "precision.json"
    if not f.is_file():
        return "as asked"
    rec = json.loads(f.read_text())
    rates = {k: v for k, v in rec.items() if "per_s" in k and v}
    extra = ", ".join(f"{k} {v:.2f}" for k, v in rates.items())
    return f"{rec.get('chosen', rec)}" + (f" ({extra})" if extra else "")


def classify(args: argparse.Namespace, work: Path) -> list[tuple]:
    from vitrina.classify.classifier import load

    labelled, held = labelled_and_heldout(args.data, args.per_class, args.heldout, work)
    rows = []
    for precision in args.precisions.split(","):
        t = time.perf_counter()
        res = vitrina.train(
            str(labelled),
            arch=args.arch,
            mode=args.mode,
            epochs=args.epochs,
            precision=precision,
            seed=0,
            out=str(work / f"train-{precision}"),
        )
        secs = time.perf_counter() - t
        acc = load(res.run_dir).evaluate(held, backend="eager").accuracy
        rows.append(("train", precision, _choice(res.run_dir), secs, acc))
        print(f"train {precision}: {secs:.0f} s, held-out accuracy {acc:.4f}", flush=True)
    return rows


def embed(args: argparse.Namespace, work: Path) -> list[tuple]:
    from vitrina.data.identities import to_market
    from vitrina.embed.reid import evaluate_reid
    from vitrina.training.embedding import EmbeddingConfig, train_embedding

    market = work / "market"
    to_market(data_dir("orl_faces", None), market, train_ids=20, seed=0)
    rows = []
    for precision in args.precisions.split(","):
        cfg = EmbeddingConfig(
            data_dir=str(market),
            loss="arcface",
            epochs=args.epochs,
            input_size=(112, 96),
            trainable="all",
            precision=precision,
            out=str(work / f"embed-{precision}"),
            seed=0,
        )
        t = time.perf_counter()
        res = train_embedding(cfg, progress=False)
        secs = time.perf_counter() - t
        m = evaluate_reid(market, str(res.run_dir), backend="eager").report.mAP
        rows.append(("train-embedding", precision, _choice(res.run_dir), secs, m))
        print(f"train-embedding {precision}: {secs:.0f} s, unseen-people mAP {m:.4f}", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", help="class-folder tree (default ../shared/data/cats_dogs)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument(
        "--arch",
        default="efficientnet_lite0",
        help="network for `train` (train-embedding: always Lite0, the offline weights)",
    )
    ap.add_argument(
        "--mode",
        default="finetune",
        choices=["finetune", "scratch"],
        help="`train` mode: scratch for networks with no offline weights (e.g. resnet18)",
    )
    ap.add_argument("--per-class", type=int, default=100)
    ap.add_argument("--heldout", type=int, default=200, help="held-out photos per class")
    ap.add_argument("--only", choices=["train", "train-embedding"])
    ap.add_argument(
        "--precisions",
        default="fp32,auto",
        help="contenders, fp32 first (add bf16 to see its quality where auto declines it)",
    )
    args = ap.parse_args()
    if not args.precisions.startswith("fp32"):
        ap.error("--precisions must start with fp32 (the reference)")
    print(f"machine: {machine()}; CPU flags: {cpu_flags()}")
    with tempfile.TemporaryDirectory(prefix="vitrina-precision-") as tmp:
        rows = []
        if args.only != "train-embedding":
            rows += classify(args, Path(tmp))
        if args.only != "train":
            rows += embed(args, Path(tmp))
    print_against_baseline(rows, "--precision", "fp32")


if __name__ == "__main__":
    main()
