"""``vitrina detect ...`` (train, evaluate, predict, list) and ``vitrina data convert``; the
detection report of ``vitrina data inspect``. Each command parses, calls one API function of
:mod:`vitrina.detect` / :mod:`vitrina.data.annotations`, and prints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from vitrina.cli._choices import (
    AnnotationFormat,
    Backend,
    BoxAugment,
    DetectArch,
    DetectOptimizer,
    DetectPrecision,
    DetectWeights,
    Freeze,
)
from vitrina.cli._common import (
    BACKEND_HELP,
    DEVICE_HELP,
    err,
    flip_option,
    input_size_option,
    out,
    parse_scales,
    print_json,
    progress_bar,
    ray_option,
    ray_options,
    ray_workers_option,
    scales_option,
)

app = typer.Typer(
    help="Find objects in photos: train a detector on annotated photos (COCO, YOLO, VOC), "
    "measure it, and box, annotate or crop new photos. `vitrina detect list` shows the "
    "detectors that need no training.",
    no_args_is_help=True,
)

Format = AnnotationFormat


def classifier_option() -> Any:
    return typer.Option(
        None,
        "--classifier",
        help="A classification run that names the boxes (two stages: the detector finds, "
        "the classifier names each crop; its classes become the detector's). Train it on "
        "`vitrina data crops` of the annotated photos.",
    )


@app.command("train")
def train_cmd(
    data_dir: Path = typer.Argument(
        ...,
        help="Annotated photos: COCO .json, YOLO .txt or Pascal VOC .xml next to the photos or in "
        "annotations/ (labels/) beside images/; found automatically.",
    ),
    arch: DetectArch = typer.Option(
        "fasterrcnn",
        help="Detector: fasterrcnn (two stages, most accurate), retinanet, fcos (one stage), "
        "ssdlite (fastest).",
    ),
    backbone: str = typer.Option(
        "efficientnet_lite0",
        help="Any convolutional zoo classifier (`vitrina zoo`); its ImageNet weights start "
        "the backbone (efficientnet_lite0's ship with vitrina: offline).",
    ),
    weights: DetectWeights = typer.Option("imagenet", help="Backbone start."),
    input_size: str | None = input_size_option(
        "the network input, multiples of 32; photos of any size are letterboxed into it "
        "(boxes reported in their own pixels). Default: fitted to the training photos, their "
        "median longer side rounded up to a multiple of 32, from 128 to 320 (not enlarged "
        "past their own size).",
    ),
    size: str | None = typer.Option(
        None,
        help="Deprecated: WIDTHxHEIGHT (the opposite of every other size option), read as "
        "before with a warning; use --input-size HEIGHTxWIDTH.",
    ),
    epochs: int = typer.Option(12, help="Epochs (passes over the training photos)."),
    batch_size: int = typer.Option(8, help="Photos per step."),
    lr: float | None = typer.Option(None, help="Learning rate (default 3e-4 adamw, 0.02 sgd)."),
    optimizer: DetectOptimizer = typer.Option("adamw", help="Optimizer."),
    weight_decay: float | None = typer.Option(
        None,
        help="Weight decay of every trained weight: decoupled with adamw (default 0.05), L2 "
        "with sgd (default 1e-4).",
    ),
    drop_path: float = typer.Option(
        0.0,
        help="Stochastic depth: each residual block of a timm backbone skipped in training "
        "with a probability rising to this at the last block (0.1-0.2 regularise a small "
        "set); inference is unchanged.",
    ),
    augment: BoxAugment = typer.Option(
        "light",
        help="Box-aware augmentation: flip = mirrored half of the time; light = flips, colour "
        "jitter, zoom-out; strong adds shifts and rescaling; mosaic is light with half of the "
        "photos replaced by a mosaic of four (products of several photos in one input).",
    ),
    train_scales: str | None = typer.Option(
        None,
        "--train-scales",
        parser=parse_scales,
        metavar="S1,S2,...",
        help="Multi-scale training: each batch at one of these multiples of --input-size "
        "(rounded to multiples of 32), drawn at random: products seen at more sizes than the "
        "photos hold, found better when nearer or further than in training. Default "
        "0.75,1,1.25 with --augment light, strong or mosaic, the input size only with none or flip; "
        "1: off.",
    ),
    freeze: Freeze = typer.Option(
        "stem",
        help="Frozen part: stem (layers before stride 8), lower (up to stride 16: the last "
        "stage, pyramid and heads learn), backbone (only pyramid and heads learn), none. "
        "With lower or backbone and --augment none or flip the frozen features are computed "
        "once: several times faster epochs on a CPU.",
    ),
    precision: DetectPrecision = typer.Option(
        "fp32",
        help="fp32; bf16: autocast (fast only on CPUs with AMX / AVX-512 BF16, and GPUs); "
        "auto: bf16 where a few training steps of this detector measure it faster, else fp32 "
        "(the choice and the timings go to RUN/precision.json).",
    ),
    nms_iou: float | None = typer.Option(
        None,
        help="Overlap (IoU) above which non-maximum suppression keeps only the best of two "
        "boxes of a class. Default: fitted to the training boxes, the lowest of 0.3-0.5 that "
        "at most 1% of them exceed with another of their class (products side by side: 0.3, "
        "duplicates go; a crowd: torchvision's 0.5).",
    ),
    score_temperature: float | None = typer.Option(
        None,
        help="Faster R-CNN: its class logits are divided by this before the softmax that "
        "scores its boxes (below 1: sharper; 1: torchvision's scores). Default: fitted on the "
        "validation photos after training (0.5-1; 0.7 without validation photos).",
    ),
    seed: int = typer.Option(0, help="Seed of the split, initialisation and shuffling."),
    out_dir: Path | None = typer.Option(
        None, "--out", help="Run folder to create (default runs/<data>-<arch>-<backbone>)."
    ),
    val_dir: Path | None = typer.Option(
        None, "--val", help="Annotated validation photos (default: a seeded split of DATA_DIR)."
    ),
    val_fraction: float = typer.Option(
        0.2, help="Share of the photos held out for validation (0: none, keep the last epoch)."
    ),
    patience: int = typer.Option(
        5, help="Stop after this many epochs without a better validation mAP (0: never)."
    ),
    ema: bool = typer.Option(
        False,
        "--ema/--no-ema",
        help="Keep an exponential moving average of the weights while training (timm's "
        "ModelEmaV3, decay warmed up to 0.999); validation, checkpoints and the run are of the "
        "average.",
    ),
    time_budget: float | None = typer.Option(
        None,
        help="Minutes to train: the learning rate follows the clock and the run ends with the "
        "step that passes it, mid-epoch if need be (--epochs stays the most).",
    ),
    fmt: Format | None = typer.Option(
        None,
        "--format",
        help="Annotation format (default: found).",
    ),
    classes: Path | None = typer.Option(
        None, help="Class list, one name a line (default: the data's own)."
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out."),
    workers: int | None = typer.Option(
        None,
        help="Photo decoding processes (default: none on a CPU, where decoding in-process "
        "leaves the detector every core; a few on a GPU).",
    ),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Train a detector on annotated photos; leaves a run folder (weights, vitrina.json,
    metrics.jsonl, plots/curves.png and plots/pr_curves.png).

    Boxes that are outside their photo, of zero size or of a class missing from the list are
    skipped and named; unreadable photos are skipped; the run goes on.

    Examples:

      vitrina detect train shelves/ --arch fasterrcnn --epochs 12

      vitrina detect train shelves/ --arch ssdlite --input-size 320x416 --out runs/shelves-ssd

    One process: under torchrun it stops with one line (vitrina train and train-embedding
    train on several processes).
    """
    from vitrina.detect import DetectTrainConfig, train_detector
    from vitrina.detect.train import size_from_options

    hw, deprecation = size_from_options(input_size, size)  # type: ignore[arg-type]
    if deprecation:
        err.print(f"[yellow]warning:[/] {escape(deprecation)}")
    cfg = DetectTrainConfig(
        data_dir=str(data_dir),
        arch=arch,
        backbone=backbone,
        weights=weights,
        input_size=hw,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        optimizer=optimizer,
        weight_decay=weight_decay,
        drop_path=drop_path,
        augment=augment,
        train_scales=train_scales,  # type: ignore[arg-type]
        freeze=freeze,
        precision=precision,
        nms_iou=nms_iou,
        score_temperature=score_temperature,
        seed=seed,
        out=str(out_dir) if out_dir else None,
        val_dir=str(val_dir) if val_dir else None,
        val_fraction=val_fraction,
        patience=patience,
        ema=ema,
        time_budget=time_budget,
        format=fmt,
        classes=str(classes) if classes else None,
        num_workers=workers,
        device=device,
    )
    res = train_detector(cfg, resume=resume, progress=not as_json)
    if as_json:
        print_json(
            {
                "run_dir": str(res.run_dir),
                "classes": res.classes,
                "metrics": res.metrics,
                "problems": res.bad_files,
            }
        )
        return
    for line in res.bad_files[:20]:
        err.print(f"[yellow]skipped:[/] {escape(line)}")
    if len(res.bad_files) > 20:
        err.print(f"... and {len(res.bad_files) - 20} more (vitrina data inspect lists them all)")
    m = res.metrics
    val = m.get("val")
    if val:
        out.print(
            f"best epoch {res.best_epoch}: validation mAP@[.5:.95] {val['mAP']:.3f}, "
            f"mAP@.5 {val['mAP50']:.3f} ({val['photos']} photos)"
        )
    else:
        out.print(f"last epoch {m.get('epochs_run')}: training loss {m.get('train_loss', 0):.4f}")
    out.print(f"run folder: {res.run_dir}  (plots in {res.run_dir / 'plots'})")
    out.print(f"next: vitrina detect predict {res.run_dir} NEW_PHOTOS --annotate boxed/")


