"""Fit a classic model (HOG + SVM, SIFT bag of words + SVM) and leave a run folder behind.

The features are the model's own (:mod:`vitrina.models.classic`), computed through the engine
like any network's outputs (decode workers, batches, bad items reported by name): first the
SIFT descriptors of the training photos when the model needs a visual vocabulary (k-means),
then every photo's descriptor (``embed``). scikit-learn fits the linear SVM (``LinearSVC``):
the regularisation ``C`` is chosen by stratified cross-validation on the training photos, and
a temperature is fitted on the out-of-fold decision values, so the softmax of the head gives
honest probabilities (what ``sort``'s unsure bin needs) without changing any decision. The
fitted arrays are copied into the model's tensors and the run folder is written like a CNN
run's (``model.safetensors`` + ``vitrina.json``, no pickle), with the same metrics.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from vitrina.data import Sample
from vitrina.engine import Embedding, Engine, Task
from vitrina.errors import DataError
from vitrina.evaluate import classification_report
from vitrina.models.classic import ClassicModel
from vitrina.report import plot_confusion
from vitrina.runs import RunInfo, save_run
from vitrina.training.config import TrainConfig
from vitrina.training.result import TrainResult, data_record

__all__ = ["C_GRID", "LocalDescriptors", "fit_classic", "fit_linear_svm"]

#: The SVM regularisation values cross-validation chooses from.
C_GRID = (0.001, 0.01, 0.1, 1.0, 10.0)
_CV_FOLDS = 3


@dataclass(frozen=True)
class LocalDescriptors(Task):
    """The engine task giving each photo's local descriptors (``(n, D)`` float32, ``n`` may
    be 0): the output ``"local_descriptors"`` of a bag-of-words model."""

    name: ClassVar[str] = "local-descriptors"
    output: ClassVar[str] = "local_descriptors"

    def finish(self, outputs: Any, counts: Sequence[int], metas: Sequence[Any]) -> list[Any]:
        out, start = [], 0
        for n in counts:
            out.append(np.asarray(outputs[start].numpy(), np.float32) if n else None)
            start += n
        return out


@dataclass
class SvmFit:
    """A fitted linear SVM: ``coef`` ``(K, D)`` (one row when binary), ``intercept``, the
    chosen ``C``, its cross-validated accuracy, and the calibration ``temperature``."""

    coef: np.ndarray
    intercept: np.ndarray
    C: float
    cv_accuracy: float | None
    temperature: float
    train_accuracy: float


def _logits(decision: np.ndarray) -> np.ndarray:
    """scikit-learn decision values -> the head's logits (binary d -> (-d/2, d/2))."""
    d = np.asarray(decision, np.float64)
    if d.ndim == 1:
        return np.stack([-d / 2, d / 2], axis=1)
    return d


def _nll(logits: np.ndarray, y: np.ndarray, t: float) -> float:
    z = logits * t
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(y)), y].mean())


