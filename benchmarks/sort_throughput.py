"""Images per second of `vitrina sort` end to end against a naive loop, in the same run.

Naive loop: for each file, PIL open, the torchvision eval transform, the eager fp32 model on
one image, shutil.copy into the class folder. vitrina: `sort_folder` (worker decoding,
batching, the chosen backend, safe copy with verification and a manifest).

    python benchmarks/sort_throughput.py [--data ../shared/data/cats_dogs] [--rounds 3]

Target (issue 2): vitrina at least 2x the naive loop. Prints medians over rounds and the ratio.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import torch
from _common import checkout_src, data_dir, env_with_src, link_subset, machine
from PIL import Image

import vitrina
from vitrina.classify.sort import sort_folder
from vitrina.data import scan_folder
from vitrina.data.transforms import plain_eval_transform


def naive_sort(paths: list[Path], model, classes: list[str], out: Path) -> None:
    tf = plain_eval_transform(model.preprocess)
    model.eval()
    with torch.inference_mode():
        for p in paths:
            img = Image.open(p).convert("RGB")
            x = tf(img).unsqueeze(0)
            label = classes[int(model(x).argmax(1))]
            (out / label).mkdir(parents=True, exist_ok=True)
            shutil.copy(p, out / label / p.name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="class-folder tree of photos (default ../shared/data/cats_dogs)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--limit", type=int, default=0, help="photos per round (0: all)")
    ap.add_argument("--backends", default="auto", help="vitrina backends to time")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument(
        "--no-naive",
        action="store_true",
        help="skip the naive loop (e.g. only compare --before with now)",
    )
    ap.add_argument(
        "--before",
        metavar="REV",
        help="also time `vitrina sort` from the command line at this git revision and now",
    )
    args = ap.parse_args()
    root = data_dir("cats_dogs", args.data)
    scan = scan_folder(root)
    paths = [s.path for s in scan.samples]
    if args.limit:
        step = max(1, len(paths) // args.limit)
        paths = paths[::step][: args.limit]
    print(f"machine: {machine()}")
    print(f"photos: {len(paths)} from {root}")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # A cats/dogs model: EfficientNet-Lite0 ImageNet features + a head probed on 10 per class.
        few = [
            s.path
            for c in range(len(scan.classes))
            for s in [x for x in scan.samples if x.label == c][:10]
        ]
        labelled = link_subset(few, tmp / "labelled")
        run = vitrina.train(
            str(labelled), arch="efficientnet_lite0", mode="probe", out=str(tmp / "run"), epochs=20
        ).run_dir
        clf = vitrina.load(run)
        photos = tmp / "photos"
        photos.mkdir()
        for p in paths:  # flat folder of links, like an unsorted download folder
            (photos / f"{p.parent.name}-{p.name}").symlink_to(p.resolve())
        flat = sorted(photos.iterdir())

        # warm-up both paths (page cache, thread pools, weight packing)
        if not args.no_naive:
            naive_sort(flat[:16], clf.model, clf.classes, tmp / "warm-naive")
        sort_folder(photos, clf, tmp / "warm-v", backend="eager")

        times: dict[str, list[float]] = {"naive": []}
        for b in args.backends.split(","):
            times[f"vitrina[{b}]"] = []
        cli: dict[str, Path | None] = {}
        if args.before:
            (tmp / "before").mkdir()
            cli = {f"CLI {args.before}": checkout_src(args.before, tmp / "before"), "CLI now": None}
            for k in cli:
                times[k] = []
        for r in range(args.rounds):
            if not args.no_naive:
                t = time.perf_counter()
                naive_sort(flat, clf.model, clf.classes, tmp / f"naive-{r}")
                times["naive"].append(len(flat) / (time.perf_counter() - t))
            for b in args.backends.split(","):
                t = time.perf_counter()
                s = sort_folder(
                    photos, clf, tmp / f"v-{b}-{r}", backend=b, batch_size=args.batch_size
                )
                times[f"vitrina[{b}]"].append(len(flat) / (time.perf_counter() - t))
                assert len(s.items) == len(flat)
            for k, src in cli.items():  # process start included
                out = tmp / f"cli-{len(times[k])}-{k.replace(' ', '_')}"
                cmd = [sys.executable, "-m", "vitrina", "sort", str(photos), "--model", str(run)]
                t = time.perf_counter()
                subprocess.run(
                    [*cmd, "--out", str(out)],
                    env=env_with_src(src),
                    check=True,
                    capture_output=True,
                )
                times[k].append(len(flat) / (time.perf_counter() - t))
            print(
                f"round {r + 1}: "
                + ", ".join(f"{k} {v[-1]:.1f} img/s" for k, v in times.items() if v)
            )

    if args.no_naive:
        times.pop("naive")
        for k, v in times.items():
            print(f"  {k:<16} {statistics.median(v):7.1f} img/s")
        if args.before:
            now, before = (statistics.median(times[k]) for k in ("CLI now", f"CLI {args.before}"))
            print(f"vitrina sort from the command line: now {now / before:.2f}x {args.before}")
        return
    base = statistics.median(times["naive"])
    print("\nmedian images/s (end to end: files on disk -> sorted folders)")
    for k, v in times.items():
        med = statistics.median(v)
        print(f"  {k:<16} {med:7.1f} img/s   {med / base:4.2f}x naive")
    if args.before:
        now, before = (statistics.median(times[k]) for k in ("CLI now", f"CLI {args.before}"))
        print(f"vitrina sort from the command line: now {now / before:.2f}x {args.before}")
    best = max(statistics.median(v) for k, v in times.items() if k.startswith("vitrina"))
    verdict = "met" if best / base >= 2 else "MISSED"
    print(f"target >= 2.0x naive: {verdict} ({best / base:.2f}x)")


if __name__ == "__main__":
    main()