@app.command("evaluate")
def evaluate_cmd(
    detector: str = typer.Argument(..., help="Detection run folder, or a detector name."),
    data_dir: Path = typer.Argument(..., help="Annotated photos (any of the three formats)."),
    out_dir: Path | None = typer.Option(
        None, "--out", help="New folder for metrics.json, pr_curves.png and worst.png."
    ),
    worst: int = typer.Option(12, help="Photos on the worst-photos sheet."),
    fmt: Format | None = typer.Option(None, "--format", help="Annotation format (default: found)."),
    backend: Backend = typer.Option("auto", help=BACKEND_HELP),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    batch_size: int = typer.Option(8, help="Photos per forward pass."),
    workers: int | None = typer.Option(None, help="Photo decoding processes."),
    classifier: Path | None = classifier_option(),
    flip: bool = flip_option(),
    scales: str = scales_option(),  # parsed to a tuple of floats
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as JSON."),
) -> None:
    """COCO mAP@[.5:.95], mAP@.5, per-class AP and recall (pycocotools), with a picture of
    the worst photos (true boxes dashed green, predicted ones in colour, red when wrong).

    Examples:

      vitrina detect evaluate runs/shelves held-out/ --out runs/shelves/eval

      vitrina detect evaluate runs/shelves held-out/ --flip   (each photo also mirrored)

      vitrina detect evaluate runs/shelves held-out/ --flip --scales 0.85,1,1.3
    """
    from vitrina.detect import evaluate_detector, load_detector

    det = load_detector(
        detector,
        backend=backend,
        device=device,
        batch_size=batch_size,
        num_workers=workers,
        classifier=classifier,
        flip=flip,
        scales=scales,  # type: ignore[arg-type]
    )
    with progress_bar("detecting", None, enabled=not as_json) as update:
        done = [0]

        def step(n: int) -> None:
            done[0] += n
            update(done[0])

        ev = evaluate_detector(det, data_dir, out=out_dir, worst=worst, fmt=fmt, on_progress=step)
    if as_json:
        print_json(ev.to_dict())
        return
    m = ev.metrics
    t = Table(
        title=f"{escape(det.describe())} on {escape(str(data_dir))}: {m.photos} photos, {m.boxes} boxes"
    )
    t.add_column("class")
    t.add_column("boxes", justify="right")
    t.add_column("AP@[.5:.95]", justify="right")
    t.add_column("AP@.5", justify="right")
    t.add_column("recall@.5", justify="right")
    for c in m.classes:
        if not m.gt[c]:
            continue
        t.add_row(
            escape(c), str(m.gt[c]), f"{m.ap[c]:.3f}", f"{m.ap50[c]:.3f}", f"{m.recall50[c]:.3f}"
        )
    out.print(t)
    out.print(
        f"mAP@[.5:.95] {m.mAP:.3f}   mAP@.5 {m.mAP50:.3f}   mAP@.75 {m.mAP75:.3f}   recall {m.recall:.3f}"
    )
    for line in ev.failed:
        err.print(f"[yellow]unreadable:[/] {escape(line)}")
    if ev.data.problems:
        err.print(f"{len(ev.data.problems)} annotation problems (vitrina data inspect lists them)")
    for name, path in ev.files.items():
        out.print(f"{name}: {path}")


