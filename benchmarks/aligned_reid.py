"""AlignedReID on the ORL re-identification protocol: global, local and combined distances.

The protocol of ``benchmarks/reid_orl.py``: ``../shared/data/orl_faces`` (40 people x 10
photos) through ``to_market`` (20 people to train on, the other 20 never seen, query and
gallery on pseudo-cameras; every image of the query camera a query). A
``train-embedding --local-stripes S`` run per recipe (EfficientNet-Lite0, the default loss
softmax + triplet batch-hard, plus the local triplet loss on the triplets the global distance
mines; ``--trainable auto``, the default, trains the backbone's last stage and the local
branch for these 16 people (the neck only before 2026-12: ``--trainable neck``), ``all`` the
whole backbone; the epoch is picked by the combined
mAP on the 4 held-out training people), then ``evaluate-reid`` on

* **aligned**: the test photos as they are (ORL's faces are centred crops);
* **misaligned**: every test photo (query and gallery) shifted and cropped: a crop box moved
  by up to 20% of the height and 10% of the width (outside the photo is black) and 75-100% of
  its height, resized back (seeded per photo) — a detector's loose, shifted boxes.

Each is scored with the global distance alone, the local (stripe-aligned) distance alone and
global + local; the time each costs per query is measured in the same run. Target: combined
beats global alone in mAP. ``--mutual`` also trains a mutual-learning run (2x the time).

    python benchmarks/aligned_reid.py [--epochs 12] [--input-size 160x128] [--stripes 8]
        [--trainable auto,all] [--mutual]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _common import data_dir, machine
from PIL import Image

from vitrina.data.identities import MARKET_SPLITS, to_market
from vitrina.embed.reid import evaluate_reid
from vitrina.training.embedding import EmbeddingConfig, train_embedding


def misalign(src: Path, dst: Path, seed: int) -> Path:
    """A copy of the Market folder ``src`` whose query and gallery photos are shifted and
    cropped (the training photos are linked as they are)."""
    for split, folder in MARKET_SPLITS.items():
        (dst / folder).mkdir(parents=True)
        for f in sorted((src / folder).iterdir()):
            if split == "train":
                (dst / folder / f.name).symlink_to(f.resolve())
                continue
            rng = random.Random(zlib.crc32(f"{seed}/{f.name}".encode()))
            img = Image.open(f)
            w, h = img.size
            ch = round(h * rng.uniform(0.75, 1.0))
            top = round(rng.uniform(-0.2, 0.2) * h + (h - ch) * rng.random())
            left = round(rng.uniform(-0.1, 0.1) * w)
            out = img.crop((left, top, left + w, top + ch)).resize(
                (w, h), Image.Resampling.BILINEAR
            )
            out.save(dst / folder / f"{f.stem}.png")
    return dst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", help="folder-per-identity faces (default ../shared/data/orl_faces)")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--input-size", default="160x128", help="HEIGHTxWIDTH (5 feature-map rows)")
    ap.add_argument("--stripes", type=int, default=8)
    ap.add_argument("--local-weight", type=float, default=1.0)
    ap.add_argument("--mutual", action="store_true", help="also train with mutual learning")
    ap.add_argument(
        "--trainable",
        default="auto,all",
        help="recipes to train (auto: the default, the last stage here)",
    )
    ap.add_argument("--keep", help="keep the converted data and runs in this folder")
    args = ap.parse_args()
    src = data_dir("orl_faces", args.data)
    h, w = (int(v) for v in args.input_size.split("x"))
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="aligned_reid_"))
    work.mkdir(parents=True, exist_ok=True)
    market = work / "market"
    if not (market / "query").is_dir():
        rep = to_market(src, market, train_ids=20, seed=0)
        print(f"to-market: {rep.query_images} queries, {rep.gallery_images} gallery images")
    shifted = work / "market-misaligned"
    if not (shifted / "query").is_dir():
        misalign(market, shifted, seed=0)
    print(f"machine: {machine()}")
    print(
        f"data: {src}; input {h}x{w}; {args.stripes} stripes; {args.epochs} epochs; "
        f"combined = global + {args.local_weight:g} x local\n"
    )
    runs = [(f"--trainable {t}", t, False) for t in args.trainable.split(",")]
    if args.mutual:
        runs += [(f"--trainable {t} --mutual", t, True) for t in args.trainable.split(",")]
    rows = []
    for name, trainable, mutual in runs:
        cfg = EmbeddingConfig(
            data_dir=str(market),
            input_size=(h, w),
            epochs=args.epochs,
            local_stripes=args.stripes,
            mutual=mutual,
            trainable=trainable,
            out=str(
                work
                / f"run-{trainable}{'-mutual' if mutual else ''}-s{args.stripes}-e{args.epochs}"
            ),
        )
        t = time.perf_counter()
        if (Path(cfg.out) / "vitrina.json").is_file():
            from vitrina.training.embedding import _finished_result

            res = _finished_result(Path(cfg.out))
        else:
            res = train_embedding(cfg, progress=False)
        secs = time.perf_counter() - t
        chosen = res.trainable.get("choice", trainable)
        name = f"{name} ({chosen})" if trainable == "auto" else name
        print(f"{name}: trained {secs / 60:.1f} min (best epoch {res.best_epoch})", flush=True)
        for where, folder in (("ORL protocol", market), ("shifted + cropped", shifted)):
            ev = evaluate_reid(
                folder, str(res.run_dir), backend="eager", local_weight=args.local_weight
            )
            n = ev.report.n_queries
            per_img = ev.report.info["embedding_seconds"] / (n + ev.report.gallery_size) * 1000
            for part, r in ev.parts.items():
                rows.append((name, where, part, r.mAP, r.rank1, ev.ms_per_query[part], per_img, n))
            print(
                f"  {where}: " + ", ".join(f"{p} mAP {r.mAP:.3f}" for p, r in ev.parts.items()),
                flush=True,
            )
    print(
        "\n| run | test photos | distance | mAP | rank-1 | ms / query (distance + ranking) | embedding ms / image |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, where, part, m, r1, ms, per_img, n in rows:
        print(
            f"| {name} | {where} ({n} queries) | {part} | {m:.3f} | {r1:.3f} | {ms:.2f} | {per_img:.1f} |"
        )
    verdicts = []
    for name in dict.fromkeys(r[0] for r in rows):
        for where in ("ORL protocol", "shifted + cropped"):
            got = {p: m for n_, w_, p, m, *_ in rows if n_ == name and w_ == where}
            diff = (got["combined"] - got["global"]) * 100
            verdicts.append(diff > 0)
            print(f"{name}, {where}: combined - global = {diff:+.1f} mAP points")
    print(f"\ncombined beats global alone in mAP: {'met' if all(verdicts) else 'MISSED'}")


if __name__ == "__main__":
    main()
