"""The review's history, runnable: every step of the story on one class-folder tree.

Cats vs dogs (default ``../shared/data/cats_dogs``; ``--data`` for any class-folder tree):
``--per-class`` labelled photos per class (100), the rest held out. Each step trains on the
labelled photos only (its own seeded 20% validation split among them picks the best epoch) and
is measured on every held-out photo:

1. a perceptron on raw 32x32 pixels (``mlp_pixels``)
2. HOG + linear SVM (``hog_svm``)
3. SIFT bag of visual words + linear SVM (``sift_bovw_svm``)
4. LeNet-5 from scratch
5. ResNet-18 from scratch, for a fixed CPU budget (``--budget`` seconds of training)
6. an autoencoder (ResNet-18 encoder, 64x64, the labelled photos without their labels), then
   a linear probe on its features with the labels
7. ImageNet EfficientNet-Lite0: linear probe (L-BFGS on cached features)
8. ImageNet EfficientNet-Lite0: fine-tuned (at most ``--finetune-epochs``, within the budget)

Reported: held-out accuracy, training time, images/s at inference (``vitrina evaluate`` over
the held-out photos: decoding + model, backend ``auto``, after a warm-up batch), the run's
``model.safetensors`` size, and the peak memory of the step's process.

ORL faces (``--orl``): the review's step from Siamese pairs to triplets, on the same data and
backbone (ImageNet EfficientNet-Lite0 at 112x96, 20 people to train on, the other 20 unseen:
query/gallery as in ``benchmarks/reid_orl.py``): Siamese pairs (``--sampler pairs``,
``siamese-contrastive``) vs triplet batch-hard vs ArcFace, mAP on the unseen people; the
frozen ImageNet embedding as the baseline. Each loss gets the same CPU budget.

Precision: fp64 vs fp32 vs bf16 for training and inference, on scikit-learn's digits (LeNet-5
from scratch, all held-out digits) and on the cats/dogs probe (features by the backend of each
precision; ``--precision-labelled`` / ``--precision-heldout`` photos per class, because fp64
and emulated bf16 are 5-8x slower than fp32 on CPUs without bf16 units).

Each step runs in its own process (peak memory is that process's ``ru_maxrss``). Results go to
``--out`` (``history.json``, ``history.md``) and the picture (accuracy against training time,
one point per step) to ``--plot``.

    python benchmarks/history.py [--data DIR] [--orl DIR] [--steps mlp_pixels,hog_svm]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from _common import DEFAULT_DATA, link_subset, machine

#: (name, group, label) in the order of the story.
STEPS: list[tuple[str, str, str]] = [
    ("mlp_pixels", "story", "perceptron on 32x32 pixels"),
    ("hog_svm", "story", "HOG + linear SVM"),
    ("sift_bovw_svm", "story", "SIFT bag of words + SVM"),
    ("lenet5", "story", "LeNet-5 from scratch"),
    ("resnet18_scratch", "story", "ResNet-18 from scratch (budget)"),
    ("autoencoder_probe", "story", "autoencoder features + linear probe"),
    ("lite0_probe", "story", "ImageNet EfficientNet-Lite0, linear probe"),
    ("lite0_finetune", "story", "ImageNet EfficientNet-Lite0, fine-tuned"),
    ("orl_frozen", "orl", "frozen ImageNet Lite0 (no training)"),
    ("orl_siamese", "orl", "Siamese pairs (contrastive)"),
    ("orl_triplet", "orl", "triplet batch-hard (P×K)"),
    ("orl_arcface", "orl", "ArcFace (P×K)"),
    ("digits_fp64", "precision", "digits, LeNet-5, fp64"),
    ("digits_fp32", "precision", "digits, LeNet-5, fp32"),
    ("digits_bf16", "precision", "digits, LeNet-5, bf16"),
    ("probe_fp64", "precision", "cats/dogs Lite0 probe, fp64"),
    ("probe_fp32", "precision", "cats/dogs Lite0 probe, fp32"),
    ("probe_bf16", "precision", "cats/dogs Lite0 probe, bf16"),
]


# ------------------------------------------------------------------------------ data
def split(data: Path, work: Path, per_class: int, seed: int = 0) -> tuple[Path, Path]:
    """``per_class`` labelled photos per class (a seeded sample), the rest held out; folders
    of symlinks (nothing copied)."""
    import random

    labelled, heldout = work / "labelled", work / "heldout"
    if labelled.is_dir() and heldout.is_dir():
        return labelled, heldout
    from vitrina.data import scan_folder

    scan = scan_folder(data, min_classes=2)
    rng = random.Random(seed)
    train, test = [], []
    for c in range(len(scan.classes)):
        files = sorted(s.path for s in scan.samples if s.label == c)
        rng.shuffle(files)
        train += files[:per_class]
        test += files[per_class:]
    link_subset(train, labelled)
    link_subset(test, heldout)
    return labelled, heldout


def subset(folder: Path, work: Path, per_class: int) -> Path:
    """The first ``per_class`` photos of each class of ``folder`` (sorted names)."""
    sub = work / f"{folder.name}-{per_class}"
    if not sub.is_dir():
        files = []
        for d in sorted(p for p in folder.iterdir() if p.is_dir()):
            files += sorted(d.iterdir())[:per_class]
        link_subset(files, sub)
    return sub


def digits(work: Path) -> tuple[Path, Path]:
    """scikit-learn's digits as PNGs: labelled class folders and held-out class folders."""
    import csv

    from vitrina.demo import write_digits

    root = work / "digits"
    heldout = root / "heldout"
    if heldout.is_dir():
        return root / "labelled", heldout
    labelled, new, _ = write_digits(root, seed=0)
    with open(root / "new-truth.csv") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        target = heldout / r["digit"] / r["file"]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to((new / r["file"]).resolve())
    return labelled, heldout


