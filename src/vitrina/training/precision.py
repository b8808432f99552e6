"""Numeric precision of training: ``fp64``, ``fp32`` or ``bf16`` (autocast).

* ``fp64``: parameters, inputs and the loss in float64 (the reference arithmetic; about twice
  the memory of fp32 and, on CPUs, 2-4x the time).
* ``fp32``: the default.
* ``bf16``: parameters stay float32, matrix products and convolutions run in bfloat16 under
  ``torch.autocast`` (mixed precision); fast only where bf16 matrix units exist (AMX /
  AVX-512 BF16 CPUs, recent GPUs), emulated and slower than fp32 elsewhere.

The run folder always stores float32 weights (``model.safetensors``), whatever the training
precision: every backend reads them; inference precision is the backend's (``eager`` fp32,
``bf16``, ``fp64``).
"""

from __future__ import annotations

import contextlib

import torch

from vitrina.errors import VitrinaError
from vitrina.registry import suggest
from vitrina.training.config import PRECISIONS

__all__ = [
    "autocast",
    "check_precision",
    "inference_backend",
    "loss_dtype",
    "model_dtype",
    "param_dtype",
]

#: The inference backend that computes in each precision.
_BACKENDS = {"fp64": "fp64", "fp32": "eager", "bf16": "bf16"}


def check_precision(name: str) -> str:
    """``name`` if it is one of :data:`PRECISIONS`, else a one-line error with suggestions."""
    if name not in PRECISIONS:
        raise VitrinaError(
            f"--precision {name!r} is not one of {', '.join(PRECISIONS)}"
            f"{suggest(str(name), list(PRECISIONS))}"
        )
    return name


def param_dtype(precision: str) -> torch.dtype:
    """The dtype parameters are kept in while training at ``precision``."""
    return torch.float64 if check_precision(precision) == "fp64" else torch.float32


def inference_backend(precision: str) -> str:
    """The engine backend computing at ``precision`` (``fp32`` -> ``eager``)."""
    return _BACKENDS[check_precision(precision)]


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to bfloat16 for ``bf16``; nothing for ``fp32`` / ``fp64``."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def model_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype of the model's first floating-point parameter or buffer (float32 if none)."""
    for t in (*model.parameters(), *model.buffers()):
        if t.is_floating_point():
            return t.dtype
    return torch.float32


def loss_dtype(t: torch.Tensor) -> torch.Tensor:
    """Outputs as a loss wants them: float64 stays float64, anything else becomes float32
    (bf16 outputs of autocast are widened before the loss, as mixed precision does)."""
    return t if t.dtype == torch.float64 else t.float()
