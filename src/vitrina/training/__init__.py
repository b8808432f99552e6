"""Training: one small loop (``fit``) driven by a task object and callbacks."""

from vitrina.training.classification import (
    ClassificationTask,
    TrainResult,
    data_fingerprint,
    train_classifier,
)
from vitrina.training.config import MODES, OPTIMIZERS, PRECISIONS, TrainConfig
from vitrina.training.loop import Callback, LoopState, StepOutput, Task, fit

__all__ = [
    "MODES",
    "OPTIMIZERS",
    "PRECISIONS",
    "Callback",
    "ClassificationTask",
    "LoopState",
    "StepOutput",
    "Task",
    "TrainConfig",
    "TrainResult",
    "data_fingerprint",
    "fit",
    "train_classifier",
]