# ------------------------------------------------------------------------------ steps
def _size_mb(run: Path) -> float:
    return (run / "model.safetensors").stat().st_size / 1e6


def _evaluate(run: Path, heldout: Path, backend: str = "auto") -> dict[str, Any]:
    """Held-out accuracy and images/s (decode + model, after a warm-up batch)."""
    from vitrina.classify import load
    from vitrina.data import scan_folder

    clf = load(run)
    first = [s.path for s in scan_folder(heldout, classes=clf.classes).samples[:16]]
    clf.predict(first, backend=backend, batch_size=32)  # warm-up: auto decides here
    t0 = time.perf_counter()
    rep = clf.evaluate(heldout, backend=backend, batch_size=32)
    secs = time.perf_counter() - t0
    n = int(rep.n)
    return {
        "accuracy": float(rep.accuracy),
        "heldout": n,
        "infer_img_s": n / secs,
        "backend": clf.last_engine.backend_name if clf.last_engine else backend,
        "unreadable_heldout": len(rep.unreadable),
    }


def _classify(
    name: str, ctx: dict[str, Any], budget: float | None = None, **kw: Any
) -> dict[str, Any]:
    from vitrina.training import TrainConfig, train_classifier
    from vitrina.training.callbacks import TimeBudget

    cfg = TrainConfig(
        data_dir=ctx["labelled"], out=str(Path(ctx["work"]) / "runs" / name), seed=0, **kw
    )
    t0 = time.perf_counter()
    res = train_classifier(
        cfg, progress=False, extra_callbacks=[TimeBudget(budget)] if budget else None
    )
    train_s = time.perf_counter() - t0
    out = {
        "train_s": train_s,
        "epochs": res.metrics.get("epochs_run"),
        "val_accuracy": res.metrics.get("val_accuracy"),
        "size_mb": _size_mb(res.run_dir),
        "skipped_training_photos": len(res.bad_files),
    }
    out.update(_evaluate(res.run_dir, Path(ctx["heldout"]), ctx.get("backend", "auto")))
    return out


def step_mlp_pixels(ctx: dict[str, Any]) -> dict[str, Any]:
    return _classify("mlp_pixels", ctx, arch="mlp_pixels", mode="scratch", epochs=30)


def step_hog_svm(ctx: dict[str, Any]) -> dict[str, Any]:
    return _classify("hog_svm", ctx, arch="hog_svm")


def step_sift_bovw_svm(ctx: dict[str, Any]) -> dict[str, Any]:
    return _classify("sift_bovw_svm", ctx, arch="sift_bovw_svm")


def step_lenet5(ctx: dict[str, Any]) -> dict[str, Any]:
    return _classify("lenet5", ctx, arch="lenet5", mode="scratch", epochs=30)


