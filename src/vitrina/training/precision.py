"""Numeric precision of training: ``fp64``, ``fp32``, ``bf16`` (autocast) or ``auto`` (measured).

* ``fp64``: parameters, inputs and the loss in float64 (the reference arithmetic; about twice
  the memory of fp32 and, on CPUs, 2-4x the time).
* ``fp32``: the default.
* ``bf16``: parameters stay float32, matrix products and convolutions run in bfloat16 under
  ``torch.autocast`` (mixed precision); fast only where bf16 matrix units exist (AMX /
  AVX-512 BF16 CPUs, recent GPUs), emulated and slower than fp32 elsewhere.
* ``auto``: bf16 where it makes training faster on this machine, measured, else fp32.
  bf16 only pays where the hardware computes it; on other CPUs it is emulated and ~9x slower
  than fp32 (measured on this project's AVX2 machines), so there ``auto`` is fp32 without a
  trial. Where the units exist, ``auto`` times training steps (forward, loss, backward) in
  interleaved rounds (fp32, bf16, fp32, bf16: a busy neighbour slows both alike)
  of *this* model at *this* input size in fp32 and in bf16 on a copy of the model (the real
  one's weights, batch-norm statistics and gradients are not touched) and keeps bf16 only if
  it is at least :data:`MIN_GAIN` faster. :func:`choose_precision` resolves ``auto`` before
  training starts; everything after it sees ``fp32`` or ``bf16``.

The run folder always stores float32 weights (``model.safetensors``), whatever the training
precision: every backend reads them; inference precision is the backend's (``eager`` fp32,
``bf16``, ``fp64``).
"""

from __future__ import annotations

import contextlib
import copy
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from vitrina.errors import VitrinaError
from vitrina.registry import suggest
from vitrina.training.config import PRECISIONS

__all__ = [
    "MIN_GAIN",
    "PrecisionChoice",
    "autocast",
    "check_precision",
    "choose_precision",
    "embedding_step",
    "inference_backend",
    "loss_dtype",
    "model_dtype",
    "param_dtype",
    "record_precision",
    "timed_step",
]

MIN_GAIN = 1.1  # bf16 must be at least this much faster than fp32 to be chosen
_STEPS = 2  # timed steps per round, after one warm-up step
_ROUNDS = 2  # interleaved rounds: fp32, bf16, fp32, bf16 (a busy neighbour slows both alike)

#: The inference backend that computes in each (resolved) precision.
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
    """The dtype parameters are kept in while training at ``precision`` (float32 for ``auto``:
    it resolves to fp32 or bf16, both of which keep float32 parameters)."""
    return torch.float64 if check_precision(precision) == "fp64" else torch.float32


def inference_backend(precision: str) -> str:
    """The engine backend computing at ``precision`` (``fp32`` -> ``eager``). ``auto`` must be
    resolved by :func:`choose_precision` first."""
    if check_precision(precision) not in _BACKENDS:
        raise ValueError(f"precision {precision!r} must be resolved by choose_precision first")
    return _BACKENDS[precision]


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


@dataclass
class PrecisionChoice:
    """What ``--precision auto`` chose and why (saved as ``precision.json`` in the run)."""

    chosen: str
    reason: str
    fp32_steps_per_s: float | None = None
    bf16_steps_per_s: float | None = None
    batch: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def embedding_step(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The trial's default step: ``model.embed(x)`` (or ``model(x)``), its mean square as the
    loss."""
    y = getattr(model, "embed", model)(x)
    if isinstance(y, tuple | list):  # e.g. an autoencoder's (reconstruction, code)
        y = y[0]
    return y.float().pow(2).mean()


def timed_step(
    model: torch.nn.Module,
    x: torch.Tensor,
    precision: str,
    step: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor] = embedding_step,
) -> float:
    """Seconds of one training step of a trial: ``step(model, x)`` at ``precision`` (resolved),
    its loss's backward pass (none for a frozen backbone: the forward pass is what is timed),
    the gradients dropped."""
    t0 = time.perf_counter()
    with autocast(x.device, precision):
        loss = step(model, x)
    if loss.requires_grad:
        loss.backward()
    model.zero_grad(set_to_none=True)
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
    return time.perf_counter() - t0


def _steps_per_s(
    model: torch.nn.Module,
    x: torch.Tensor,
    bf16: bool,
    step: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor] = embedding_step,
) -> float:
    precision = "bf16" if bf16 else "fp32"
    timed_step(model, x, precision, step)  # warm-up (weight packing, allocations)
    times = [timed_step(model, x, precision, step) for _ in range(_STEPS)]
    return 1.0 / max(statistics.median(times), 1e-9)


def record_precision(choice: PrecisionChoice, out: Any) -> None:
    """Write the choice to ``out/precision.json`` (what was measured, for the user)."""
    import json
    from pathlib import Path

    from vitrina.io import atomic_write_text

    atomic_write_text(Path(out) / "precision.json", json.dumps(choice.to_dict(), indent=2) + "\n")


def choose_precision(
    requested: str,
    model: torch.nn.Module,
    device: torch.device,
    batch_size: int,
    *,
    trainable: bool = True,
    preprocess: Any = None,
    step: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor] = embedding_step,
) -> PrecisionChoice:
    """The precision to train with: ``requested`` unless it is ``auto`` (see the module).

    ``trainable=False`` (a probe fitting its head on cached features): fp32, nothing to gain.
    The trial steps run ``step(model, x)`` and its loss's backward pass, ``x`` random inputs
    shaped by ``preprocess`` (default: ``model.preprocess``); the default step is
    ``model.embed`` (or ``model`` itself where it has no ``embed``: an autoencoder, whose first
    output is timed); a detector passes its own (its training losses on a box per image).
    """
    from vitrina.engine import bf16_supported

    if requested != "auto":
        return PrecisionChoice(check_precision(requested), "requested")
    if not trainable:
        return PrecisionChoice("fp32", "only the head trains (on cached features): fp32")
    if not bf16_supported(device):
        where = "this GPU" if device.type == "cuda" else "this CPU"
        return PrecisionChoice(
            "fp32", f"{where} has no bf16 matrix units (bf16 would be emulated, ~9x slower)"
        )
    pre = preprocess if preprocess is not None else model.preprocess
    bs = max(2, min(batch_size, 16))
    # The trial draws random numbers (its input, dropout): the generators are restored after
    # it, so a seeded run that resolves to fp32 is the run ``--precision fp32`` makes.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        x = torch.randn(bs, pre.channels, *pre.input_size, device=device)
        trial = copy.deepcopy(model).to(device).train()
        rates: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(_ROUNDS):
            for half in (False, True):
                rates[half].append(_steps_per_s(trial, x, half, step))
        del trial
    fp32, bf16 = statistics.median(rates[False]), statistics.median(rates[True])
    chosen = "bf16" if bf16 >= MIN_GAIN * fp32 else "fp32"
    return PrecisionChoice(
        chosen,
        f"measured: bf16 {bf16 / fp32:.2f}x fp32 (bf16 is used from {MIN_GAIN:.1f}x)",
        fp32,
        bf16,
        bs,
    )
