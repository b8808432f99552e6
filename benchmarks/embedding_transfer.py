"""Embeddings that generalise to people never seen, photographed differently.

ORL faces (``../shared/data/orl_faces``, 40 people x 10 photos) become aligned chips with
``vitrina faces chips --assume-face``; 30 people (seeded choice) are the training set, the
other 10 are never trained on. Two test sets of those 10 people, each chip querying all the
others (leave-one-out retrieval, cosine):

* **held-out**: their chips as they are (same camera and light as training);
* **cross-domain**: the same chips relit with a gradient from one side (darkening 40-80%) and a
  gamma change, shifted (up to 10% of the side), rescaled (zoom 0.8-1.2, and down to 40-64 px
  and back: another camera's resolution) and JPEG-compressed (quality 15-50), seeded per chip.
  There is no second ORL camera: these variants stand in for "15 other people photographed
  with another camera under other lighting", on held-out people.

In the same run: the frozen ImageNet EfficientNet-Lite0 (the starting weights) and
``train-embedding`` runs with the defaults (``--trainable auto``) and, for comparison, each
explicit ``--trainable`` recipe. Target: the default recipe beats the frozen backbone by
>= 10 mAP points on both sets, and its run reports how it compares with its starting weights.

    python benchmarks/embedding_transfer.py [--epochs N] [--recipes auto,neck,last,all] [--seed 0]
"""

from __future__ import annotations

import argparse
import io
import json
import random
import sys
import tempfile
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import numpy as np
from _common import data_dir, machine
from PIL import Image

from vitrina.data.identities import FACE_CHIPS_MANIFEST
from vitrina.embed.evaluate import evaluate_retrieval
from vitrina.training.embedding import EmbeddingConfig, train_embedding


def split_people(chips: Path, work: Path, n_train: int, seed: int) -> tuple[Path, Path]:
    """Symlink folders: ``train/`` (n_train people) and ``heldout/`` (the rest)."""
    people = sorted(d.name for d in chips.iterdir() if d.is_dir())
    rng = random.Random(seed)
    train = set(rng.sample(people, n_train))
    for name in people:
        dest = work / ("train" if name in train else "heldout") / name
        dest.mkdir(parents=True)
        for f in sorted((chips / name).iterdir()):
            (dest / f.name).symlink_to(f.resolve())
    return work / "train", work / "heldout"


def give_manifest(chips: Path, train: Path) -> None:
    """As `vitrina faces chips` run on the training people alone would leave it: the manifest
    of their chips (what tells `train-embedding --loss auto` these are face chips)."""
    manifest = chips / FACE_CHIPS_MANIFEST
    if manifest.is_file():
        people = {d.name for d in train.iterdir() if d.is_dir()}
        doc = json.loads(manifest.read_text())
        doc["chips"] = {k: v for k, v in doc.get("chips", {}).items() if k.split("/")[0] in people}
        (train / FACE_CHIPS_MANIFEST).write_text(json.dumps(doc, indent=1) + "\n")


def cross_domain(image: Image.Image, rng: np.random.Generator) -> bytes:
    """Relit, shifted, rescaled, JPEG-compressed: another camera, another light (as JPEG)."""
    img = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    h, w = img.shape[:2]
    # relight: a gradient from one side (darkening 40-80% at the far edge), then a gamma
    strength = rng.uniform(0.4, 0.8)
    ramp = np.linspace(1.0, 1.0 - strength, w, dtype=np.float32)
    if rng.random() < 0.5:
        ramp = ramp[::-1]
    img = np.clip(img * ramp[None, :, None], 0, 1) ** rng.uniform(0.7, 1.4)
    out = Image.fromarray((img * 255).round().astype(np.uint8))
    # rescale (zoom about the centre) and shift, filled with the chip's mean grey
    zoom = rng.uniform(0.8, 1.2)
    dx, dy = rng.uniform(-0.1, 0.1, size=2) * (w, h)
    cx, cy = w / 2, h / 2
    coeffs = (1 / zoom, 0, cx - (cx + dx) / zoom, 0, 1 / zoom, cy - (cy + dy) / zoom)
    fill = tuple(int(v) for v in np.asarray(out).reshape(-1, 3).mean(0))
    out = out.transform(
        (w, h), Image.Transform.AFFINE, coeffs, Image.Resampling.BILINEAR, fillcolor=fill
    )
    # another camera's resolution
    low = int(rng.integers(40, 65))
    out = out.resize((low, low), Image.Resampling.BILINEAR).resize(
        (w, h), Image.Resampling.BILINEAR
    )
    buf = io.BytesIO()
    out.save(buf, format="JPEG", quality=int(rng.integers(15, 51)))
    return buf.getvalue()