def step_resnet18_scratch(ctx: dict[str, Any]) -> dict[str, Any]:
    out = _classify(
        "resnet18_scratch",
        ctx,
        budget=ctx["budget"],
        arch="resnet18",
        mode="scratch",
        epochs=ctx["scratch_epochs"],
    )
    out["budget_s"] = ctx["budget"]
    return out


def step_autoencoder_probe(ctx: dict[str, Any]) -> dict[str, Any]:
    from vitrina.training.autoencoder import AutoencoderConfig, train_autoencoder
    from vitrina.training.callbacks import TimeBudget

    ae_out = Path(ctx["work"]) / "runs" / "autoencoder"
    t0 = time.perf_counter()
    res = train_autoencoder(
        AutoencoderConfig(
            data_dir=ctx["labelled"],  # the labelled photos, labels unused
            arch="resnet18",
            input_size=(64, 64),
            epochs=ctx["ae_epochs"],
            out=str(ae_out),
            seed=0,
        ),
        progress=False,
        extra_callbacks=[TimeBudget(ctx["budget"])],
    )
    ae_s = time.perf_counter() - t0
    out = _classify(
        "autoencoder_probe", ctx, arch="resnet18", mode="probe", weights=str(res.run_dir)
    )
    out["autoencoder_s"] = ae_s
    out["probe_s"] = out["train_s"]
    out["train_s"] = ae_s + out["probe_s"]
    out["autoencoder_val_mse"] = res.metrics.get("val_loss")
    out["autoencoder_epochs"] = res.metrics.get("epochs_run")
    return out


def step_lite0_probe(ctx: dict[str, Any]) -> dict[str, Any]:
    return _classify("lite0_probe", ctx, arch="efficientnet_lite0", mode="probe")


def step_lite0_finetune(ctx: dict[str, Any]) -> dict[str, Any]:
    out = _classify(
        "lite0_finetune",
        ctx,
        budget=ctx["budget"],
        arch="efficientnet_lite0",
        mode="finetune",
        epochs=ctx["finetune_epochs"],
    )
    out["budget_s"] = ctx["budget"]
    return out


def _orl(ctx: dict[str, Any]) -> Path:
    from vitrina.data.identities import to_market

    market = Path(ctx["work"]) / "orl-market"
    if not (market / "query").is_dir():
        to_market(Path(ctx["orl"]), market, train_ids=20, seed=0)
    return market


def _embedding(name: str, ctx: dict[str, Any], **kw: Any) -> dict[str, Any]:
    from vitrina.embed.reid import evaluate_reid
    from vitrina.training.embedding import EmbeddingConfig, train_embedding

    market = _orl(ctx)
    cfg = EmbeddingConfig(
        data_dir=str(market),
        epochs=ctx["orl_epochs"],
        input_size=(112, 96),
        p=8,
        k=4,
        out=str(Path(ctx["work"]) / "runs" / name),
        seed=0,
        **kw,
    )
    from vitrina.training.callbacks import TimeBudget

    t0 = time.perf_counter()
    res = train_embedding(cfg, progress=False, extra_callbacks=[TimeBudget(ctx["budget"])])
    train_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    ev = evaluate_reid(market, str(res.run_dir), backend="eager").report
    return {
        "mAP": float(ev.mAP),
        "rank1": float(ev.rank1),
        "train_s": train_s,
        "eval_s": time.perf_counter() - t1,
        "val_mAP": res.metrics.get("val_mAP"),
        "best_epoch": res.best_epoch,
        "epochs": res.metrics.get("epochs_run"),
        "size_mb": _size_mb(res.run_dir),
    }


def step_orl_frozen(ctx: dict[str, Any]) -> dict[str, Any]:
    from vitrina.embed.reid import evaluate_reid

    market = _orl(ctx)
    t0 = time.perf_counter()
    ev = evaluate_reid(market, "efficientnet_lite0", backend="eager").report
    return {
        "mAP": float(ev.mAP),
        "rank1": float(ev.rank1),
        "train_s": 0.0,
        "eval_s": time.perf_counter() - t0,
    }


def step_orl_siamese(ctx: dict[str, Any]) -> dict[str, Any]:
    return _embedding("orl_siamese", ctx, loss="siamese-contrastive", sampler="pairs")