@app.command("predict")
def predict_cmd(
    detector: str = typer.Argument(
        ..., help="Detection run folder, or a detector name (hog_people, hog_faces, cnn_faces)."
    ),
    photos: list[Path] = typer.Argument(..., help="Photos or folders of photos."),
    out_file: Path | None = typer.Option(
        None, "--out", help="Write the boxes to this .json or .csv file (default: JSON on stdout)."
    ),
    annotate: Path | None = typer.Option(
        None, "--annotate", help="Folder for copies of the photos with their boxes drawn."
    ),
    crops: Path | None = typer.Option(
        None, "--crops", help="Folder for each box as a photo, in CROPS/<label>/."
    ),
    min_score: float | None = typer.Option(
        None, help="Report boxes scoring at least this (default: 0.5 for runs, per detector)."
    ),
    backend: Backend = typer.Option("auto", help=BACKEND_HELP),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    batch_size: int = typer.Option(8, help="Photos per forward pass."),
    workers: int | None = typer.Option(None, help="Photo decoding processes."),
    classifier: Path | None = classifier_option(),
    flip: bool = flip_option(),
    scales: str = scales_option(),  # parsed to a tuple of floats
    ray: str = ray_option(),
    ray_workers: int = ray_workers_option(),
) -> None:
    """Boxes of photos (each photo's own pixels, label, score) as JSON or CSV, with annotated
    copies and crops.

    Examples:

      vitrina detect predict hog_people street/ --annotate boxed/

      vitrina detect predict runs/shelves shelf.jpg --crops crops/ --out boxes.csv

      vitrina detect predict runs/products shelf.jpg --classifier runs/product-names

    On Ray (many machines, or every core of this one): add --ray or --ray ADDRESS (with
    --out, a killed run resumes from OUT.ray-shards/).
    """
    from vitrina.data import expand_image_paths
    from vitrina.detect import load_detector, predict_photos, write_boxes
    from vitrina.errors import refuse_existing

    if out_file is not None:
        refuse_existing(out_file)
    paths = expand_image_paths(photos)
    on_ray = ray_options(ray, ray_workers)
    if on_ray is None:
        det = load_detector(
            detector,
            backend=backend,
            device=device,
            batch_size=batch_size,
            num_workers=workers,
            classifier=classifier,
            flip=flip,
            scales=scales,  # type: ignore[arg-type]
        )
    with progress_bar("detecting", len(paths)) as update:
        done = [0]

        def step(n: int) -> None:
            done[0] += n
            update(done[0])

        if on_ray is None:
            results = predict_photos(
                det, paths, min_score=min_score, annotate=annotate, crops=crops, on_progress=step
            )
        else:
            from vitrina.scale import ray_predict_photos, work_dir_for

            det, results = ray_predict_photos(
                detector,
                paths,
                ray=on_ray,
                min_score=min_score,
                annotate=annotate,
                crops=crops,
                backend=backend,
                device=device,
                batch_size=batch_size,
                classifier=classifier,
                flip=flip,
                scales=scales,  # type: ignore[arg-type]
                work_dir=work_dir_for(out_file) if out_file is not None else None,
                on_progress=lambda d, n: update(d),
            )
        summary, text = write_boxes(
            results, det.classes, out_file, meta={"detector": det.describe()}
        )
    if out_file is None:
        typer.echo(text, nl=False)
    for line in summary.failed:
        err.print(f"[yellow]skipped:[/] {escape(line)}")
    counts = ", ".join(f"{n} {escape(c)}" for c, n in summary.per_class.most_common())
    err.print(
        f"{summary.photos} photos, {summary.boxes} boxes"
        + (f" ({counts})" if counts else "")
        + f" by {escape(det.describe())}"
    )
    if out_file is not None:
        err.print(f"boxes: {out_file}")
    if annotate is not None:
        err.print(f"annotated copies: {summary.annotated} in {annotate}")
    if crops is not None:
        err.print(f"crops: {summary.crops} in {crops}/<label>/")


