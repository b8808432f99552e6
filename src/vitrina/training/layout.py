"""Memory layout of training: channels-last (NHWC) where it trains faster, measured.

A convolution stores its images and weights either as PyTorch's default NCHW or as
channels-last (NHWC). oneDNN, PyTorch's CPU convolution library, has fast NHWC kernels for
the depthwise convolutions that EfficientNet, MobileNet and most small modern backbones are
built from, and a slow path for their backward pass in NCHW: on a 2-core AVX2 AMD EPYC, one
training step of an EfficientNet-Lite0 classifier at 224x224 took 1.6-2.1x less time in
channels-last, a Faster R-CNN over it 1.3x less (the stride-2 depthwise 3x3 of the first
stage: 188 ms of backward pass in NCHW, 17 ms in NHWC). Other networks, devices and CPUs
gain less or lose, so the layout is measured, not assumed:

:func:`choose_memory_format` times training steps (forward, loss, backward) of *this* model
at *this* input size and precision in both layouts, in interleaved rounds, on a copy of the
model (the real one's weights, batch-norm statistics and gradients are not touched), and
keeps channels-last only when it is at least :data:`MIN_GAIN` faster. Models without a 2-d
convolution, fp64 training, heads learning on cached features and tiny networks (the trial
would cost more than it could save) keep the default without a trial.

``VITRINA_LAYOUT=contiguous`` (or ``channels_last``) in the environment skips the trial and
trains in that layout: for a benchmark's baseline, or a machine where the trial misjudges.

Only the arithmetic changes: a convolution gives the same numbers in either layout (to
float rounding), the run folder stores the weights contiguous as always, and every backend
reads them as before.
"""

from __future__ import annotations

import copy
import os
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from vitrina.errors import VitrinaError
from vitrina.training.precision import embedding_step
from vitrina.training.precision import timed_step as _timed_step

__all__ = [
    "ENV",
    "LAYOUTS",
    "MIN_GAIN",
    "LayoutChoice",
    "choose_memory_format",
    "memory_format",
    "to_layout",
]

LAYOUTS = ("contiguous", "channels_last")
ENV = "VITRINA_LAYOUT"  # a layout name here skips the trial
MIN_GAIN = 1.1  # channels-last must be at least this much faster to be chosen
TINY = 1_000_000  # parameters under which no trial runs (a trial would cost more than it saves)
_STEPS = 1  # timed steps per round, after one warm-up step per layout
_ROUNDS = 2  # interleaved rounds: contiguous, channels-last, contiguous, channels-last


def memory_format(layout: str) -> torch.memory_format:
    """The ``torch.memory_format`` of a layout name (one of :data:`LAYOUTS`)."""
    if layout not in LAYOUTS:
        raise VitrinaError(f"layout {layout!r} ({ENV}) is not one of {', '.join(LAYOUTS)}")
    return torch.channels_last if layout == "channels_last" else torch.contiguous_format


def to_layout(model: torch.nn.Module, layout: str) -> torch.nn.Module:
    """``model`` with its 4-d parameters and buffers in ``layout`` (in place: the same
    parameter objects, so an optimizer made before or after holds the right ones)."""
    return model.to(memory_format=memory_format(layout))


@dataclass
class LayoutChoice:
    """What :func:`choose_memory_format` chose and why (in the run's metrics)."""

    chosen: str
    reason: str
    contiguous_steps_per_s: float | None = None
    channels_last_steps_per_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        return f"{self.chosen} ({self.reason})"


def _has_conv2d(model: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.Conv2d) for m in model.modules())


def choose_memory_format(
    model: torch.nn.Module,
    device: torch.device,
    batch_size: int,
    *,
    precision: str = "fp32",
    trainable: bool = True,
    preprocess: Any = None,
    step: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor] = embedding_step,
) -> LayoutChoice:
    """The layout to train ``model`` in (see the module): ``contiguous`` or
    ``channels_last``, measured with ``step(model, x)`` and its backward pass on random
    inputs shaped by ``preprocess`` (default ``model.preprocess``) at ``precision``
    (resolved: ``fp32``, ``bf16`` or ``fp64``)."""
    forced = os.environ.get(ENV, "").strip()
    if forced:
        memory_format(forced)  # a name it does not know: one line naming the variable
        return LayoutChoice(forced, f"{ENV}={forced}")
    if not trainable:
        return LayoutChoice("contiguous", "only the head trains (on cached features)")
    if precision == "fp64":
        return LayoutChoice("contiguous", "fp64 training (the reference arithmetic)")
    if not _has_conv2d(model):
        return LayoutChoice("contiguous", "no 2-d convolutions")
    if sum(p.numel() for p in model.parameters()) < TINY:
        return LayoutChoice("contiguous", "a tiny network: the trial would cost more than it saves")
    pre = preprocess if preprocess is not None else model.preprocess
    bs = max(2, min(batch_size, 16))
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        x = torch.randn(bs, pre.channels, *pre.input_size, device=device)
        trials = {}
        for layout in LAYOUTS:  # a warm-up step each: weight packing, allocations
            trials[layout] = to_layout(copy.deepcopy(model).to(device).train(), layout)
            _timed_step(trials[layout], x.contiguous(memory_format=memory_format(layout)),
                        precision, step)  # fmt: skip
        times: dict[str, list[float]] = {layout: [] for layout in LAYOUTS}
        for _ in range(_ROUNDS):
            for layout in LAYOUTS:
                xl = x.contiguous(memory_format=memory_format(layout))
                for _ in range(_STEPS):
                    times[layout].append(_timed_step(trials[layout], xl, precision, step))
        del trials
    plain = 1.0 / max(statistics.median(times["contiguous"]), 1e-9)
    last = 1.0 / max(statistics.median(times["channels_last"]), 1e-9)
    chosen = "channels_last" if last >= MIN_GAIN * plain else "contiguous"
    return LayoutChoice(
        chosen,
        f"measured: channels-last {last / plain:.2f}x contiguous (chosen from {MIN_GAIN:.1f}x)",
        plain,
        last,
    )