def step_orl_triplet(ctx: dict[str, Any]) -> dict[str, Any]:
    return _embedding("orl_triplet", ctx, loss="triplet-batch-hard")


def step_orl_arcface(ctx: dict[str, Any]) -> dict[str, Any]:
    return _embedding("orl_arcface", ctx, loss="arcface")


def _digits(ctx: dict[str, Any], precision: str) -> dict[str, Any]:
    from vitrina.training.precision import inference_backend

    labelled, heldout = digits(Path(ctx["work"]))
    sub = {**ctx, "labelled": str(labelled), "heldout": str(heldout)}
    sub["backend"] = inference_backend(precision)
    return _classify(
        f"digits_{precision}",
        sub,
        arch="lenet5",
        mode="scratch",
        epochs=15,
        lr=2e-3,
        augment="none",
        val_fraction=0.1,
        precision=precision,
    )


def _probe(ctx: dict[str, Any], precision: str) -> dict[str, Any]:
    from vitrina.training.precision import inference_backend

    sub = dict(ctx)
    work = Path(ctx["work"])
    sub["labelled"] = str(subset(Path(ctx["labelled"]), work, ctx["precision_labelled"]))
    sub["heldout"] = str(subset(Path(ctx["heldout"]), work, ctx["precision_heldout"]))
    sub["backend"] = inference_backend(precision)
    return _classify(
        f"probe_{precision}", sub, arch="efficientnet_lite0", mode="probe", precision=precision
    )


def step_digits_fp64(ctx: dict[str, Any]) -> dict[str, Any]:
    return _digits(ctx, "fp64")


def step_digits_fp32(ctx: dict[str, Any]) -> dict[str, Any]:
    return _digits(ctx, "fp32")


def step_digits_bf16(ctx: dict[str, Any]) -> dict[str, Any]:
    return _digits(ctx, "bf16")


def step_probe_fp64(ctx: dict[str, Any]) -> dict[str, Any]:
    return _probe(ctx, "fp64")


def step_probe_fp32(ctx: dict[str, Any]) -> dict[str, Any]:
    return _probe(ctx, "fp32")


def step_probe_bf16(ctx: dict[str, Any]) -> dict[str, Any]:
    return _probe(ctx, "bf16")


# ------------------------------------------------------------------------------ runner
def run_child(step: str, ctx_file: Path, result_file: Path) -> None:
    """One step in this process; its result (+ peak memory) as JSON in ``result_file``."""
    import warnings

    warnings.simplefilter("ignore")  # bf16 on CPUs without bf16 units says so once per run
    ctx = json.loads(ctx_file.read_text())
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    out = globals()[f"step_{step}"](ctx)
    out["wall_s"] = time.perf_counter() - t0
    me, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    # CPU seconds of the step (all threads, and decoding workers that have exited): on a
    # shared machine this says more about the cost than the wall clock does.
    out["cpu_s"] = me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["rss_at_start_mb"] = base_rss
    result_file.write_text(json.dumps(out, indent=1, default=float))


def _fmt(v: Any, spec: str = ".3f") -> str:
    return "—" if v is None else format(v, spec)


def _cpu(r: dict[str, Any]) -> str:
    """CPU seconds of the whole step (training + evaluation), when it was measured."""
    return "—" if r.get("cpu_s") is None else f"{r['cpu_s']:.0f} s"