@app.command("export")
def export_cmd(
    run: Path = typer.Argument(..., help="Detection run folder."),
    out_file: Path = typer.Option(..., "--out", help="The .onnx file to write (must not exist)."),
    images: Path | None = typer.Option(
        None, help="Photos to check the export on (default: the run's training photos)."
    ),
) -> None:
    """Export a detection run to ONNX (one letterboxed photo in, its boxes out), written only
    if ONNX Runtime gives the same boxes as PyTorch on real photos.

    Example: vitrina detect export runs/shelves --out shelves.onnx
    """
    from vitrina.detect.export import export_detector

    r = export_detector(run, out_file, images=images)
    out.print(
        f"wrote {r['file']}: checked on {r['images']} photos, same boxes on "
        f"{r['top1_agreement']:.0%} of them, max score |diff| {r['max_abs_diff']:.2e}"
    )


@app.command("list")
def list_cmd() -> None:
    """Detectors that need no training, and the architectures `detect train` builds."""
    from vitrina.detect import DETECTORS
    from vitrina.models.detection import HEADS

    t = Table(title="detectors that need no training (vitrina detect predict NAME PHOTOS)")
    t.add_column("name")
    t.add_column("finds")
    for name in DETECTORS.names():
        doc = (DETECTORS.get(name).__doc__ or "").strip().splitlines()[0]
        t.add_row(name, doc)
    out.print(t)
    out.print("trainable architectures (vitrina detect train --arch): " + ", ".join(HEADS.names()))


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="detect")


