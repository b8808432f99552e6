"""Metric learning on unseen identities: ORL faces as a small re-identification benchmark.

``../shared/data/orl_faces`` (40 people x 10 photos) is converted with ``to_market``: 20
identities to train on, the other 20 (never seen in training) split into query and gallery
with cameras assigned deterministically. Then, in the same run:

* the frozen ImageNet EfficientNet-Lite0 embedding (no training) — the baseline;
* EfficientNet-Lite0 fine-tuned with each loss (softmax, triplet batch-hard, ArcFace,
  triplet + center), same data, epochs and seed; the whole backbone trains
  (``trainable="all"``: this compares losses; ``--trainable auto`` would train the neck only
  for 16 people, see ``benchmarks/embedding_transfer.py``);

each evaluated with the Market-1501 protocol (rank-1, mAP). Target: the best loss lifts mAP
by at least 8 points over the frozen baseline, within 10 minutes of CPU training per loss.
Also reports the training throughput (images/s, median of timed steps) at fp32 and bf16.

    python benchmarks/reid_orl.py [--data DIR] [--epochs 15] [--losses softmax,arcface]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import torch
from _common import data_dir, machine

from vitrina.data.identities import to_market
from vitrina.embed.reid import evaluate_reid
from vitrina.training.embedding import EmbeddingConfig, train_embedding

LOSSES = ("softmax", "triplet-batch-hard", "arcface", "triplet+0.5*center")


def step_throughput(cfg: EmbeddingConfig, precision: str, steps: int = 6) -> float:
    """Training images/s of the loss at a precision: median over timed P×K steps."""
    from vitrina.data.identities import scan_identities
    from vitrina.data.samplers import PKSampler
    from vitrina.data.transforms import reid_train_transform
    from vitrina.losses import build_criterion
    from vitrina.models import create
    from vitrina.models.embedding import EmbeddingModel
    from vitrina.training.embedding import _preprocess

    ids = scan_identities(cfg.data_dir)
    base = create(cfg.arch, weights=cfg.weights)
    pre = _preprocess(base, cfg.input_size)
    model = EmbeddingModel(base, dim=cfg.dim, num_classes=len(ids.names)).train()
    crit = build_criterion(
        cfg.loss,
        miner=cfg.miner,
        distance=cfg.distance,
        num_classes=len(ids.names),
        embedding_dim=model.num_features,
    )
    opt = torch.optim.AdamW([*model.parameters(), *crit.parameters()], lr=1e-4)
    tf = reid_train_transform(pre, "reid")
    from vitrina.io import read_image

    labels = [im.label for im in ids.train]
    batch = next(iter(PKSampler(labels, p=cfg.p or 8, k=cfg.k, seed=0)))
    x = torch.stack([tf(read_image(ids.train[i].path)) for i in batch])
    y = torch.tensor([labels[i] for i in batch])
    times = []
    for i in range(steps + 2):
        t0 = time.perf_counter()
        ctx = (
            torch.autocast("cpu", dtype=torch.bfloat16)
            if precision == "bf16"
            else torch.autocast("cpu", enabled=False)
        )
        with ctx:
            raw, neck = model.features(x)
            loss, _ = crit(raw.float(), neck.float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return len(y) / statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", help="folder-per-identity faces (default ../shared/data/orl_faces)")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--input-size", default="112x96", help="HEIGHTxWIDTH of the face crops")
    ap.add_argument("--losses", default=",".join(LOSSES))
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--throughput-only", action="store_true")
    ap.add_argument("--keep", help="keep the converted data and runs in this folder")
    args = ap.parse_args()
    src = data_dir("orl_faces", args.data)
    h, w = (int(v) for v in args.input_size.split("x"))
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="reid_orl_"))
    market = work / "market"
    if not (market / "query").is_dir():
        rep = to_market(src, market, train_ids=20, seed=0)
        print(f"to-market: {rep.to_dict()}")
    print(f"machine: {machine()}")
    print(f"data: {src} -> {market}; training input {h}x{w}; {args.epochs} epochs per loss\n")

    if not args.throughput_only:
        compare(args, market, h, w, work)
    if not args.skip_throughput:
        throughput(args, market, h, w)


def compare(args: argparse.Namespace, market: Path, h: int, w: int, work: Path) -> None:
    rows = []
    t0 = time.perf_counter()
    base = evaluate_reid(market, "efficientnet_lite0", backend="eager").report
    rows.append(("frozen ImageNet Lite0 (224x224)", None, base.rank1, base.mAP))
    print(
        f"frozen baseline: rank-1 {base.rank1:.3f} mAP {base.mAP:.3f} ({time.perf_counter() - t0:.0f} s)"
    )
    for loss in args.losses.split(","):
        cfg = EmbeddingConfig(
            data_dir=str(market),
            loss=loss,
            epochs=args.epochs,
            input_size=(h, w),
            p=8,
            k=4,
            trainable="all",
            out=str(work / f"run-{loss.replace('*', 'x').replace('+', '_')}"),
            seed=0,
        )
        t = time.perf_counter()
        res = train_embedding(cfg, progress=False)
        train_s = time.perf_counter() - t
        ev = evaluate_reid(market, str(res.run_dir), backend="eager").report
        rows.append((f"{loss} (best epoch {res.best_epoch})", train_s, ev.rank1, ev.mAP))
        print(
            f"{loss}: trained {train_s:.0f} s, val mAP {res.metrics.get('val_mAP', float('nan')):.3f}; "
            f"test rank-1 {ev.rank1:.3f} mAP {ev.mAP:.3f}",
            flush=True,
        )

    print("\n| embedding | CPU training | rank-1 | mAP | mAP vs frozen |")
    print("|---|---|---|---|---|")
    for name, secs, r1, m in rows:
        tr = "—" if secs is None else f"{secs / 60:.1f} min"
        print(f"| {name} | {tr} | {r1:.3f} | {m:.3f} | {(m - base.mAP) * 100:+.1f} pts |")
    best = max(rows[1:], key=lambda r: r[3], default=None)
    if best is not None:
        lift = (best[3] - base.mAP) * 100
        ok = lift >= 8 and (best[1] or 0) <= 600
        print(
            f"\nbest: {best[0]}: +{lift:.1f} mAP points in {best[1] / 60:.1f} min "
            f"(target >= +8 within 10 min): {'met' if ok else 'MISSED'}"
        )


def throughput(args: argparse.Namespace, market: Path, h: int, w: int) -> None:
    print("\ntraining throughput (images/s, median of timed P×K steps, batch 32):")
    print("| loss | fp32 | bf16 | bf16 / fp32 |")
    print("|---|---|---|---|")
    for loss in args.losses.split(","):
        cfg = EmbeddingConfig(data_dir=str(market), loss=loss, input_size=(h, w))
        f32 = step_throughput(cfg, "fp32")
        b16 = step_throughput(cfg, "bf16")
        print(f"| {loss} | {f32:.1f} | {b16:.1f} | {b16 / f32:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