def tables(results: dict[str, dict[str, Any]]) -> str:
    labels = {n: lbl for n, _, lbl in STEPS}
    lines = [
        "| step | held-out accuracy | training (wall) | step CPU time | images/s (inference) "
        "| model size | peak memory | load at start |"
    ]
    lines.append("|---|---|---|---|---|---|---|---|")
    for n, g, _ in STEPS:
        r = results.get(n)
        if g != "story" or r is None:
            continue
        if "error" in r:
            lines.append(f"| {labels[n]} | failed: {r['error']} | | | | | | |")
            continue
        lines.append(
            f"| {labels[n]} | {r['accuracy']:.1%} | {r['train_s']:.0f} s | {_cpu(r)} | "
            f"{r['infer_img_s']:.0f} ({r['backend']}) | {r['size_mb']:.2f} MB | "
            f"{r['peak_rss_mb']:.0f} MB | {_fmt(r.get('load_at_start'), '.1f')} |"
        )
    lines += [
        "",
        "| ORL, unseen people | mAP | rank-1 | training (wall) | step CPU time | load at start |",
        "|---|---|---|---|---|---|",
    ]
    for n, g, _ in STEPS:
        r = results.get(n)
        if g != "orl" or r is None:
            continue
        if "error" in r:
            lines.append(f"| {labels[n]} | failed: {r['error']} | | | | |")
            continue
        lines.append(
            f"| {labels[n]} | {r['mAP']:.3f} | {r['rank1']:.3f} | {r['train_s']:.0f} s | "
            f"{_cpu(r)} | {_fmt(r.get('load_at_start'), '.1f')} |"
        )
    lines += [
        "",
        "| precision | held-out accuracy | training (wall) | step CPU time "
        "| images/s (inference) | peak memory | load at start |",
        "|---|---|---|---|---|---|---|",
    ]
    for n, g, _ in STEPS:
        r = results.get(n)
        if g != "precision" or r is None:
            continue
        if "error" in r:
            lines.append(f"| {labels[n]} | failed: {r['error']} | | | | | |")
            continue
        lines.append(
            f"| {labels[n]} | {r['accuracy']:.2%} ({r['heldout']} photos) | {r['train_s']:.0f} s | "
            f"{_cpu(r)} | {r['infer_img_s']:.0f} ({r['backend']}) | {r['peak_rss_mb']:.0f} MB | "
            f"{_fmt(r.get('load_at_start'), '.1f')} |"
        )
    return "\n".join(lines)