# ---------------------------------------------------------------------------- vitrina data
def convert_cmd(
    data_dir: Path = typer.Argument(..., help="Annotated photos in any of the three formats."),
    out_dir: Path = typer.Argument(..., help="New folder for the converted set."),
    to: Format = typer.Option(..., "--to", help="Target format."),
    fmt: Format | None = typer.Option(None, "--format", help="Source format (default: found)."),
    classes: Path | None = typer.Option(None, help="Class list of the source (default: its own)."),
    link: bool = typer.Option(False, "--link", help="Link the photos instead of copying them."),
) -> None:
    """Convert annotated photos between COCO JSON, YOLO txt and Pascal VOC XML.

    The new folder holds images/ (the photos at the same relative paths) and the annotations
    (annotations.json; labels/ + classes.txt; annotations/ + classes.txt). Boxes that are
    outside their photo, of zero size or of an unknown class are left out and named.

    Example: vitrina data convert shelves-voc/ shelves-yolo/ --to yolo
    """
    from vitrina.data.annotations import convert_annotated

    with progress_bar("converting", None, unit=None) as update:
        res = convert_annotated(
            data_dir,
            out_dir,
            to,
            fmt=fmt,
            classes=str(classes) if classes else None,
            photos="link" if link else "copy",
            on_progress=lambda done, total: update(done, total),
        )
    for p in res.source.problems:
        err.print(f"[yellow]skipped:[/] {escape(p.message)}")
    out.print(
        f"{res.source.format} -> {res.format}: {res.photos} photos, {res.boxes} boxes, "
        f"{len(res.source.classes)} classes in {res.out}"
        + (f" ({len(res.source.problems)} problems, above)" if res.source.problems else "")
    )


