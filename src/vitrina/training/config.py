"""Every training option, defined once. The CLI, the Python API and the saved run read this."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from vitrina.data.transforms import AUGMENTS
from vitrina.errors import VitrinaError
from vitrina.registry import suggest

__all__ = ["MODES", "OPTIMIZERS", "PRECISIONS", "TrainConfig", "is_fitted_arch"]

MODES = ("scratch", "probe", "finetune")
OPTIMIZERS = ("sgd", "adamw", "lbfgs")
#: Training precisions (``--precision``); see :mod:`vitrina.training.precision`.
#: ``auto`` is resolved to fp32 or bf16 by measurement before training starts.
PRECISIONS = ("fp64", "fp32", "bf16", "auto")


def is_fitted_arch(arch: str) -> bool:
    """Whether ``arch`` is a classic model fitted by scikit-learn, not by gradient descent."""
    from vitrina.models.classic import FITTED_ARCHS

    return arch.removeprefix("vitrina/") in FITTED_ARCHS


@dataclass
class TrainConfig:
    """Options of ``vitrina train``. ``None`` means "choose for the mode" (see :meth:`resolved`).

    mode: ``scratch`` trains every weight from random init; ``probe`` trains only the head on
    frozen pretrained features; ``finetune`` trains everything starting from pretrained weights.
    """

    data_dir: str
    arch: str = "efficientnet_lite0"
    weights: str | None = None  # "imagenet", a file, a run folder; None: by mode
    mode: str = "finetune"
    epochs: int | None = None
    batch_size: int = 32
    lr: float | None = None
    optimizer: str | None = None  # None: lbfgs for a probe on cached features, else adamw
    weight_decay: float | None = None  # None: 1e-2 L2 for lbfgs, 1e-4 decay otherwise
    augment: str | None = None
    precision: str = field(
        default="fp32",
        metadata={
            "help": "fp64 (float64 weights and arithmetic), fp32, bf16 (autocast mixed "
            "precision; fast only on CPUs/GPUs with bf16 units) or auto (bf16 where it measures "
            "faster, else fp32). The run stores fp32 weights."
        },
    )
    seed: int = 0
    out: str | None = None
    val_dir: str | None = None
    val_fraction: float = 0.2
    patience: int = 10
    num_workers: int | None = None
    device: str = "auto"

    def resolved(self) -> TrainConfig:
        """Fill mode-dependent defaults and check every choice; raise VitrinaError if bad."""

        def choice(name: str, value: str, options: tuple[str, ...]) -> None:
            if value not in options:
                raise VitrinaError(
                    f"--{name.replace('_', '-')} {value!r} is not one of {', '.join(options)}"
                    f"{suggest(value, list(options))}"
                )

        choice("mode", self.mode, MODES)
        if self.optimizer is not None:
            choice("optimizer", self.optimizer, OPTIMIZERS)
        choice("precision", self.precision, PRECISIONS)
        c = TrainConfig(**asdict(self))
        if c.weights in ("none", ""):
            c.weights = None
        if is_fitted_arch(c.arch):
            return c._resolved_fitted()
        if c.mode == "scratch" and c.weights is not None:
            raise VitrinaError(
                f"--mode scratch trains from random weights, but --weights {c.weights} was given; "
                "use --mode finetune or --mode probe to start from weights"
            )
        if c.mode != "scratch" and c.weights is None:
            c.weights = "imagenet"
        if c.augment is None:
            c.augment = {"scratch": "light", "probe": "none", "finetune": "light"}[c.mode]
        choice("augment", c.augment, AUGMENTS)
        full_batch_ok = c.mode == "probe" and c.augment == "none"
        if c.optimizer is None:
            c.optimizer = "lbfgs" if full_batch_ok else "adamw"
        if c.optimizer == "lbfgs" and not full_batch_ok:
            raise VitrinaError(
                "--optimizer lbfgs fits the head on cached features in one batch: it needs "
                "--mode probe and --augment none"
            )
        if c.epochs is None:
            c.epochs = {"scratch": 30, "probe": 30, "finetune": 10}[c.mode]
        if c.weight_decay is None:
            # L-BFGS drives a probe on separable features to huge, overconfident weights
            # unless the L2 term is real; 1e-2 keeps probabilities honest for the unsure bin.
            c.weight_decay = 1e-2 if c.optimizer == "lbfgs" else 1e-4
        if c.lr is None:
            base = {"adamw": 1e-3, "sgd": 0.05, "lbfgs": 1.0}[c.optimizer]
            c.lr = base / 5 if c.mode == "finetune" and c.optimizer != "lbfgs" else base
        for name, value, ok in (
            ("epochs", c.epochs, c.epochs >= 1),
            ("batch-size", c.batch_size, c.batch_size >= 1),
            ("lr", c.lr, c.lr > 0),
            ("val-fraction", c.val_fraction, 0 < c.val_fraction < 1),
        ):
            if not ok:
                raise VitrinaError(f"--{name} {value} is out of range")
        if c.out is None:
            c.out = str(Path("runs") / f"{Path(c.data_dir).resolve().name}-{c.arch}-{c.mode}")
        return c

    def _resolved_fitted(self) -> TrainConfig:
        """A classic model fitted by scikit-learn (HOG / SIFT + SVM): features are fixed, the
        SVM is fitted in one pass, so --mode, --epochs, --lr, --optimizer and --augment do
        not apply; they are recorded as what happened (scratch, 1 pass, no augmentation)."""
        if self.weights is not None:
            raise VitrinaError(
                f"--arch {self.arch} is fitted from scratch on your photos by scikit-learn: "
                f"--weights {self.weights} does not apply"
            )
        if not 0 < self.val_fraction < 1:
            raise VitrinaError(f"--val-fraction {self.val_fraction} is out of range")
        c = TrainConfig(**asdict(self))
        c.mode, c.epochs, c.augment, c.optimizer, c.lr, c.weight_decay = (
            "scratch",
            1,
            "none",
            None,
            None,
            None,
        )
        if c.out is None:
            c.out = str(Path("runs") / f"{Path(c.data_dir).resolve().name}-{c.arch}")
        return c

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})