def _temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The scale of the logits minimising the negative log-likelihood (temperature scaling,
    Guo et al. 2017), searched on log scale in [0.01, 100]."""
    from scipy.optimize import minimize_scalar

    res = minimize_scalar(
        lambda s: _nll(logits, y, math.exp(s)),
        bounds=(math.log(0.01), math.log(100.0)),
        method="bounded",
    )
    return float(math.exp(res.x))


def fit_linear_svm(x: np.ndarray, y: np.ndarray, *, seed: int = 0) -> SvmFit:
    """``LinearSVC`` on ``(x, y)`` with ``C`` from :data:`C_GRID` by stratified
    cross-validation (when every class has at least 2 examples) and a temperature fitted on
    the out-of-fold decision values (1.0 without cross-validation)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_val_predict
    from sklearn.svm import LinearSVC

    def svm(c: float) -> LinearSVC:
        return LinearSVC(C=c, dual="auto", max_iter=10_000, random_state=seed)

    folds = min(_CV_FOLDS, int(np.bincount(y).min()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        if folds >= 2:
            cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
            grid = GridSearchCV(svm(1.0), {"C": list(C_GRID)}, cv=cv, n_jobs=1).fit(x, y)
            c, cv_acc = float(grid.best_params_["C"]), float(grid.best_score_)
            oof = cross_val_predict(svm(c), x, y, cv=cv, method="decision_function")
            temperature = _temperature(_logits(oof), y)
        else:
            c, cv_acc, temperature = 1.0, None, 1.0
        final = svm(c).fit(x, y)
    return SvmFit(
        coef=final.coef_,
        intercept=final.intercept_,
        C=c,
        cv_accuracy=cv_acc,
        temperature=temperature,
        train_accuracy=float((final.predict(x) == y).mean()),
    )


def _bar(enabled: bool, total: int, what: str) -> tuple[Callable[[int], None], Callable[[], None]]:
    """A transient rich progress bar on stderr (nothing when not a terminal)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    if not enabled or not console.is_terminal or not total:
        return (lambda n: None), (lambda: None)
    progress = Progress(
        TextColumn(f"[bold]{what}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )
    task = progress.add_task(what, total=total)
    progress.start()
    return (lambda n: progress.update(task, advance=n)), progress.stop


def _describe(
    engine: Engine, task: Task, samples: list[Sample], progress: bool, what: str
) -> tuple[list[Any], list[Sample], list[str]]:
    """The task's value for each readable sample: (values, their samples, error lines)."""
    step, stop = _bar(progress, len(samples), what)
    values, done, errors = [], [], []
    try:
        for r in engine.run(task, [s.path for s in samples], on_progress=step):
            if r.ok:
                values.append(r.value)
                done.append(samples[r.index])
            else:
                errors.append(r.error)
    finally:
        stop()
    return values, done, errors


def fit_classic(
    cfg: TrainConfig,
    model: ClassicModel,
    data_root: Path,
    scan: Any,
    train_samples: list[Sample],
    val_samples: list[Sample],
    out: Path,
    *,
    progress: bool = True,
) -> Any:
    """Fit ``model`` on the training photos, measure it on the validation photos, write the
    run folder; returns a :class:`vitrina.training.TrainResult`. Photos that cannot be read
    or described are reported by name (printed as they are found when ``progress``) and
    left out."""
    from rich.console import Console

    console = Console(stderr=True)
    t0 = time.perf_counter()
    engine = Engine(
        model, backend="eager", device="cpu", batch_size=32, num_workers=cfg.num_workers
    )
    bad: dict[str, str] = {}

    def report(errors: list[str]) -> None:
        for e in errors:
            if e not in bad:
                bad[e] = e
                if progress:
                    console.print(f"[yellow]skipped[/] {e}", highlight=False)

    fit_info: dict[str, Any] = {"library": "scikit-learn LinearSVC", "features": model.library}
    t_feat = time.perf_counter()
    if hasattr(model.net, "fit_vocabulary"):
        # Descriptors once: the vocabulary is fitted on them, then they become histograms.
        descs, described, errors = _describe(
            engine, LocalDescriptors(), train_samples, progress, "SIFT descriptors"
        )
        report(errors)
        with _one_thread():
            used = model.net.fit_vocabulary(descs, seed=cfg.seed)
        fit_info["vocabulary"] = {"words": model.net.words, "descriptors": used}
        rows, labels, errors = [], [], []
        for sample, d in zip(described, descs, strict=True):
            h = model.net.histogram(d)
            if h is None:
                errors.append(f"{sample.path}: {model.nonfinite_reason}")
            else:
                rows.append(h)
                labels.append(sample.label)
        report(errors)
    else:
        rows, described, errors = _describe(
            engine, Embedding(normalize=False), train_samples, progress, "features"
        )
        labels = [sample.label for sample in described]
        report(errors)
    feat_s = time.perf_counter() - t_feat
    y = np.asarray(labels, dtype=np.int64)
    present = sorted(set(labels))
    if len(present) < 2:
        raise DataError(
            f"{data_root}: fewer than 2 classes have a photo the classic features can "
            f"describe ({len(bad)} photos skipped)"
        )
    x = np.stack(rows).astype(np.float64)
    # Fit on the classes present; a class with no describable photo keeps a zero row.
    remap = {c: i for i, c in enumerate(present)}
    with _one_thread():
        svm = fit_linear_svm(x, np.asarray([remap[v] for v in y]), seed=cfg.seed)
    coef, intercept = _logits_rows(svm, len(present))
    full_w = np.zeros((model.num_classes, model.num_features))
    full_b = np.full(model.num_classes, -1e4 if len(present) < model.num_classes else 0.0)
    full_w[present], full_b[present] = coef, intercept
    model.set_linear_head(full_w, full_b, temperature=svm.temperature)
    fit_s = time.perf_counter() - t0

    record: dict[str, Any] = {
        "epoch": 1,
        "train_accuracy": svm.train_accuracy,
        "images_per_s": len(rows) / max(feat_s, 1e-9),
        "svm_C": svm.C,
        "cv_accuracy": svm.cv_accuracy,
        "temperature": svm.temperature,
        "fit_seconds": fit_s,
    }
    head = model.head.double()
    with torch.no_grad():
        train_logits = head(torch.from_numpy(x))
    record["train_loss"] = float(
        torch.nn.functional.cross_entropy(train_logits, torch.from_numpy(y))
    )
    metrics: dict[str, Any] = {}
    report_val = None
    if val_samples:
        vrows, vdone, errors = _describe(
            engine, Embedding(normalize=False), val_samples, progress, "validation features"
        )
        vlabels = [sample.label for sample in vdone]
        report(errors)
        if vrows:
            with torch.no_grad():
                logits = head(torch.from_numpy(np.stack(vrows).astype(np.float64)))
            yv = torch.tensor(vlabels)
            probs = logits.softmax(1)
            record["val_loss"] = float(torch.nn.functional.cross_entropy(logits, yv))
            record["val_accuracy"] = float((probs.argmax(1) == yv).double().mean())
            report_val = classification_report(yv.numpy(), probs.numpy(), scan.classes, ks=(1,))
    model.head.float()
    info = RunInfo(
        arch=model.arch,
        classes=list(scan.classes),
        preprocess=model.preprocess,
        weights_origin="fitted",
        data=data_record(data_root, scan, train_samples, val_samples),
        config={**cfg.to_dict(), "classic": model.settings(), "fit": fit_info},
    )
    metrics = {"best_epoch": 1, **record}
    if report_val is not None:
        plot_confusion(
            report_val.confusion,
            scan.classes,
            out / "plots" / "confusion.png",
            title=f"validation confusion (accuracy {report_val.accuracy:.3f})",
        )
        metrics["val_per_class_f1"] = dict(zip(scan.classes, report_val.f1, strict=True))
    metrics["epochs_run"] = 1
    metrics["unreadable_files"] = len(bad)
    info.metrics = metrics
    model.weights_origin = "fitted"
    save_run(out, model.cpu(), info)
    with open(out / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({**record, "best": True}) + "\n")
    return TrainResult(
        run_dir=out,
        classes=list(scan.classes),
        best_epoch=1,
        metrics=metrics,
        history=[record],
        bad_files=sorted(bad.values()),
    )


def _one_thread() -> Any:
    """scikit-learn's native thread pools limited to one thread: k-means on 27k descriptors
    took 9 s on one thread and 51 s on two of a busy 2-core machine (threads spinning
    against other work, as torch's do; see ``vitrina.engine.torch_threads``)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1)


def _logits_rows(svm: SvmFit, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """The SVM as one row per class (binary: (-w/2, w/2))."""
    w, b = np.asarray(svm.coef, np.float64), np.asarray(svm.intercept, np.float64)
    if len(w) == 1 and classes == 2:
        return np.concatenate([-w / 2, w / 2]), np.concatenate([-b / 2, b / 2])
    return w, b