def crops_cmd(
    data_dir: Path = typer.Argument(..., help="Annotated photos in any of the three formats."),
    out_dir: Path = typer.Argument(..., help="New folder for OUT/<class>/<photo>-<k>.png."),
    margin: float = typer.Option(
        0.0,
        "--margin",
        help="Widen each box by this fraction of its side on every edge (0.1: a detector's "
        "loose boxes).",
    ),
    min_side: int = typer.Option(8, "--min-side", help="Skip boxes with a side under this (px)."),
    fmt: Format | None = typer.Option(None, "--format", help="Source format (default: found)."),
    classes: Path | None = typer.Option(None, help="Class list of the source (default: its own)."),
) -> None:
    """Cut every annotated box out as a photo in a class folder: OUT/<class>/<photo>-<k>.png.

    The folder is a class-folder tree for part one: train the classifier that names a
    detector's boxes (vitrina train OUT, then vitrina detect predict RUN PHOTOS --classifier
    CLASSIFIER_RUN), or index a catalogue of products. Unreadable photos, boxes outside the
    photo and boxes too small are named, skipped and counted.

    Example: vitrina data crops shelves/ shelf-crops/ --margin 0.1
    """
    from vitrina.data.annotations import crop_annotated

    with progress_bar("cropping", None, unit=None) as update:
        s, res = crop_annotated(
            data_dir,
            out_dir,
            fmt=fmt,
            classes=str(classes) if classes else None,
            margin=margin,
            min_side=min_side,
            on_progress=lambda done, total: update(done, total),
        )
    for p in s.problems:
        err.print(f"[yellow]skipped:[/] {escape(p.message)}")
    for line in res.unreadable:
        err.print(f"[yellow]unreadable:[/] {escape(line)}")
    out.print(
        f"{res.crops} crops of {len(res.per_class)} classes from {len(s.photos)} photos in "
        f"{res.out}"
        + (f"; {res.too_small} boxes under {min_side} px skipped" if res.too_small else "")
    )
    for name, n in res.per_class.items():
        out.print(f"  {escape(name)}: {n}")


def inspect_annotated(data_dir: Path, as_json: bool) -> bool:
    """``vitrina data inspect`` on annotated photos: the detection report. Returns False when
    the folder holds no annotations (the caller shows the class-folder report)."""
    from vitrina.data.annotations import has_annotations, read_annotated

    if not has_annotations(data_dir):
        return False
    with progress_bar("reading", None, enabled=not as_json, unit=None) as update:
        s = read_annotated(data_dir, on_progress=lambda done, total: update(done, total))
    if as_json:
        print_json(s.to_dict())
        return True
    t = Table(
        title=f"{escape(str(data_dir))}: {len(s.photos)} photos, {s.num_boxes} boxes, "
        f"{len(s.classes)} classes ({s.format})"
    )
    t.add_column("class")
    t.add_column("boxes", justify="right")
    t.add_column("photos", justify="right")
    per_photo = s.photos_per_class()
    for name, n in s.boxes_per_class().items():
        t.add_row(escape(name), str(n), str(per_photo[name]))
    out.print(t)
    sizes = s.box_sizes()
    if sizes:
        w, h, rel, g = sizes["width"], sizes["height"], sizes["relative_side"], sizes["coco_groups"]
        out.print(
            f"box size (w x h, px): min {w['min']:.0f}x{h['min']:.0f}, median "
            f"{w['median']:.0f}x{h['median']:.0f}, max {w['max']:.0f}x{h['max']:.0f}; "
            f"side / photo side: median {rel['median']:.2f}"
        )
        out.print(f"COCO size groups: {g['small']} small, {g['medium']} medium, {g['large']} large")
    empty = s.empty_photos()
    out.print(f"photos without boxes: {len(empty)}")
    for p in empty[:10]:
        out.print(f"  {escape(p.rel)}")
    if len(empty) > 10:
        out.print(f"  ... and {len(empty) - 10} more (--json lists them all)")
    counts = s.problem_counts()
    out.print(
        "problems: " + (", ".join(f"{n} {k}" for k, n in counts.items()) if counts else "none")
    )
    for p in s.problems:
        out.print(f"  {escape(p.message)}")
    for note in s.notes:
        err.print(f"[dim]{escape(note)}[/]")
    return True


def register_data(data_app: typer.Typer) -> None:
    """Add ``convert`` and ``crops`` to ``vitrina data``."""
    data_app.command("convert")(convert_cmd)
    data_app.command("crops")(crops_cmd)
