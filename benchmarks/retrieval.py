"""Retrieval quality of EfficientNet-Lite0 embeddings: last layer vs an intermediate layer vs both.

Each photo of ../shared/data/cats_dogs (labels = folders; up to --limit per class, a seeded
sample) queries all the others by cosine similarity; mAP, P@10 and CMC-1 for:

* ``embed``: the model's own embedding (global average of the last feature map, 1280-d);
* ``blocks.5``: the output of stage 5 (192 x 7 x 7), pooled (--pool, default avg);
* ``both``: the two, each L2-normalized, concatenated and normalized again.

The model runs once per image: the raw pooled vectors of both layers are taken in one pass
(``EmbeddingSpec(layers=(LAYER, "global_pool"), normalize=False)``) and the three variants are
normalized exactly as ``Embedder`` does; a check on the first images confirms they equal what
``Embedder`` returns for each spec.

    python benchmarks/retrieval.py [--data DIR] [--limit 200] [--layer blocks.5] [--pool avg]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import numpy as np
from _common import data_dir, machine

from vitrina.data import scan_folder
from vitrina.embed import Embedder, EmbeddingSpec
from vitrina.evaluate.retrieval import retrieval_report


def l2(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="class-folder tree (default ../shared/data/cats_dogs)")
    ap.add_argument("--limit", type=int, default=200, help="photos per class (0: all)")
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--layer", default="blocks.5", help="the intermediate layer")
    ap.add_argument("--pool", default="avg", choices=("avg", "max", "gem"))
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    root = data_dir("cats_dogs", args.data)
    scan = scan_folder(root)
    rng = random.Random(args.seed)
    samples = []
    for label in range(len(scan.classes)):
        mine = [s for s in scan.samples if s.label == label]
        if args.limit and len(mine) > args.limit:
            mine = sorted(rng.sample(mine, args.limit), key=lambda s: s.path)
        samples += mine
    print(f"machine: {machine()}")
    print(f"data: {root} ({len(samples)} photos, {', '.join(scan.classes)})")

    spec = EmbeddingSpec(args.model, (args.layer, "global_pool"), pool=args.pool, normalize=False)
    emb = Embedder(spec, backend=args.backend)
    t0 = time.perf_counter()
    res = emb.embed_paths([s.path for s in samples])
    secs = time.perf_counter() - t0
    print(
        f"embedded {len(res.paths)} photos in {secs:.1f} s ({len(res.paths) / secs:.1f} img/s, "
        f"backend {emb.engine.backend_name}); {len(res.errors)} unreadable"
    )
    label_of = {s.path: s.label for s in samples}
    labels = np.array([label_of[p] for p in res.paths])
    mid_dim = emb.model.layer_dims[0]
    mid, last = res.vectors[:, :mid_dim], res.vectors[:, mid_dim:]
    variants = {
        "embed (last layer)": (EmbeddingSpec(args.model), l2(last)),
        f"{args.layer} ({args.pool})": (
            EmbeddingSpec(args.model, (args.layer,), pool=args.pool),
            l2(mid),
        ),
        f"both: {args.layer} + embed": (
            EmbeddingSpec(args.model, (args.layer, "global_pool"), pool=args.pool),
            l2(np.concatenate([l2(mid), l2(last)], axis=1)),
        ),
    }
    check = res.paths[:8]
    for name, (s, vecs) in variants.items():  # the shortcut equals the real thing
        direct = Embedder(s, backend="eager", num_workers=0).embed_paths(check).vectors
        diff = float(np.abs(direct - vecs[: len(check)]).max())
        if diff > 1e-3:
            sys.exit(f"error: {name}: one-pass vectors differ from Embedder's by {diff:.2e}")

    print()
    print(f"{'embedding':<28} {'dim':>5} {'mAP':>7} {'P@10':>7} {'CMC-1':>7}")
    for name, (_, vecs) in variants.items():
        rep = retrieval_report(vecs, labels, metric="cosine", ks=(1, 10))
        print(
            f"{name:<28} {vecs.shape[1]:>5} {rep.mAP:>7.4f} {rep.precision[10]:>7.4f} "
            f"{rep.cmc[1]:>7.4f}"
        )
    print(f"\n{len(labels)} queries, each against the other {len(labels) - 1} photos (cosine)")


if __name__ == "__main__":
    main()
