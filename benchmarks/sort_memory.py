"""Peak memory of `vitrina sort --dry-run` over many tiny photos, and how it grows with them.

Issue 13: a dry run over 50,000 tiny files used 1.27 GB. Most of that is the process before
the first photo (torch, the model, the backend trial); what a sort may add is memory that grows
with the number of photos. This script measures, each in a fresh process with the same eager
backend: the peak resident memory of a dry run over ``--small`` photos and over ``--n`` photos,
once keeping every item (``keep_items=True``, how the sort kept them before) and once streaming
them (``keep_items=False``, what `vitrina sort` does now). It prints the growth per 10,000
photos of each and their ratio.

    python benchmarks/sort_memory.py [--n 50000] [--small 1000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import numpy as np
from _common import machine
from PIL import Image

CHILD = r"""
import json, sys, threading, time
from vitrina.classify.sort import sort_folder

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) * 1024
    return 0

peak = [rss()]
done = [False]
def sample():
    while not done[0]:
        peak[0] = max(peak[0], rss())
        time.sleep(0.05)
threading.Thread(target=sample, daemon=True).start()
photos, run, keep = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
seen = [0]
def count(item):
    seen[0] += 1
s = sort_folder(photos, run, photos + "-out", dry_run=True, backend="eager", num_workers=0,
                keep_items=keep, on_item=count)
done[0] = True
peak[0] = max(peak[0], rss())
print(json.dumps({"peak": peak[0], "photos": seen[0]}))
"""


def make_photos(folder: Path, n: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(
            folder / f"p{i:06d}.png"
        )


def make_run(root: Path) -> Path:
    from vitrina.training import TrainConfig, train_classifier

    data = root / "data"
    rng = np.random.default_rng(1)
    for c, rgb in {"red": (220, 30, 30), "green": (30, 200, 40)}.items():
        (data / c).mkdir(parents=True)
        for i in range(8):
            a = np.clip(np.array(rgb) + rng.normal(0, 25, (32, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(a).save(data / c / f"{i}.png")
    cfg = TrainConfig(
        data_dir=str(data),
        arch="tutorial_cnn",
        mode="scratch",
        epochs=1,
        batch_size=8,
        augment="none",
        out=str(root / "run"),
        num_workers=0,
        device="cpu",
    )
    return train_classifier(cfg, progress=False).run_dir


def measure(photos: Path, run: Path, keep: bool) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(photos), str(run), "1" if keep else "0"],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=50_000, help="photos in the large folder")
    ap.add_argument("--small", type=int, default=1_000, help="photos in the small folder")
    args = ap.parse_args()
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        run = make_run(root)
        make_photos(root / "small", args.small)
        make_photos(root / "large", args.n)
        growth = {}
        for keep in (True, False):
            small = measure(root / "small", run, keep)
            large = measure(root / "large", run, keep)
            assert large["photos"] == args.n, large
            per_10k = (large["peak"] - small["peak"]) / (args.n - args.small) * 10_000
            growth[keep] = per_10k
            label = "items kept (before)" if keep else "items streamed (now)"
            print(
                f"{label:22s} peak {small['peak'] / 2**20:6.0f} MB at {args.small:,} photos, "
                f"{large['peak'] / 2**20:6.0f} MB at {args.n:,}: "
                f"{per_10k / 2**20:+.1f} MB per 10,000 photos"
            )
        kept, streamed = growth[True], growth[False]
        ratio = kept / streamed if streamed > 0 else float("inf")
        print(
            f"growth with the number of photos: {kept / 2**20:.1f} -> {streamed / 2**20:.1f} MB "
            f"per 10,000 ({ratio:.0f}x less)"
        )


if __name__ == "__main__":
    main()