def plot(results: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import math

    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.5, 5))
    points = [
        (i, label, max(r["train_s"], 0.5), 100 * r["accuracy"])
        for i, (n, g, label) in enumerate(STEPS)
        if g == "story" and (r := results.get(n)) and "error" not in r
    ]
    if points:
        lo = min(math.log10(x) for _, _, x, _ in points)
        hi = max(math.log10(x) for _, _, x, _ in points)
    placed: list[tuple[float, float]] = []  # (log10 x, y) of the labels drawn so far
    for i, label, x, y in sorted(points, key=lambda p: -p[3]):
        ax.scatter([x], [y], s=60, zorder=3)
        right = math.log10(x) > (lo + hi) / 2  # labels of the right half go to the left
        dy = 4
        while any(
            abs(math.log10(x) - px) < 0.5 and abs(y + dy / 8 - py) < 2.5 for px, py in placed
        ):
            dy -= 10  # below a label already drawn nearby
        placed.append((math.log10(x), y + dy / 8))
        ax.annotate(
            f"{i + 1}. {label}",
            (x, y),
            textcoords="offset points",
            xytext=(-6 if right else 6, dy),
            ha="right" if right else "left",
            fontsize=8,
        )
    ax.set_xscale("log")
    ax.set_ylim(min([45.0] + [y - 5 for *_, y in points]), 101.5)  # room for the labels below
    ax.set_xlabel("training time on this CPU (s, log scale)")
    ax.set_ylabel("held-out accuracy (%)")
    ax.set_title("cats vs dogs, 100 labelled photos per class: the review's history")
    ax.axhline(50, color="grey", lw=0.8, ls=":")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", help="class-folder tree (default ../shared/data/cats_dogs)")
    ap.add_argument("--orl", help="folder-per-person faces (default ../shared/data/orl_faces)")
    ap.add_argument("--per-class", type=int, default=100, help="labelled photos per class")
    ap.add_argument("--steps", help="comma-separated step names (default: all)")
    ap.add_argument(
        "--budget",
        type=float,
        default=240.0,
        help="CPU budget (seconds of training) of ResNet-18 from scratch, the autoencoder, "
        "the fine-tune and each ORL loss",
    )
    ap.add_argument("--scratch-epochs", type=int, default=30)
    ap.add_argument("--ae-epochs", type=int, default=40)
    ap.add_argument("--finetune-epochs", type=int, default=5)
    ap.add_argument("--orl-epochs", type=int, default=8)
    ap.add_argument(
        "--precision-labelled",
        type=int,
        default=30,
        help="labelled photos per class for the cats/dogs precision steps",
    )
    ap.add_argument(
        "--precision-heldout",
        type=int,
        default=50,
        help="held-out photos per class for the cats/dogs precision steps",
    )
    ap.add_argument("--work", help="working folder (default: a new temporary one)")
    ap.add_argument("--out", default="benchmarks/results", help="where history.json/.md go")
    ap.add_argument("--plot", default="docs/images/history.png")
    ap.add_argument("--timeout", type=float, default=1200.0, help="seconds per step")
    ap.add_argument(
        "--report",
        action="store_true",
        help="only rebuild history.md and the picture from --out's history.json",
    )
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--ctx", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        run_child(args.child, Path(args.ctx), Path(args.result))
        return

    if args.report:
        saved = json.loads((Path(args.out) / "history.json").read_text())["results"]
        table = tables(saved)
        (Path(args.out) / "history.md").write_text(table + "\n")
        plot(saved, Path(args.plot))
        print(table)
        return
    data = Path(args.data) if args.data else (DEFAULT_DATA / "cats_dogs").resolve()
    orl = Path(args.orl) if args.orl else (DEFAULT_DATA / "orl_faces").resolve()
    names = [n for n, _, _ in STEPS]
    wanted = args.steps.split(",") if args.steps else names
    unknown = set(wanted) - set(names)
    if unknown:
        sys.exit(f"error: unknown steps {sorted(unknown)} (choose from {', '.join(names)})")
    if not data.is_dir():
        sys.exit(f"error: {data}: data folder not found (pass --data DIR)")
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="history_"))
    work.mkdir(parents=True, exist_ok=True)
    labelled, heldout = split(data, work, args.per_class)
    ctx = {
        "work": str(work),
        "labelled": str(labelled),
        "heldout": str(heldout),
        "orl": str(orl),
        "budget": args.budget,
        "scratch_epochs": args.scratch_epochs,
        "ae_epochs": args.ae_epochs,
        "finetune_epochs": args.finetune_epochs,
        "orl_epochs": args.orl_epochs,
        "precision_labelled": args.precision_labelled,
        "precision_heldout": args.precision_heldout,
    }
    ctx_file = work / "ctx.json"
    ctx_file.write_text(json.dumps(ctx))
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    results_file = out_dir / "history.json"
    results: dict[str, dict[str, Any]] = {}
    if results_file.is_file():
        results = json.loads(results_file.read_text()).get("results", {})
    flags = subprocess.run(
        [
            "bash",
            "-c",
            r"grep -o -w 'avx2\|avx512f\|amx_bf16\|avx512_bf16' /proc/cpuinfo | sort -u",
        ],
        capture_output=True,
        text=True,
    ).stdout.split()
    print(f"machine: {machine()}; CPU flags: {' '.join(flags)}; load {os.getloadavg()}")
    print(f"data: {data} -> {labelled} ({args.per_class}/class), held out: {heldout}\n")
    total0 = time.perf_counter()
    for name in wanted:
        result_file = work / f"result-{name}.json"
        result_file.unlink(missing_ok=True)
        t0 = time.perf_counter()
        load0 = os.getloadavg()[0]
        cmd = [
            sys.executable,
            __file__,
            "--child",
            name,
            "--ctx",
            str(ctx_file),
            "--result",
            str(result_file),
        ]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
            if proc.returncode != 0 or not result_file.is_file():
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
                results[name] = {"error": tail[0][:200]}
            else:
                results[name] = json.loads(result_file.read_text())
        except subprocess.TimeoutExpired:
            results[name] = {"error": f"timed out after {args.timeout:.0f} s"}
        results[name]["step_s"] = time.perf_counter() - t0
        results[name]["load_at_start"] = load0
        print(f"{name}: {json.dumps(results[name], default=float)}", flush=True)
        results_file.write_text(
            json.dumps(
                {"machine": machine(), "cpu_flags": flags, "results": results},
                indent=1,
                default=float,
            )
        )
    total = time.perf_counter() - total0
    table = tables(results)
    (out_dir / "history.md").write_text(table + "\n")
    print("\n" + table)
    print(
        f"\nall {len(wanted)} steps end to end: {total / 60:.1f} min (target 30 min: "
        f"{'met' if total <= 1800 else 'MISSED'})"
    )
    plot(results, Path(args.plot))
    print(f"picture: {args.plot}; results: {results_file}; work: {work}")


if __name__ == "__main__":
    main()
