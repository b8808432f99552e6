"""Classification metrics from labels and probabilities. Computes; never prints or plots."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ClassificationReport", "classification_report"]


@dataclass
class ClassificationReport:
    classes: list[str]
    n: int
    accuracy: float
    top_k: dict[int, float]
    precision: list[float]
    recall: list[float]
    f1: list[float]
    support: list[int]
    confusion: np.ndarray  # (C, C) rows true, columns predicted
    unreadable: list[str] = field(default_factory=list)
    # (path, true class, predicted class, confidence) of every wrong answer, when the caller
    # knows the paths (Classifier.evaluate does): the pictures' "most confident mistakes"
    mistakes: list[tuple[str, int, int, float]] = field(default_factory=list)
    pictures: dict[str, Path] = field(default_factory=dict)  # what evaluate(out=...) drew

    @property
    def macro_f1(self) -> float:
        present = [f for f, s in zip(self.f1, self.support, strict=True) if s > 0]
        return float(np.mean(present)) if present else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "accuracy": self.accuracy,
            "top_k": {str(k): v for k, v in self.top_k.items()},
            "macro_f1": self.macro_f1,
            "per_class": {
                c: {"precision": p, "recall": r, "f1": f, "support": s}
                for c, p, r, f, s in zip(
                    self.classes, self.precision, self.recall, self.f1, self.support, strict=True
                )
            },
            "confusion": self.confusion.tolist(),
            "unreadable": self.unreadable,
        }


def classification_report(
    y_true: np.ndarray, probs: np.ndarray, classes: list[str], ks: tuple[int, ...] = (1, 5)
) -> ClassificationReport:
    """Shape: ``y_true`` (N,) ints, ``probs`` (N, C) scores (any monotone score works)."""
    y_true = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probs)
    c = len(classes)
    if probs.ndim != 2 or probs.shape[1] != c or len(y_true) != len(probs):
        raise ValueError(f"probs must be (N, {c}) matching y_true; got {probs.shape}")
    n = len(y_true)
    pred = probs.argmax(1) if n else np.zeros(0, dtype=np.int64)
    conf = np.zeros((c, c), dtype=np.int64)
    np.add.at(conf, (y_true, pred), 1)
    tp = np.diag(conf).astype(float)
    pred_count = conf.sum(0).astype(float)
    true_count = conf.sum(1).astype(float)
    precision = np.divide(tp, pred_count, out=np.zeros(c), where=pred_count > 0)
    recall = np.divide(tp, true_count, out=np.zeros(c), where=true_count > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros(c), where=denom > 0)
    order = np.argsort(-probs, axis=1, kind="stable") if n else np.zeros((0, c), dtype=np.int64)
    top_k = {}
    for k in ks:
        if k <= c:
            top_k[k] = float((order[:, :k] == y_true[:, None]).any(1).mean()) if n else 0.0
    return ClassificationReport(
        classes=list(classes),
        n=n,
        accuracy=float((pred == y_true).mean()) if n else 0.0,
        top_k=top_k,
        precision=precision.tolist(),
        recall=recall.tolist(),
        f1=f1.tolist(),
        support=true_count.astype(int).tolist(),
        confusion=conf,
    )
