"""``vitrina optimize``: smaller and faster variants of a trained run, each one measured.

For a run folder, writes into ``RUN/variants/`` (see :mod:`vitrina.engine.variants`):

* ``int8``: static int8 calibrated on ``calib`` images (:mod:`vitrina.engine.int8`);
* ``bf16``: the weights in bfloat16 (computed with bf16 autocast);
* ``pruned``: a fraction of the channels removed, fine-tuned briefly, exported to ONNX;

and reports, per variant and for fp32: size on disk, images/s at batch 32 (compute only,
median), accuracy on the ``eval`` folder and top-1 agreement with fp32. The report is kept in
``variants/report.json``; ``--backend auto`` reads it to decide whether int8 may be used.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from vitrina.errors import VitrinaError

__all__ = ["VARIANT_NAMES", "VariantResult", "default_variants", "optimize_run"]

VARIANT_NAMES = ("bf16", "int8", "pruned")
REPORT_FILE = "report.json"


@dataclass
class VariantResult:
    name: str
    file: str = ""
    size_bytes: int = 0
    images_per_s: float = 0.0
    accuracy: float = 0.0
    top1_agreement: float = 1.0  # with fp32, on the evaluation images
    speedup: float = 1.0  # images/s against fp32
    status: str = "ok"  # ok | outside tolerance | skipped: why | failed: why
    notes: dict[str, Any] = field(default_factory=dict)


def default_variants() -> list[str]:
    """int8 and pruned everywhere; bf16 where this CPU has bf16 matrix units (emulated bf16
    is several times slower than fp32, so measuring it there costs minutes for nothing)."""
    from vitrina.engine import bf16_supported

    names = ["int8", "pruned"]
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


def optimize_run(
    run_dir: str | Path,
    *,
    calib: str | Path,
    eval_dir: str | Path,
    variants: list[str] | str | None = None,
    prune: float = 0.3,
    finetune_epochs: int = 2,
    train_dir: str | Path | None = None,
    batch_size: int = 32,
    num_workers: int | None = None,
    on_stage: Callable[[str], None] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Build the requested variants of ``run_dir`` and measure them against fp32.

    Args:
        calib: images to calibrate int8 on (a folder, searched recursively).
        eval_dir: labelled class folders (the run's classes) to measure accuracy on.
        variants: names from :data:`VARIANT_NAMES` (default :func:`default_variants`).
        prune: fraction of channels the pruned variant removes.
        finetune_epochs: epochs of fine-tuning after pruning, on ``train_dir`` (default: the
            folder the run was trained on).
    Returns the report also written to ``RUN/variants/report.json``.
    """
    from vitrina.data import scan_folder
    from vitrina.engine import Engine, Logits, default_workers, torch_threads
    from vitrina.engine.int8 import calibration_tensors, quantize_int8
    from vitrina.engine.onnx import export_onnx
    from vitrina.engine.timing import time_call
    from vitrina.engine.variants import VARIANTS_DIR, variant_file
    from vitrina.io import atomic_write_text
    from vitrina.optimize.pruning import finetune, prune_channels
    from vitrina.runs import WEIGHTS_FILE, load_model, read_run

    stage = on_stage or (lambda s: None)
    run = Path(run_dir)
    info = read_run(run)
    names = _parse_variants(variants)
    model = load_model(run)
    cpu = torch.device("cpu")
    eval_scan = scan_folder(eval_dir, classes=list(info.classes))
    if not eval_scan.samples:
        raise VitrinaError(f"{eval_dir}: no images to evaluate on")
    if "int8" in names:
        calib_batch, calib_used = calibration_tensors(calib, model)
    out_dir = run / VARIANTS_DIR
    out_dir.mkdir(exist_ok=True)
    results: dict[str, VariantResult] = {
        "fp32": VariantResult("fp32", str(run / WEIGHTS_FILE), (run / WEIGHTS_FILE).stat().st_size)
    }

    # ------------------------------------------------------------------ build the variants
    pruned_model = None
    for name in names:
        if name == "int8":
            stage(f"int8: calibrating on {len(calib_batch)} images from {calib}")
            path = quantize_int8(model, calib_batch, variant_file(run, "int8"))
            results[name] = VariantResult(name, str(path), path.stat().st_size)
            results[name].notes["calibration_images"] = len(calib_used)
        elif name == "bf16":
            path = variant_file(run, "bf16", suffix=".safetensors")
            _save_bf16(model, path)
            results[name] = VariantResult(name, str(path), path.stat().st_size)
        elif name == "pruned":
            train_root = train_dir or info.data.get("root")
            train = Path(train_root) if train_root else None
            if finetune_epochs > 0 and (train is None or not train.is_dir()):
                raise VitrinaError(
                    f"{run}: the training folder {train or '(not recorded)'} is not available "
                    f"to fine-tune the pruned model; pass --train DIR (or --finetune-epochs 0)"
                )
            stage(f"pruned: removing {prune:.0%} of the channels")
            pruned_model = copy.deepcopy(model)
            stats = prune_channels(pruned_model, prune)
            history: list[dict[str, Any]] = []
            if finetune_epochs > 0:
                stage(f"pruned: fine-tuning {finetune_epochs} epochs on {train}")
                history = finetune(
                    pruned_model,
                    train,
                    list(info.classes),
                    epochs=finetune_epochs,
                    batch_size=batch_size,
                    num_workers=num_workers,
                    on_epoch=lambda e, r: stage(
                        f"pruned: epoch {e}/{finetune_epochs} loss {r.get('train_loss', 0):.4f}"
                    ),
                )
            path = export_onnx(pruned_model, "logits", variant_file(run, "pruned"))
            results[name] = VariantResult(name, str(path), path.stat().st_size)
            results[name].notes.update(stats)
            results[name].notes["finetune"] = [
                {k: v for k, v in r.items() if isinstance(v, (int, float))} for r in history
            ]

    # ------------------------------------------------------------------ measure
    stage(f"measuring on {len(eval_scan.samples)} images from {eval_dir}")
    # One decode per image: each batch is prepared once and run by every variant's engine.
    task = Logits(top_k=1)
    workers = default_workers() if num_workers is None else num_workers
    engines = {"fp32": Engine(model, backend="eager", device=cpu, batch_size=batch_size)}
    for name in names:
        engines[name] = Engine(model, backend=name, device=cpu, batch_size=batch_size)
    reader = Engine(model, backend="eager", device=cpu, batch_size=batch_size, num_workers=workers)
    preds: dict[str, list[int]] = {n: [] for n in engines}
    labels: list[int] = []
    first: list[Any] = []
    done, total = 0, len(eval_scan.samples)
    with torch_threads(workers):
        paths = [s.path for s in eval_scan.samples]
        for batch in reader.prepared_batches(task, paths):
            done += len(batch)
            if batch.prepared:
                if not first:
                    first = batch.prepared
                labels += [eval_scan.samples[i].label for i in batch.indices]
                for n, eng in engines.items():
                    preds[n] += [s.best[0] for s in eng.run_prepared(task, batch.prepared)]
            if on_progress:
                on_progress(done, total)
    if not labels:
        raise VitrinaError(f"{eval_dir}: no readable image to evaluate on")
    y = torch.tensor(labels)
    ref = torch.tensor(preds["fp32"])
    for n, p in preds.items():
        pt = torch.tensor(p)
        results[n].accuracy = float((pt == y).float().mean())
        results[n].top1_agreement = float((pt == ref).float().mean())
    # Throughput: a batch of real images, median of repeated runs.
    timed = (first * ((batch_size + len(first) - 1) // len(first)))[:batch_size]
    stage(f"timing each variant at batch {len(timed)}")
    for n, eng in engines.items():
        t = time_call(
            lambda e=eng: e.run_prepared(task, timed), min_runs=3, min_time=1.0, max_time=20.0
        )
        results[n].images_per_s = t.per_second(len(timed))
        results[n].notes["timed_runs"] = t.runs
    from vitrina.engine import TOLERANCES

    base = results["fp32"].images_per_s
    for n, r in results.items():
        r.speedup = r.images_per_s / base if base else 0.0
        if n in TOLERANCES and r.top1_agreement < TOLERANCES[n].top1:
            r.status = "outside tolerance"
        drop = results["fp32"].accuracy - r.accuracy
        if n == "pruned" and drop > 0.02:  # a different model: judged by its accuracy
            r.status = f"accuracy {-drop * 100:+.1f} pts vs fp32"
    if "bf16" in names and "bf16" in results:
        from vitrina.engine import bf16_supported

        if not bf16_supported(cpu):
            results["bf16"].notes["warning"] = "no bf16 matrix units on this CPU: emulated"
    report = {
        "run": str(run.resolve()),
        "checkpoint_sha256": info.checkpoint_sha256,
        "calib": str(calib),
        "eval": str(eval_dir),
        "eval_images": len(y),
        "batch_size": len(timed),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "variants": {n: asdict(r) for n, r in results.items()},
    }
    atomic_write_text(out_dir / REPORT_FILE, json.dumps(report, indent=2) + "\n")
    return report