def make_cross_domain(heldout: Path, dest: Path, seed: int) -> Path:
    for person in sorted(heldout.iterdir()):
        (dest / person.name).mkdir(parents=True)
        for f in sorted(person.iterdir()):
            rng = np.random.default_rng([seed, zlib.crc32(f"{person.name}/{f.name}".encode())])
            (dest / person.name / f"{f.stem}.jpg").write_bytes(cross_domain(Image.open(f), rng))
    return dest


def score(model: str, folder: Path) -> tuple[float, float]:
    r = evaluate_retrieval(folder, model, metric="cosine", backend="eager")
    return r.mAP, r.cmc[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", help="ORL faces folder (default ../shared/data/orl_faces)")
    ap.add_argument("--chips", help="aligned chips made before (skips `faces chips`)")
    ap.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="default: train-embedding's (chosen with the loss: 40 for ArcFace, 20 otherwise)",
    )
    ap.add_argument("--recipes", default="auto,neck,last,all", help="--trainable values to run")
    ap.add_argument(
        "--augment", default=None, help="train-embedding's --augment (default: its default)"
    )
    ap.add_argument("--train-people", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", help="keep chips, splits and runs in this folder")
    args = ap.parse_args()
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="emb_transfer_"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"machine: {machine()}")
    chips = Path(args.chips) if args.chips else work / "chips"
    if not (chips / "chips.json").is_file():
        from vitrina.faces.chips import write_face_chips

        t = time.perf_counter()
        r = write_face_chips(data_dir("orl_faces", args.data), chips, assume_face=True)
        print(
            f"faces chips: {r.written} chips of {r.identities} people ({time.perf_counter() - t:.0f} s)"
        )
    split = work / f"split-{args.seed}"
    if not (split / "train").is_dir():
        split_people(chips, split, args.train_people, args.seed)
        make_cross_domain(split / "heldout", split / "cross-domain", args.seed)
    if not (split / "train" / FACE_CHIPS_MANIFEST).is_file():  # new, or kept from an older run
        give_manifest(chips, split / "train")
    train, heldout, xdom = split / "train", split / "heldout", split / "cross-domain"
    print(
        f"train: {train} ({args.train_people} people); held-out: 10 people, clean and cross-domain\n"
    )

    rows = []
    t = time.perf_counter()
    base = (*score("efficientnet_lite0", heldout), *score("efficientnet_lite0", xdom))
    rows.append(("frozen ImageNet Lite0 (starting weights)", None, "", *base))
    print(
        f"frozen: held-out mAP {base[0]:.3f}, cross-domain mAP {base[2]:.3f} ({time.perf_counter() - t:.0f} s)"
    )
    aug = f"-{args.augment}" if args.augment else ""
    for recipe in args.recipes.split(","):
        cfg = EmbeddingConfig(
            data_dir=str(train),
            epochs=args.epochs,
            trainable=recipe,
            out=str(work / f"run-{recipe}-e{args.epochs or 'default'}-s{args.seed}{aug}"),
            seed=args.seed,
            **({"augment": args.augment} if args.augment else {}),
        )
        t = time.perf_counter()
        if Path(cfg.out).is_dir():
            from vitrina.training.embedding import _finished_result

            res = _finished_result(Path(cfg.out))
        else:
            res = train_embedding(cfg, progress=False)
        secs = time.perf_counter() - t
        figs = (*score(str(res.run_dir), heldout), *score(str(res.run_dir), xdom))
        label = (
            f"--trainable {recipe}"
            + (f" -> {res.trainable.get('choice')}" if recipe == "auto" else "")
            + (f" --augment {args.augment}" if args.augment else "")
        )
        rows.append((label, secs, f"{res.best_epoch}", *figs))
        print(
            f"{label}: {secs / 60:.1f} min, best epoch {res.best_epoch}; held-out mAP {figs[0]:.3f}, "
            f"cross-domain mAP {figs[2]:.3f}",
            flush=True,
        )
        for line in res.verdict:
            print(f"    run says: {line}")
    print(
        "\n| embedding | CPU training | best epoch | held-out mAP (rank-1) | vs frozen | cross-domain mAP (rank-1) | vs frozen |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, secs, epoch, m1, r1, m2, r2 in rows:
        tr = "—" if secs is None else f"{secs / 60:.1f} min"
        print(
            f"| {name} | {tr} | {epoch or '—'} | {m1:.3f} ({r1:.3f}) | {(m1 - base[0]) * 100:+.1f} pts "
            f"| {m2:.3f} ({r2:.3f}) | {(m2 - base[2]) * 100:+.1f} pts |"
        )
    auto = next((r for r in rows if r[0].startswith("--trainable auto")), None)
    if auto is not None:
        lifts = ((auto[3] - base[0]) * 100, (auto[5] - base[2]) * 100)
        ok = min(lifts) >= 10
        print(
            f"\ndefault recipe vs frozen: held-out {lifts[0]:+.1f}, cross-domain {lifts[1]:+.1f} "
            f"points (target >= +10 on both): {'met' if ok else 'MISSED'}"
        )


if __name__ == "__main__":
    main()
