"""``vitrina optimize``: smaller and faster variants of a trained run, each one measured.

For a run folder, writes into ``RUN/variants/`` (see :mod:`vitrina.engine.variants`):

* ``int8``: static int8 calibrated on ``calib`` images (:mod:`vitrina.engine.int8`, run by
  ONNX Runtime);
* ``openvino-int8``: NNCF int8 calibrated on the same images, run by OpenVINO
  (:mod:`vitrina.engine.openvino`; ``variants/openvino-int8.xml`` + ``.bin``);
* ``bf16``: the weights in bfloat16 (computed with bf16 autocast);
* ``pruned``: the channels that cost the most FLOPs and matter least removed, MorphNet's
  way, and the result distilled from the full model (:mod:`vitrina.optimize.pruning`);
  exported to ONNX (``pruned.onnx``, ``pruned-embed.onnx``), with a plot of every layer's
  width before and after (``pruned-widths.png``);

and reports, per variant and for fp32: size on disk, FLOPs and parameters, images/s at
batch 32 (compute only, median), and how well it does on the ``eval`` photos — accuracy and
top-1 agreement with fp32 for a classifier; for an embedding run (``train-embedding``),
retrieval mAP and rank-1 on held-out identities and nearest-neighbour agreement with fp32.
The report is kept in ``variants/report.json``; ``--backend auto`` reads it to decide
whether int8 may be used.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vitrina.errors import VitrinaError
from vitrina.optimize.budget import change, check_max_drop

__all__ = ["VARIANT_NAMES", "VariantResult", "default_variants", "optimize_run"]

VARIANT_NAMES = ("bf16", "int8", "openvino-int8", "pruned")
REPORT_FILE = "report.json"
PLOT_FILE = "variants.png"  # size, speed and accuracy of the variants, side by side
WIDTHS_PLOT = "pruned-widths.png"
#: The FLOP target when neither ``prune_flops`` nor ``prune_latency`` is given.
DEFAULT_PRUNE_FLOPS = 0.5
#: Weight of matching the full model's features between stages while the pruned variant is
#: distilled (see :func:`vitrina.optimize.distill.feature_loss`). Measured on the README's
#: pruning benchmark: -1.7 points against fp32 without it, -1.1 at 1.0, -1.0 at 4.0.
DISTILL_FEATURES = 4.0
#: A pruned classifier is flagged when it loses more accuracy than this against fp32 (and an
#: embedding model when it loses more mAP).
PRUNED_TOLERANCE = 0.01


@dataclass
class VariantResult:
    name: str
    file: str = ""
    size_bytes: int = 0
    images_per_s: float = 0.0
    accuracy: float = 0.0  # classifiers: on the evaluation images
    top1_agreement: float = 1.0  # with fp32: same top class / same nearest neighbour
    speedup: float = 1.0  # images/s against fp32
    gflops: float = 0.0  # per image
    params: int = 0
    mAP: float | None = None  # embedding runs: retrieval on the evaluation identities
    rank1: float | None = None
    status: str = "ok"  # ok | outside tolerance | accuracy -x pts vs fp32 | ...
    notes: dict[str, Any] = field(default_factory=dict)


def default_variants() -> list[str]:
    """int8 (and OpenVINO's int8 where OpenVINO is installed) and pruned everywhere; bf16
    where this CPU has bf16 matrix units (emulated bf16 is several times slower than fp32,
    so measuring it there costs minutes for nothing)."""
    from vitrina.engine import bf16_supported
    from vitrina.engine.openvino import openvino_available

    names = ["int8", *(["openvino-int8"] if openvino_available() else []), "pruned"]
    if bf16_supported(torch.device("cpu")):
        names.insert(0, "bf16")
    return names


def _parse_variants(variants: list[str] | str | None) -> list[str]:
    from vitrina.registry import suggest

    if variants is None:
        return default_variants()
    if isinstance(variants, str):
        variants = [v.strip() for v in variants.split(",") if v.strip()]
    for v in variants:
        if v not in VARIANT_NAMES:
            raise VitrinaError(
                f"unknown variant {v!r}{suggest(v, VARIANT_NAMES)} (choose from {', '.join(VARIANT_NAMES)})"
            )
    if not variants:
        raise VitrinaError(f"no variants given (choose from {', '.join(VARIANT_NAMES)})")
    return list(dict.fromkeys(variants))


def _prune_target(flops: float | None, latency: float | None) -> tuple[float | None, float | None]:
    """The one pruning target, checked before any work starts."""
    if flops is not None and latency is not None:
        raise VitrinaError("give one pruning target: --prune-flops or --prune-latency, not both")
    if flops is None and latency is None:
        flops = DEFAULT_PRUNE_FLOPS
    for option, value in (("--prune-flops", flops), ("--prune-latency", latency)):
        if value is not None and not 0.0 < value < 1.0:
            raise VitrinaError(
                f"{option} is the fraction to remove, between 0 and 1 (0.5: half); got {value}"
            )
    return flops, latency


def _save_bf16(model: torch.nn.Module, path: Path) -> None:
    from safetensors.torch import save as st_save

    from vitrina.io import atomic_write_bytes

    tensors = {
        k: (v.to(torch.bfloat16) if v.is_floating_point() else v)
        .detach()
        .cpu()
        .contiguous()
        .clone()
        for k, v in model.state_dict().items()
    }
    atomic_write_bytes(path, st_save(tensors))


# ---------------------------------------------------------------------------- what a run is
@dataclass
class _Photos:
    """The photos a run is optimized with: to fine-tune on, and to judge by."""

    train: list[Path]
    eval_paths: list[Path]
    eval_labels: list[int]
    eval_where: str


def _image_files(folder: Path) -> list[Path]:
    from vitrina.data import iter_image_files

    paths, _, _ = iter_image_files(folder, recursive=True)
    return sorted(paths)


def _train_folder(run: Path, info: Any, train_dir: str | Path | None) -> Path:
    root = train_dir or info.data.get("root")
    train = Path(root) if root else None
    if train is None or not train.is_dir():
        raise VitrinaError(
            f"{run}: the training photos {train or '(not recorded)'} are not available to "
            f"fine-tune the pruned model on; pass --train DIR"
        )
    return train


def _classifier_photos(
    run: Path, info: Any, eval_dir: str | Path | None, train: Path | None
) -> _Photos:
    from vitrina.data import scan_folder

    if eval_dir is None:
        raise VitrinaError(
            f"{run}: a classifier is judged on labelled photos: pass --eval DIR (class folders)"
        )
    scan = scan_folder(eval_dir, classes=list(info.classes))
    if not scan.samples:
        raise VitrinaError(f"{eval_dir}: no images to evaluate on")
    images = _image_files(train) if train is not None else []
    if train is not None and not images:
        raise VitrinaError(f"{train}: no photos to fine-tune the pruned model on")
    return _Photos(
        images, [s.path for s in scan.samples], [s.label for s in scan.samples], str(eval_dir)
    )


def _embedding_photos(
    run: Path,
    info: Any,
    eval_dir: str | Path | None,
    train_dir: str | Path | None,
    need_train: bool,
) -> _Photos:
    """Training identities to distil on and held-out identities to judge by: ``--eval`` /
    ``--train`` where given, else the run's own split of its data (the identities it held
    out for model selection are the ones it never trained on)."""
    from vitrina.data.identities import scan_identities

    split: tuple[list[Any], list[Any]] | None = None

    def run_split() -> tuple[list[Any], list[Any]]:
        nonlocal split
        if split is None:
            from vitrina.training.embedding import _split_identities

            root = _train_folder(run, info, None)
            images = scan_identities(root).train
            cfg = info.config
            train_ids, val_ids = _split_identities(
                [im.label for im in images],
                float(cfg.get("val_fraction", 0.2)),
                int(cfg.get("seed", 0)),
            )
            split = (
                [im for im in images if im.label in train_ids],
                [im for im in images if im.label in val_ids],
            )
        return split

    if eval_dir is not None:
        held = scan_identities(eval_dir).train
        where = str(eval_dir)
    else:
        held = run_split()[1]
        where = f"the {len({im.label for im in held})} identities {run} held out"
        if not held:
            raise VitrinaError(
                f"{run}: the run held no identities out; pass --eval DIR (identity folders of "
                f"people it was not trained on)"
            )
    train: list[Path] = []
    if need_train:
        if train_dir is not None:
            train = _image_files(_train_folder(run, info, train_dir))
        else:
            train = [im.path for im in run_split()[0]]
        if not train:
            raise VitrinaError(f"{run}: no photos to fine-tune the pruned model on")
    return _Photos(train, [im.path for im in held], [im.label for im in held], where)


# ---------------------------------------------------------------------------- measuring
def _nearest(x: np.ndarray) -> np.ndarray:
    """Each row's nearest other row by cosine similarity (rows L2-normalised)."""
    s = x @ x.T
    np.fill_diagonal(s, -np.inf)
    return s.argmax(1)


