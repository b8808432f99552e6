"""Detection on real photos: mAP per architecture within a stated CPU budget, images/s per
backend, and the HOG people detector's speed and AP.

1. groceries_det (Freiburg groceries with boxes: 25 classes, 1,000 photos, Pascal VOC): a
   seeded split by photo, stratified by class, 800 for training and 200 held out (the split
   is written as two VOC folders of links with ``vitrina.data.annotations``: the converter is
   part of what is measured). Each architecture (``--archs``) trains on the 800 the way a user
   runs ``vitrina detect train`` (``--freeze``, ``--augment``, ``--input-size``), for at most
   ``--budget`` minutes of this process's CPU time (``--clock wall`` for wall time; the
   learning-rate schedule follows the clock, the run ends with the step that passes it;
   feature caching counts), without validation photos (the last epoch is kept). Then COCO
   mAP@[.5:.95] / mAP@.5 on the 200 held out (pycocotools), as the detector answers and with
   ``--flip`` (each photo also mirrored, the two answers fused) and with ``--flip --scales``
   (also at other input sizes, ``--scales``, default 0.85,1,1.3), with each one's seconds.
   With ``--classifier probe|finetune`` also the two-stage recipe: the training photos' boxes
   cut out (``vitrina data crops --margin 0.1``), an EfficientNet-Lite0 classifier trained on
   them (``vitrina train --mode probe|finetune``; its CPU and wall time reported beside the
   detector's: state the two together as the budget), and the detector's boxes named by it
   (``detect evaluate --classifier``) on the same 200 held-out photos, as the detector
   answers and with ``--flip --scales`` when ``--scales`` is given.
2. Inference images/s of the best architecture per backend (eager, onnx, openvino, bf16
   and openvino-bf16 where they can be fast, auto), compute only (prepared batches,
   warm-up, median of ``--repeats``) and end to end (decode + letterbox + model + boxes
   mapped back) over the 200 photos; each backend's boxes against eager's
   (``compare_boxes``).
3. HOG + linear SVM people detector (OpenCV, no training): seconds (wall and CPU) per
   1920x1080 Market-1501 frame, and AP on people (a) in photos generated here (standing figures of random size,
   place and colour on noisy backgrounds, boxes known), (b) in the Market-1501 frames with
   the boxes of ``--people-boxes`` (a COCO json), when given.

    python benchmarks/detect.py [--data ../shared/data/groceries_det] [--archs fasterrcnn,fcos]
        [--budget 30] [--input-size auto] [--precision auto] [--out bench-detect]

Target (issue 18): mAP@.5 >= 0.75 for the best architecture on the 200 held-out photos.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import numpy as np
import torch
from _common import data_dir, machine

from vitrina.data.annotations import AnnotatedSet, read_annotated, write_annotated
from vitrina.detect import DetectTrainConfig, evaluate_detector, load_detector, train_detector
from vitrina.detect.data import split_photos
from vitrina.detect.task import DetectionTask
from vitrina.detect.train import OPTIMIZERS
from vitrina.engine import BOXES, TOLERANCES, compare_outputs
from vitrina.engine.backends import bf16_supported
from vitrina.evaluate.detection import coco_metrics
from vitrina.runs import read_run


def cpu_flags() -> str:
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return "?"
    wanted = ("avx2", "avx512f", "amx_bf16", "avx512_bf16")
    return " ".join(f for f in wanted if f in flags) or "none of avx2/avx512f/amx_bf16"


def split(
    data: Path, work: Path, test_fraction: float, seed: int
) -> tuple[Path, Path, AnnotatedSet]:
    s = read_annotated(data)
    train, test = split_photos(s.photos, test_fraction, seed)
    for name, photos in (("train", train), ("test", test)):
        part = AnnotatedSet(s.root, s.format, s.classes, photos)
        write_annotated(part, work / name, "voc", photos="link")
    return work / "train", work / "test", s


def zoomed(test: Path, work: Path, zoom: float) -> Path:
    """The held-out photos seen nearer or further (a VOC set in ``work``): ``zoom < 1``
    shrinks each photo onto a grey canvas of its own size (products smaller, as on a
    shelf seen from further), ``zoom > 1`` enlarges its centre back to its size (nearer);
    the boxes move with the pixels, and a box left under 4 pixels wide or high is dropped."""
    from PIL import Image

    from vitrina.data.annotations import AnnotatedPhoto

    s = read_annotated(test)
    pixels = work / "pixels"
    photos = []
    for p in s.photos:
        image = Image.open(p.path).convert("RGB")
        W, H = image.size
        boxes = p.boxes.astype(np.float64).copy()
        if zoom < 1:
            w, h = round(W * zoom), round(H * zoom)
            ox, oy = (W - w) // 2, (H - h) // 2
            canvas = Image.new("RGB", (W, H), (114, 114, 114))
            canvas.paste(image.resize((w, h), Image.BILINEAR), (ox, oy))
            boxes = boxes * zoom + [ox, oy, ox, oy]
        else:
            cw, ch = W / zoom, H / zoom
            x0, y0 = (W - cw) / 2, (H - ch) / 2
            canvas = image.resize((W, H), Image.BILINEAR, box=(x0, y0, x0 + cw, y0 + ch))
            boxes = (boxes - [x0, y0, x0, y0]) * zoom
        boxes = np.round(np.clip(boxes, 0, [W, H, W, H]))
        keep = (boxes[:, 2] - boxes[:, 0] >= 4) & (boxes[:, 3] - boxes[:, 1] >= 4)
        path = pixels / Path(p.rel).with_suffix(".png")
        path.parent.mkdir(parents=True, exist_ok=True)
        canvas.save(path)
        photos.append(AnnotatedPhoto(path, str(Path(p.rel).with_suffix(".png")), (W, H),
                                     boxes[keep], p.labels[keep]))  # fmt: skip
    out = work / f"zoom{zoom:g}"
    write_annotated(AnnotatedSet(pixels, s.format, s.classes, photos), out, "voc")
    return out


def zoom_rows(run: Path, test: Path, args, work: Path) -> dict:
    """mAP of ``run`` on the held-out photos zoomed by each of ``--zoom`` (see zoomed)."""
    rows = {}
    for z in (float(v) for v in args.zoom.split(",") if v.strip()):
        where = zoomed(test, work / f"zoom-{z:g}", z)
        m = evaluate_detector(load_detector(run, backend="eager"), where).metrics
        rows[f"{z:g}"] = {"mAP": m.mAP, "mAP50": m.mAP50}
        print(f"{'':11s} held-out photos zoomed {z:g}x: mAP@[.5:.95] {m.mAP:.3f}  "
              f"mAP@.5 {m.mAP50:.3f}", flush=True)  # fmt: skip
    return rows


def _hw(text: str) -> tuple[int, int] | None:
    """``HEIGHTxWIDTH`` or one number (a square), as vitrina's ``--input-size``; ``auto``:
    None (``detect train`` fits it to the photos)."""
    if text == "auto":
        return None
    parts = [int(v) for v in text.lower().split("x")]
    return (parts[0], parts[-1])


def train_arch(arch: str, train: Path, test: Path, args, out: Path) -> dict:
    cfg = DetectTrainConfig(
        data_dir=str(train),
        arch=arch,
        backbone=args.backbone,
        input_size=_hw(args.input_size),
        epochs=args.max_epochs,
        batch_size=args.batch_size,
        freeze=args.freeze,
        augment=args.augment,
        train_scales=tuple(float(v) for v in args.train_scales.split(","))
        if args.train_scales
        else None,
        val_fraction=0.0,
        ema=args.ema,
        optimizer=args.optimizer,
        lr=args.lr,
        weight_decay=args.weight_decay,
        drop_path=args.drop_path,
        nms_iou=args.nms_iou,
        score_temperature=args.score_temperature,
        time_budget=args.budget,
        budget_clock=args.clock,
        precision=args.precision,
        out=str(out / arch),
        device="cpu",
    )
    wall, cpu = time.perf_counter(), time.process_time()
    res = train_detector(cfg, progress=False)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    det = load_detector(res.run_dir, backend="eager")
    t = time.perf_counter()
    ev = evaluate_detector(det, test, out=out / f"{arch}-eval")
    eval_s = time.perf_counter() - t
    m = ev.metrics
    t = time.perf_counter()
    flip = evaluate_detector(load_detector(res.run_dir, backend="eager", flip=True), test).metrics
    flip_s = time.perf_counter() - t
    scaled, scaled_s = None, 0.0
    if args.scales:
        t = time.perf_counter()
        scales = tuple(float(v) for v in args.scales.split(","))
        scaled = evaluate_detector(
            load_detector(res.run_dir, backend="eager", flip=True, scales=scales), test
        ).metrics
        scaled_s = time.perf_counter() - t
    config = read_run(res.run_dir).config  # once: what the run recorded
    row = {
        "arch": arch,
        "mAP": m.mAP,
        "mAP50": m.mAP50,
        "mAP75": m.mAP75,
        "recall": m.recall,
        "epochs": res.metrics["epochs_run"],
        "precision": config["precision"],
        "input_size": "x".join(str(v) for v in config["input_size"]),
        "nms_iou": config["detector"]["nms_thresh"],
        "nms_iou_choice": config.get("nms_iou_choice", "given"),
        "score_temperature": config["detector"].get("score_temperature", 1.0),
        "score_temperature_choice": config.get("score_temperature_choice", "given"),
        "train_wall_min": wall / 60,
        "train_cpu_min": cpu / 60,
        "cache_s": res.metrics.get("cache_seconds"),
        "run": str(res.run_dir),
        "worst_ap50": sorted(((v, k) for k, v in m.ap50.items() if v == v))[:3],
        "per_class": {
            c: {"boxes": m.gt[c], "AP": m.ap[c], "AP50": m.ap50[c], "recall50": m.recall50[c]}
            for c in m.classes
        },
        "eval_files": {k: str(v) for k, v in ev.files.items()},
        "eval_s": eval_s,
        "flip": {"mAP": flip.mAP, "mAP50": flip.mAP50, "mAP75": flip.mAP75, "eval_s": flip_s},
    }
    if scaled is not None:
        row["flip_scales"] = {
            "scales": args.scales,
            "mAP": scaled.mAP,
            "mAP50": scaled.mAP50,
            "mAP75": scaled.mAP75,
            "eval_s": scaled_s,
        }
    print(
        f"{arch:11s} mAP@[.5:.95] {m.mAP:.3f}  mAP@.5 {m.mAP50:.3f}  epochs {row['epochs']} "
        f"({row['precision']}, input {row['input_size']}, NMS IoU {row['nms_iou']:g}, "
        f"score temperature {row['score_temperature']:g})  "
        f"train {row['train_cpu_min']:.1f} CPU-min / {row['train_wall_min']:.1f} wall-min",
        flush=True,
    )
    print(
        f"{'':11s} --flip: mAP@[.5:.95] {flip.mAP:.3f}  mAP@.5 {flip.mAP50:.3f}  "
        f"(evaluation {flip_s:.0f} s against {eval_s:.0f} s)",
        flush=True,
    )
    if scaled is not None:
        print(
            f"{'':11s} --flip --scales {args.scales}: mAP@[.5:.95] {scaled.mAP:.3f}  "
            f"mAP@.5 {scaled.mAP50:.3f}  (evaluation {scaled_s:.0f} s)",
            flush=True,
        )
    if args.zoom:
        row["zoom"] = zoom_rows(res.run_dir, test, args, out / f"{arch}-zoom")
    for c, v in row["per_class"].items():
        print(
            f"  {c:14s} {v['boxes']:3d} boxes  AP {v['AP']:.3f}  AP@.5 {v['AP50']:.3f}  "
            f"recall@.5 {v['recall50']:.3f}"
        )
    if args.classifier != "none":
        row["two_stage"] = two_stage(res.run_dir, train, test, args, out / f"{arch}-named")
    return row


def two_stage(run: Path, train: Path, test: Path, args, out: Path) -> dict:
    from vitrina.classify import load as load_classifier
    from vitrina.data.annotations import crop_annotated
    from vitrina.detect.relabel import RelabeledDetector
    from vitrina.training import TrainConfig, train_classifier

    wall, cpu = time.perf_counter(), time.process_time()
    _, crops = crop_annotated(train, out / "crops", margin=0.1)
    cfg = TrainConfig(
        data_dir=str(out / "crops"),
        arch="efficientnet_lite0",
        weights="imagenet",
        mode=args.classifier,
        epochs=args.classifier_epochs,
        out=str(out / "classifier"),
        device="cpu",
    )
    res = train_classifier(cfg, progress=False)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    det = RelabeledDetector(
        load_detector(run, backend="eager"), load_classifier(res.run_dir), backend="eager"
    )
    m = evaluate_detector(det, test, out=out / "eval").metrics
    scaled = None
    if args.scales:
        scales = tuple(float(v) for v in args.scales.split(","))
        boxes = load_detector(run, backend="eager", flip=True, scales=scales)
        det = RelabeledDetector(boxes, load_classifier(res.run_dir), backend="eager")
        scaled = evaluate_detector(det, test).metrics
    row = {
        "classifier": args.classifier,
        "crops": crops.crops,
        "crop_accuracy": res.metrics.get("val_accuracy"),
        "classifier_wall_min": wall / 60,
        "classifier_cpu_min": cpu / 60,
        "mAP": m.mAP,
        "mAP50": m.mAP50,
        "per_class_AP50": m.ap50,
    }
    if scaled is not None:
        row["flip_scales"] = {"scales": args.scales, "mAP": scaled.mAP, "mAP50": scaled.mAP50}
    print(
        f"  two stages (+ {args.classifier} classifier on {crops.crops} crops, crop accuracy "
        f"{row['crop_accuracy']}, {row['classifier_cpu_min']:.1f} CPU-min / "
        f"{row['classifier_wall_min']:.1f} wall-min): mAP@[.5:.95] {m.mAP:.3f}  mAP@.5 {m.mAP50:.3f}",
        flush=True,
    )
    if scaled is not None:
        print(
            f"  two stages, --flip --scales {args.scales}: mAP@[.5:.95] {scaled.mAP:.3f}  "
            f"mAP@.5 {scaled.mAP50:.3f}",
            flush=True,
        )
    return row


def _median_rate(fn, n: int, repeats: int) -> float:
    fn()  # warm-up (and ONNX export / session creation)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return n / statistics.median(times)


def backends(run: Path, test: Path, args) -> list[dict]:
    photos = sorted(p for p in (test / "images").rglob("*") if p.is_file())
    if args.e2e_photos:
        photos = photos[:: max(1, len(photos) // args.e2e_photos)][: args.e2e_photos]
    eager = load_detector(run, backend="eager", batch_size=args.batch)
    task = DetectionTask()
    x = torch.cat([eager.engine.prepare(task, p).inputs for p in photos[: args.batch]])
    ref = eager.engine.forward(task, x)
    from vitrina.engine.openvino import openvino_available

    with_bf16 = bf16_supported(torch.device("cpu")) or args.bf16
    openvino = openvino_available()
    names = (
        ["eager", "onnx"]
        + (["openvino"] if openvino else [])
        + ["auto"]
        + (["bf16"] if with_bf16 else [])
        + (["openvino-bf16"] if with_bf16 and openvino else [])
    )
    rows = []
    for name in names:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            det = load_detector(run, backend=name, batch_size=args.batch)
            compute = _median_rate(lambda d=det: d.engine.forward(task, x), len(x), args.repeats)
            got = det.engine.forward(task, x)
            t = time.perf_counter()
            n = sum(1 for r in det.detect(photos) if r.ok)
            e2e = n / (time.perf_counter() - t)
        report = compare_outputs(ref, got, BOXES)
        chosen = det.engine.backend_name
        rows.append(
            {
                "backend": name if name != "auto" else f"auto ({chosen})",
                "compute_img_s": compute,
                "end_to_end_img_s": e2e,
                "same_boxes": report["top1_agreement"],
                "max_score_diff": report["max_abs_diff"],
                "within_tolerance": TOLERANCES.get(chosen, TOLERANCES["eager"]).ok(report),
            }
        )
    base = rows[0]["compute_img_s"]
    for r in rows:
        r["x_eager"] = r["compute_img_s"] / base
        print(
            f"  {r['backend']:14s} compute {r['compute_img_s']:6.1f} img/s ({r['x_eager']:.2f}x eager)"
            f"  end to end {r['end_to_end_img_s']:6.1f} img/s  same boxes {r['same_boxes']:.0%}",
            flush=True,
        )
    return rows


# ---------------------------------------------------------------------------- HOG people
def _figure(draw, x: float, y: float, s: float, color) -> tuple[float, float, float, float]:
    cx = x + s * 0.25
    draw.ellipse((cx - s * 0.07, y, cx + s * 0.07, y + s * 0.15), fill=color)
    draw.rectangle((cx - s * 0.11, y + s * 0.16, cx + s * 0.11, y + s * 0.55), fill=color)
    draw.rectangle((cx - s * 0.16, y + s * 0.17, cx - s * 0.12, y + s * 0.5), fill=color)
    draw.rectangle((cx + s * 0.12, y + s * 0.17, cx + s * 0.16, y + s * 0.5), fill=color)
    draw.polygon([(cx - s * 0.1, y + s * 0.55), (cx - s * 0.02, y + s * 0.55),
                  (cx - s * 0.06, y + s), (cx - s * 0.13, y + s)], fill=color)  # fmt: skip
    draw.polygon([(cx + s * 0.02, y + s * 0.55), (cx + s * 0.1, y + s * 0.55),
                  (cx + s * 0.13, y + s), (cx + s * 0.06, y + s)], fill=color)  # fmt: skip
    return (cx - s * 0.16, y, cx + s * 0.16, y + s)


def people_photos(folder: Path, n: int, seed: int = 0) -> list[tuple[Path, np.ndarray]]:
    """Photos of 0-4 standing figures 110-300 px tall on noisy backgrounds of random grey,
    some blurred, with their boxes."""
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        w, h = (640, 480) if i % 2 else (800, 600)
        base = rng.integers(90, 220)
        im = Image.fromarray(np.clip(base + rng.normal(0, 14, (h, w, 3)), 0, 255).astype(np.uint8))
        d = ImageDraw.Draw(im)
        boxes: list[tuple[float, ...]] = []
        for _ in range(int(rng.integers(0, 5))):
            s = float(rng.uniform(110, min(300, h - 10)))
            x, y = float(rng.uniform(0, w - s * 0.5)), float(rng.uniform(0, h - s))
            if any(x < o[2] and x + s * 0.5 > o[0] for o in boxes):
                continue  # side by side, never in front of each other
            boxes.append(_figure(d, x, y, s, tuple(int(v) for v in rng.integers(0, 80, 3))))
        if rng.random() < 0.5:
            im = im.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 1.5))))
        p = folder / f"people{i:03d}.png"
        im.save(p)
        out.append((p, np.array(boxes, np.float32).reshape(-1, 4)))
    return out


def hog(args, work: Path) -> dict:
    # in this process (no decode workers): its CPU time is the detector's, whatever the load
    det = load_detector("hog_people", num_workers=0)
    frames = sorted(Path(args.frames).glob("*.jpg")) if args.frames else []
    res: dict = {}
    if frames:
        t, c = time.perf_counter(), time.process_time()
        found = [r.value for r in det.detect(frames)]
        res["frames"] = len(frames)
        res["s_per_frame"] = (time.perf_counter() - t) / len(frames)
        res["cpu_s_per_frame"] = (time.process_time() - c) / len(frames)
        res["frame_size"] = found[0].size
        if args.people_boxes:
            s = read_annotated(args.people_boxes, classes=["person"])
            by = {p.path.name: p for p in s.photos}
            gts, preds = [], []
            for f, d in zip(frames, found, strict=True):
                if f.name in by:
                    gts.append((by[f.name].boxes, by[f.name].labels))
                    preds.append((d.boxes, d.scores, d.labels))
            m = coco_metrics(gts, preds, ["person"])
            res["market_AP50"], res["market_AP"], res["market_people"] = m.mAP50, m.mAP, m.boxes
    shots = people_photos(work / "people", args.people, seed=1)
    t, c = time.perf_counter(), time.process_time()
    found = [r.value for r in det.detect([p for p, _ in shots])]
    res["generated_s_per_photo"] = (time.perf_counter() - t) / len(shots)
    res["generated_cpu_s_per_photo"] = (time.process_time() - c) / len(shots)
    m = coco_metrics(
        [(b, np.zeros(len(b), np.int64)) for _, b in shots],
        [(d.boxes, d.scores, d.labels) for d in found],
        ["person"],
    )
    res["generated_AP50"], res["generated_AP"], res["generated_people"] = m.mAP50, m.mAP, m.boxes
    print(f"HOG people: {json.dumps(res)}", flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", help="annotated photos (default ../shared/data/groceries_det)")
    ap.add_argument("--archs", default="fasterrcnn,retinanet,fcos,ssdlite")
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument(
        "--input-size",
        default="auto",
        help="HEIGHTxWIDTH, or one number; auto (default): detect train's own choice, "
        "fitted to the photos",
    )
    ap.add_argument("--freeze", default="lower")
    ap.add_argument("--augment", default="flip")
    ap.add_argument(
        "--train-scales",
        default="",
        help="multi-scale training, e.g. 0.75,1,1.25; 1: off (default: detect train's own)",
    )
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument(
        "--optimizer",
        default=DetectTrainConfig.optimizer,
        choices=OPTIMIZERS,
        help="as detect train's",
    )
    ap.add_argument("--lr", type=float, default=None, help="as detect train's (default: its own)")
    ap.add_argument("--weight-decay", type=float, default=None, help="as detect train's")
    ap.add_argument("--drop-path", type=float, default=0.0, help="as detect train's")
    ap.add_argument(
        "--nms-iou", type=float, default=None, help="as detect train's (default: fitted)"
    )
    ap.add_argument(
        "--score-temperature",
        type=float,
        default=None,
        help="as detect train's (default: fitted, or its default without validation photos)",
    )
    ap.add_argument("--budget", type=float, default=30.0, help="minutes per architecture")
    ap.add_argument("--clock", default="process", choices=("process", "wall"))
    ap.add_argument("--max-epochs", type=int, default=40)
    ap.add_argument(
        "--ema", action="store_true", help="train with a moving average of the weights (--ema)"
    )
    ap.add_argument(
        "--precision",
        default="fp32",
        choices=("fp32", "bf16", "auto"),
        help="detect train's --precision (auto: bf16 where measured faster)",
    )
    ap.add_argument(
        "--classifier",
        default="none",
        choices=("none", "probe", "finetune"),
        help="also name each architecture's boxes with a Lite0 classifier trained on the crops",
    )
    ap.add_argument("--classifier-epochs", type=int, default=None)
    ap.add_argument("--test-fraction", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=8, help="inference batch for the backends")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument(
        "--e2e-photos", type=int, default=0, help="end to end on this many held-out photos (0: all)"
    )
    ap.add_argument("--bf16", action="store_true", help="time bf16 even without bf16 units")
    ap.add_argument("--people", type=int, default=40, help="generated photos of people")
    ap.add_argument("--frames", help="Market-1501 frames (default: beside --data)")
    ap.add_argument("--people-boxes", help="COCO json of the people in the Market-1501 frames")
    ap.add_argument(
        "--scales",
        default="0.85,1,1.3",
        help="also evaluate with --flip --scales S (input sizes relative to the run's; '' skips)",
    )
    ap.add_argument("--run", help="measure the backends on this run (default: the best trained)")
    ap.add_argument(
        "--zoom",
        default="",
        help="also evaluate on the held-out photos zoomed by these factors, e.g. 0.6,1.4 "
        "(further / nearer than in training; with --archs '' for --run)",
    )
    ap.add_argument("--no-backends", action="store_true", help="skip the backend timings")
    ap.add_argument("--no-hog", action="store_true", help="skip the HOG people detector")
    ap.add_argument("--out", help="keep runs and reports here (default: a temporary folder)")
    args = ap.parse_args()

    data = data_dir("groceries_det", args.data)
    if args.frames is None:
        args.frames = str(data.parent / "market1501_samples" / "frames")
    print(f"machine: {machine()}; CPU flags: {cpu_flags()}; load {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory(prefix="vitrina-bench-detect-") as tmp:
        out = Path(args.out or tmp)
        out.mkdir(parents=True, exist_ok=True)
        train, test, s = split(data, out / "split", args.test_fraction, args.seed)
        print(
            f"{data}: {len(s.photos)} photos, {s.num_boxes} boxes, {len(s.classes)} classes; "
            f"train {len(read_annotated(train).photos)}, held out {len(read_annotated(test).photos)}; "
            f"budget {args.budget:g} {args.clock} minutes per architecture, --input-size {args.input_size} "
            f"--freeze {args.freeze} --augment {args.augment}"
            + (f" --train-scales {args.train_scales}" if args.train_scales else "")
            + (" --ema" if args.ema else "")
            + (
                f" --optimizer {args.optimizer}"
                if args.optimizer != DetectTrainConfig.optimizer
                else ""
            )
            + (f" --lr {args.lr:g}" if args.lr is not None else "")
            + (f" --weight-decay {args.weight_decay:g}" if args.weight_decay is not None else "")
            + (f" --drop-path {args.drop_path:g}" if args.drop_path else "")
            + (f" --nms-iou {args.nms_iou:g}" if args.nms_iou is not None else "")
            + (
                f" --score-temperature {args.score_temperature:g}"
                if args.score_temperature is not None
                else ""
            ),
            flush=True,
        )
        archs = [a for a in args.archs.split(",") if a]
        rows = [train_arch(a, train, test, args, out / "runs") for a in archs]
        speeds, people = [], {}
        if rows:

            def ways(r: dict) -> list[tuple[float, str]]:
                out = [(r["mAP50"], ""), (r["flip"]["mAP50"], " with --flip")]
                if "flip_scales" in r:
                    s = r["flip_scales"]
                    out.append((s["mAP50"], f" with --flip --scales {s['scales']}"))
                return out

            best = max(rows, key=lambda r: max(ways(r))[0])
            top, how = max(ways(best))
            print(f"best: {best['arch']}{how} mAP@.5 {top:.3f} (target >= 0.75: "
                  f"{'met' if top >= 0.75 else 'MISSED'})")  # fmt: skip
            for r in rows:
                if "two_stage" in r:
                    t = r["two_stage"]
                    print(f"{r['arch']} + {t['classifier']} classifier: mAP@.5 {t['mAP50']:.3f} "
                          f"(target >= 0.75: {'met' if t['mAP50'] >= 0.75 else 'MISSED'}) in "
                          f"{r['train_cpu_min'] + t['classifier_cpu_min']:.1f} CPU-min / "
                          f"{r['train_wall_min'] + t['classifier_wall_min']:.1f} wall-min")  # fmt: skip
            args.run = args.run or best["run"]
        zoom_of_run = None
        if args.run and args.zoom and not rows:
            print(f"{args.run}:")
            zoom_of_run = zoom_rows(Path(args.run), test, args, out / "run-zoom")
        if args.run and not args.no_backends:
            print(f"inference, {args.run}, batch {args.batch}:")
            speeds = backends(Path(args.run), test, args)
        if not args.no_hog:
            people = hog(args, out)
        report = {
            "machine": machine(),
            "cpu_flags": cpu_flags(),
            "args": vars(args),
            "architectures": rows,
            "backends": speeds,
            "hog_people": people,
            **({"run_zoom": zoom_of_run} if zoom_of_run else {}),
        }
        (out / "report.json").write_text(json.dumps(report, indent=1, default=str))
        print(f"report: {out / 'report.json'}")


if __name__ == "__main__":
    main()
