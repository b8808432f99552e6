"""Explanation methods on EfficientNet-Lite0 (224x224): seconds per image, and do the maps
point at what matters?

For each method and a seeded sample of ``../shared/data/cats_dogs`` photos (ImageNet
EfficientNet-Lite0; the explained class is its own top-1):

* seconds per image (the method only; the shared prediction pass excluded);
* the **deletion score**: the model's probability drop for that class when the 20% of the
  input with the highest map values is replaced by grey, against the drop for a random map
  (a uniformly random 20% of pixels in 16x16 blocks, same seed for every method). A map that
  points at the evidence removes more probability than a random one: the ratio
  method drop / random drop is printed (> 1 is better than chance).

    python benchmarks/explain.py [--data DIR] [--images 40] [--methods gradcam,occlusion]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import numpy as np
import torch
from _common import data_dir, machine

from vitrina.data import eval_transform, scan_folder
from vitrina.explain import METHODS, explain_batch
from vitrina.io import read_image
from vitrina.models import create

FRACTION = 0.2


def delete_top(x: torch.Tensor, heat: np.ndarray, grey: torch.Tensor) -> torch.Tensor:
    """x with the top FRACTION of ``heat`` (input-size map) replaced by grey."""
    flat = heat.ravel()
    k = round(FRACTION * flat.size)
    keep = np.ones(flat.size, dtype=bool)
    keep[np.argpartition(-flat, k)[:k]] = False
    mask = torch.from_numpy(keep.reshape(heat.shape)).to(x.dtype)
    return x * mask + grey * (1 - mask)


def drop(model, x, heat, grey, t: int, p0: float) -> float:  # type: ignore[no-untyped-def]
    """Probability lost by class ``t`` when the top of ``heat`` is greyed out."""
    with torch.no_grad():
        p = model.classify(delete_top(x, heat, grey)[None]).softmax(1)[0, t]
    return p0 - float(p)


def random_map(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    h, w = shape
    blocks = rng.random(((h + 15) // 16, (w + 15) // 16))
    return np.kron(blocks, np.ones((16, 16)))[:h, :w]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", help="class folders (default ../shared/data/cats_dogs)")
    ap.add_argument("--images", type=int, default=40)
    ap.add_argument("--methods", default=",".join(METHODS.names()))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    root = data_dir("cats_dogs", args.data)
    samples = scan_folder(root).samples
    rng = random.Random(args.seed)
    paths = [s.path for s in rng.sample(samples, min(args.images, len(samples)))]
    methods = args.methods.split(",")
    model = create("efficientnet_lite0", weights="imagenet").eval()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    pre = model.preprocess
    tf = eval_transform(pre)
    grey = (torch.full((3, 1, 1), 0.5) - torch.tensor(pre.mean).view(3, 1, 1)) / torch.tensor(
        pre.std
    ).view(3, 1, 1)
    print(f"machine: {machine()}")
    print(f"EfficientNet-Lite0 (ImageNet) at {pre.input_size}; {len(paths)} photos of {root}\n")
    secs: dict[str, list[float]] = {m: [] for m in methods}
    drops: dict[str, list[float]] = {m: [] for m in methods}
    rand_drops: list[float] = []
    nrng = np.random.default_rng(args.seed)
    t_all = time.perf_counter()
    for i, path in enumerate(paths, 1):
        img = read_image(path)
        x = tf(img)
        with torch.no_grad():
            probs = model.classify(x[None]).softmax(1)[0]
        t = int(probs.argmax())
        p0 = float(probs[t])
        (res,) = explain_batch(model, [img], methods, target=t)

        rand_drops.append(drop(model, x, random_map(tuple(x.shape[1:]), nrng), grey, t, p0))
        for m, ex in res.items():
            secs[m].append(ex.seconds)
            drops[m].append(drop(model, x, ex.heatmap_input, grey, t, p0))
        print(f"\r{i}/{len(paths)} photos, {time.perf_counter() - t_all:.0f} s", end="", flush=True)
    print("\n")
    base = statistics.mean(rand_drops)
    print(f"random map: mean probability drop {base:.3f} when its top 20% is greyed out")
    print("| method | s / image (median) | prob. drop, top 20% removed | vs random map |")
    print("|---|---|---|---|")
    for m in methods:
        d = statistics.mean(drops[m])
        print(
            f"| {m} | {statistics.median(secs[m]):.2f} | {d:.3f} | "
            f"{d / base if base > 0 else float('nan'):.2f}x |"
        )


if __name__ == "__main__":
    main()