def _onnx_timer(output: str, batch: torch.Tensor) -> Callable[[Any], float]:
    """``measure(model)``: median seconds of one ONNX Runtime pass over ``batch`` (the pruned
    backend's runtime). The first model it times is exported once and its session kept:
    ``--prune-latency`` times the full model first and again beside every candidate."""
    from vitrina.engine.onnx import export_onnx, ort_session, run_session
    from vitrina.engine.timing import time_call

    first: list[tuple[Any, Any]] = []  # (model, session) of the first model timed

    def measure(model: Any) -> float:
        if first and first[0][0] is model:
            sess = first[0][1]
        else:
            with tempfile.TemporaryDirectory() as tmp:  # the session holds the model in memory
                path = export_onnx(model, output, Path(tmp) / "trial.onnx")
                sess = ort_session(path, None, torch.device("cpu"))
            if not first:
                first.append((model, sess))
        return time_call(
            lambda: run_session(sess, batch), min_runs=5, min_time=1.0, max_time=10.0
        ).seconds

    return measure


def optimize_run(
    run_dir: str | Path,
    *,
    calib: str | Path,
    eval_dir: str | Path | None = None,
    variants: list[str] | str | None = None,
    prune_flops: float | None = None,
    prune_latency: float | None = None,
    sparsify_epochs: int = 0,
    finetune_epochs: int = 6,
    distill_mixup: bool = False,
    distill_features: float = DISTILL_FEATURES,
    prune_max_drop: float | None = None,
    train_dir: str | Path | None = None,
    batch_size: int = 32,
    num_workers: int | None = None,
    on_stage: Callable[[str], None] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Build the requested variants of ``run_dir`` and measure them against fp32.

    Args:
        calib: images to calibrate int8 on (a folder, searched recursively).
        eval_dir: what to judge by — a classifier: labelled class folders (the run's
            classes); an embedding run: identity folders of people it was not trained on
            (default: the identities the run held out).
        variants: names from :data:`VARIANT_NAMES` (default :func:`default_variants`).
        prune_flops: the fraction of the FLOPs the pruned variant removes (default 0.5).
        prune_latency: instead, the fraction of the time per batch it removes, as measured
            on this machine with ONNX Runtime (the pruned backend's runtime).
        sparsify_epochs: epochs of the FLOP-weighted sparsity fine-tune before removal.
        finetune_epochs: epochs of distillation from the full model after removal.
        distill_mixup: distil on blends of two photos, the same for teacher and student
            (function matching: see :mod:`vitrina.optimize.distill`).
        distill_features: weight of matching the full model's features between stages
            during distillation, besides its answers (0: the answers only).
        prune_max_drop: an accuracy budget for the pruned variant, in points (accuracy x
            100, or mAP x 100 for an embedding run): judged on ``eval_dir`` and on relit,
            shifted and rescaled copies of it, it is built again removing a tenth less
            while the worst drop exceeds the budget (:mod:`vitrina.optimize.budget`).
        train_dir: photos to fine-tune the pruned variant on, no labels needed (default: the
            photos the run was trained on; an embedding run's training identities).
    Returns the report also written to ``RUN/variants/report.json``.
    """
    from vitrina.engine import Embedding, Engine, Logits, default_workers, torch_threads
    from vitrina.engine.int8 import calibration_tensors, quantize_int8
    from vitrina.engine.timing import time_call
    from vitrina.engine.variants import VARIANTS_DIR, variant_file
    from vitrina.io import atomic_write_text
    from vitrina.runs import WEIGHTS_FILE, load_model, read_run

    stage = on_stage or (lambda s: None)
    run = Path(run_dir)
    info = read_run(run)
    names = _parse_variants(variants)
    flops_target, latency_target = _prune_target(prune_flops, prune_latency)
    if not distill_features >= 0:  # also refuses NaN
        raise VitrinaError(
            f"--distill-features is a weight, 0 or more (0: match the answers only), "
            f"got {distill_features}"
        )
    embedding = info.task == "embedding"
    pruning = "pruned" in names
    check_max_drop(prune_max_drop, pruning)
    if embedding:
        photos = _embedding_photos(run, info, eval_dir, train_dir, pruning)
    else:
        train = _train_folder(run, info, train_dir) if pruning else None
        photos = _classifier_photos(run, info, eval_dir, train)
    model = load_model(run)
    cpu = torch.device("cpu")
    workers = default_workers() if num_workers is None else num_workers
    output = "embed" if embedding else "logits"
    if "int8" in names or "openvino-int8" in names:
        calib_batch, calib_used = calibration_tensors(calib, model)
    out_dir = run / VARIANTS_DIR
    out_dir.mkdir(exist_ok=True)
    from vitrina.optimize.pruning import count_flops

    full_gflops = count_flops(model) / 1e9
    n_params = sum(p.numel() for p in model.parameters())
    results: dict[str, VariantResult] = {
        "fp32": VariantResult(
            "fp32",
            str(run / WEIGHTS_FILE),
            (run / WEIGHTS_FILE).stat().st_size,
            gflops=full_gflops,
            params=n_params,
        )
    }

    # ------------------------------------------------------------------ build the variants
    for name in names:
        if name == "int8":
            stage(f"int8: calibrating on {len(calib_batch)} images from {calib}")
            path = quantize_int8(
                model, calib_batch, variant_file(run, "int8", output), output=output
            )
            results[name] = VariantResult(name, str(path), path.stat().st_size)
            results[name].notes["calibration_images"] = len(calib_used)
        elif name == "openvino-int8":
            from vitrina.engine.openvino import quantize_openvino

            stage(f"openvino-int8: calibrating on {len(calib_batch)} images from {calib}")
            path = quantize_openvino(
                model, calib_batch, variant_file(run, name, output, suffix=".xml"), output=output
            )
            size = path.stat().st_size + path.with_suffix(".bin").stat().st_size
            results[name] = VariantResult(name, str(path), size)
            results[name].notes["calibration_images"] = len(calib_used)
        elif name == "bf16":
            path = variant_file(run, "bf16", suffix=".safetensors")
            _save_bf16(model, path)
            results[name] = VariantResult(name, str(path), path.stat().st_size)
        elif name == "pruned":

            def build(share: float | None) -> VariantResult:
                return _build_pruned(
                    run, model, photos, output,
                    share if latency_target is None else None,
                    share if latency_target is not None else None,
                    sparsify_epochs, finetune_epochs, distill_mixup, distill_features,
                    batch_size, workers, stage,
                )  # fmt: skip

            first = flops_target if latency_target is None else latency_target
            if prune_max_drop is None:
                results[name] = build(first)
            else:
                results[name] = _pruned_within(
                    build, first, prune_max_drop, model, photos, embedding, batch_size, stage
                )
        if name != "pruned":
            results[name].gflops, results[name].params = full_gflops, n_params

    # ------------------------------------------------------------------ measure
    stage(f"measuring on {len(photos.eval_paths)} images from {photos.eval_where}")
    # One decode per image: each batch is prepared once and run by every variant's engine.
    task: Any = Embedding(normalize=True) if embedding else Logits(top_k=1)
    engines = {"fp32": Engine(model, backend="eager", device=cpu, batch_size=batch_size)}
    for name in names:
        engines[name] = Engine(model, backend=name, device=cpu, batch_size=batch_size)
    reader = Engine(model, backend="eager", device=cpu, batch_size=batch_size, num_workers=workers)
    answers: dict[str, list[Any]] = {n: [] for n in engines}
    labels: list[int] = []
    first: list[Any] = []
    done, total = 0, len(photos.eval_paths)
    with torch_threads(workers):
        for batch in reader.prepared_batches(task, photos.eval_paths):
            done += len(batch)
            if batch.prepared:
                if not first:
                    first = batch.prepared
                labels += [photos.eval_labels[i] for i in batch.indices]
                for n, eng in engines.items():
                    got = eng.run_prepared(task, batch.prepared)
                    answers[n] += got if embedding else [s.best[0] for s in got]
            if on_progress:
                on_progress(done, total)
    if not labels:
        raise VitrinaError(f"{photos.eval_where}: no readable image to evaluate on")
    if embedding:
        _judge_embeddings(results, answers, labels)
    else:
        y = torch.tensor(labels)
        ref = torch.tensor(answers["fp32"])
        for n, p in answers.items():
            pt = torch.tensor(p)
            results[n].accuracy = float((pt == y).float().mean())
            results[n].top1_agreement = float((pt == ref).float().mean())
    # Throughput: a batch of real images, median of repeated runs.
    timed = (first * ((batch_size + len(first) - 1) // len(first)))[:batch_size]
    stage(f"timing each variant at batch {len(timed)}")
    if pruning:  # the pruned model runs on ONNX Runtime: time the full one there too
        engines["fp32-onnx"] = Engine(model, backend="onnx", device=cpu, batch_size=batch_size)
    speeds: dict[str, float] = {}
    for n, eng in engines.items():
        t = time_call(
            lambda e=eng: e.run_prepared(task, timed), min_runs=3, min_time=1.0, max_time=20.0
        )
        speeds[n] = t.per_second(len(timed))
        if n in results:
            results[n].images_per_s = speeds[n]
            results[n].notes["timed_runs"] = t.runs
    from vitrina.engine import TOLERANCES

    base = results["fp32"].images_per_s
    for n, r in results.items():
        r.speedup = r.images_per_s / base if base else 0.0
        if n in TOLERANCES and r.top1_agreement < TOLERANCES[n].top1:
            r.status = "outside tolerance"
    if pruning:
        r = results["pruned"]
        r.notes["fp32_onnx_images_per_s"] = speeds["fp32-onnx"]
        r.notes["speedup_vs_fp32_onnx"] = r.images_per_s / speeds["fp32-onnx"]
        # A different model: judged by what it answers, not by a tolerance around fp32.
        search = r.notes.get("budget_search")
        if search is not None:  # the user's budget, judged on the photos and their shifts
            if not search["held"]:
                last = search["tried"][-1]
                worst = last["worst"]
                r.status = f"over budget: {worst} {change(last['drops'][worst])} pts"
        elif embedding:
            drop = (results["fp32"].mAP or 0.0) - (r.mAP or 0.0)
            if drop > PRUNED_TOLERANCE:
                r.status = f"mAP {-drop * 100:+.1f} pts vs fp32"
        else:
            drop = results["fp32"].accuracy - r.accuracy
            if drop > PRUNED_TOLERANCE:
                r.status = f"accuracy {-drop * 100:+.1f} pts vs fp32"
    if "bf16" in names and "bf16" in results:
        from vitrina.engine import bf16_supported

        if not bf16_supported(cpu):
            results["bf16"].notes["warning"] = "no bf16 matrix units on this CPU: emulated"
    report = {
        "run": str(run.resolve()),
        "task": info.task,
        "checkpoint_sha256": info.checkpoint_sha256,
        "calib": str(calib),
        "eval": photos.eval_where,
        "eval_images": len(labels),
        "batch_size": len(timed),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "variants": {n: asdict(r) for n, r in results.items()},
    }
    from vitrina.report.pictures import plot_variants

    report["plot"] = str(plot_variants(report, out_dir / PLOT_FILE))
    atomic_write_text(out_dir / REPORT_FILE, json.dumps(report, indent=2) + "\n")
    return report


def _judge_embeddings(
    results: dict[str, VariantResult], vectors: dict[str, list[Any]], labels: list[int]
) -> None:
    """mAP and rank-1 (every image queries the others) and nearest-neighbour agreement."""
    ref = _nearest(np.stack(vectors["fp32"]).astype(np.float32))
    for n, vs in vectors.items():
        x, scores = _retrieval(vs, labels)
        results[n].mAP, results[n].rank1 = scores["val_mAP"], scores["val_rank1"]
        results[n].top1_agreement = float((_nearest(x) == ref).mean())


def _retrieval(vectors: list[Any], labels: list[int]) -> tuple[np.ndarray, dict[str, float]]:
    """(the vectors as one float32 array, mAP and rank-1 with every image querying the
    others): how an embedding variant is judged."""
    from vitrina.evaluate.retrieval import loo_retrieval

    x = np.stack(vectors).astype(np.float32)
    return x, loo_retrieval(x, np.asarray(labels))


def _pruned_within(
    build: Callable[[float], VariantResult],
    first: float,
    max_drop: float,
    model: Any,
    photos: _Photos,
    embedding: bool,
    batch_size: int,
    stage: Callable[[str], None],
) -> VariantResult:
    """The pruned variant removing as much as ``max_drop`` allows, from ``first`` down
    (:func:`vitrina.optimize.budget.prune_within`), with the search in its notes."""
    from vitrina.engine import Embedding, Logits
    from vitrina.optimize.budget import Judge, prune_within

    if embedding:
        task: Any = Embedding(normalize=True)
        answer: Callable[[list[Any]], list[Any]] = list

        def score(x: list[Any], y: list[int]) -> float:
            return float(_retrieval(x, y)[1]["val_mAP"])
    else:
        task = Logits(top_k=1)

        def answer(got: list[Any]) -> list[Any]:
            return [s.best[0] for s in got]

        def score(x: list[Any], y: list[int]) -> float:
            return float(np.mean(np.asarray(x) == np.asarray(y)))

    judge = Judge(
        model, task, photos.eval_paths, photos.eval_labels, score, answer, batch_size, stage
    )
    result, tried = prune_within(build, judge, first, max_drop, stage)
    result.notes["budget_search"] = {
        "max_drop": max_drop,
        "tried": [j.to_dict() for j in tried],
        "held": tried[-1].held,
        "removed": tried[-1].target,
    }
    return result


def _build_pruned(
    run: Path,
    model: Any,
    photos: _Photos,
    output: str,
    flops: float | None,
    latency: float | None,
    sparsify_epochs: int,
    finetune_epochs: int,
    mixup: bool,
    feature_weight: float,
    batch_size: int,
    workers: int,
    stage: Callable[[str], None],
) -> VariantResult:
    from vitrina.engine.onnx import export_onnx
    from vitrina.engine.variants import variant_file
    from vitrina.optimize.pruning import prune_model
    from vitrina.report.widths import plot_layer_widths

    measure = None
    if latency is not None:
        from vitrina.engine.engine import batch_inputs
        from vitrina.engine.tasks import Logits

        sample = photos.train[:: max(1, len(photos.train) // batch_size)][:batch_size]
        batch, _ = batch_inputs(Logits(), model.preprocess, sample)
        measure = _onnx_timer(output, batch)
    augment = None
    if output == "embed":
        from vitrina.data.transforms import reid_train_transform

        augment = reid_train_transform(model.preprocess, "reid")
    result = prune_model(
        model,
        photos.train,
        flops=flops,
        latency=latency,
        measure=measure,
        sparsify_epochs=sparsify_epochs,
        finetune_epochs=finetune_epochs,
        mixup=mixup,
        feature_weight=feature_weight,
        batch_size=batch_size,
        augment=augment,
        num_workers=workers,
        on_stage=stage,
        on_epoch=lambda phase, e, r: stage(
            f"pruned: {phase} epoch {e} loss {r.get('train_loss', 0):.4f}"
            + (f", alive {r['alive_flops'] / 1e9:.3f} GFLOPs" if "alive_flops" in r else "")
        ),
    )
    pruned = result.model
    path = export_onnx(pruned, "logits", variant_file(run, "pruned"))
    size = path.stat().st_size
    # The embedding keeps its width, so the pruned model also serves `embed` (index, search).
    embed_path = export_onnx(pruned, "embed", variant_file(run, "pruned", "embed"))
    files = [str(path), str(embed_path)]
    if output == "embed":
        path, size = embed_path, embed_path.stat().st_size
    plot = plot_layer_widths(
        [w.name for w in result.widths],
        [w.before for w in result.widths],
        [w.after for w in result.widths],
        run / "variants" / WIDTHS_PLOT,
        title=(
            f"{model.arch}: output channels per layer, {result.flops_before / 1e9:.2f} -> "
            f"{result.flops_after / 1e9:.2f} GFLOPs ({result.flops_after / result.flops_before:.0%})"
        ),
    )
    r = VariantResult(
        "pruned",
        str(path),
        size,
        gflops=result.flops_after / 1e9,
        params=result.params_after,
    )
    r.notes.update(result.notes())
    r.notes["files"] = files
    r.notes["widths_plot"] = str(plot)
    r.notes["budget"] = {
        "photos": len(photos.train),
        "sparsify_epochs": sparsify_epochs,
        "finetune_epochs": finetune_epochs,
        "mixup": mixup,
        "feature_weight": feature_weight,
        "batch_size": batch_size,
    }
    return r
