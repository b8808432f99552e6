"""Linear-probe accuracy of EfficientNet-Lite0 with few labelled photos per class.

For n in (10, 50, 100) labelled photos per class of ../shared/data/cats_dogs: `vitrina train
--mode probe` on those n (with its default 20% validation split), then accuracy on all the
other photos. Repeated over seeds (different labelled photos); prints mean and min.

    python benchmarks/transfer_accuracy.py [--data DIR] [--seeds 3]

Targets (issue 2): >= 95% with 10 per class, >= 98.5% with 100 per class.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _common import data_dir, link_subset, machine

import vitrina
from vitrina.data import scan_folder

TARGETS = {10: 0.95, 100: 0.985}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="class-folder tree (default ../shared/data/cats_dogs)")
    ap.add_argument("--sizes", default="10,50,100")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--arch", default="efficientnet_lite0")
    args = ap.parse_args()
    root = data_dir("cats_dogs", args.data)
    scan = scan_folder(root)
    print(f"machine: {machine()}")
    print(f"data: {root} {scan.counts()}")
    results: dict[int, list[float]] = {}
    for n in [int(s) for s in args.sizes.split(",")]:
        for seed in range(args.seeds):
            rng = random.Random(seed)
            labelled, rest = [], []
            for c in range(len(scan.classes)):
                files = sorted(s.path for s in scan.samples if s.label == c)
                rng.shuffle(files)
                labelled += files[:n]
                rest += files[n:]
            with tempfile.TemporaryDirectory() as tmp:
                tmp = Path(tmp)
                train_dir = link_subset(labelled, tmp / "train")
                test_dir = link_subset(rest, tmp / "test")
                res = vitrina.train(
                    str(train_dir), arch=args.arch, mode="probe", seed=seed, out=str(tmp / "run")
                )
                rep = vitrina.load(res.run_dir).evaluate(test_dir, top_k=1)
            results.setdefault(n, []).append(rep.accuracy)
            print(f"n={n:>3}/class seed={seed}: accuracy {rep.accuracy:.4f} on {rep.n} photos")
    print("\nprobe accuracy on the photos not used for training")
    for n, accs in results.items():
        line = f"  {n:>3} per class: mean {statistics.mean(accs):.4f}  min {min(accs):.4f}"
        if n in TARGETS:
            ok = statistics.mean(accs) >= TARGETS[n]
            line += f"   target {TARGETS[n]:.3f}: {'met' if ok else 'MISSED'}"
        print(line)


if __name__ == "__main__":
    main()
