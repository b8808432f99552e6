"""``--precision auto``: bf16 autocast where it makes training faster on this machine, measured.

bf16 only pays where the hardware computes it (AMX / AVX-512 BF16 CPUs, bf16 GPUs); on other
CPUs it is emulated and ~9x slower than fp32 (measured on this project's AVX2 machines), so
there ``auto`` is fp32 without a trial. Where the units exist, ``auto`` times a few training
steps (forward, loss, backward) of *this* model at *this* input size in fp32 and in bf16 on
a copy of the model (the real one's weights, batch-norm statistics and gradients are not
touched) and keeps bf16 only if it is at least :data:`MIN_GAIN` faster.
"""

from __future__ import annotations

import copy
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

__all__ = ["MIN_GAIN", "PrecisionChoice", "choose_precision", "record_precision"]

MIN_GAIN = 1.1  # bf16 must be at least this much faster than fp32 to be chosen
_STEPS = 3


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


def _steps_per_s(model: torch.nn.Module, x: torch.Tensor, bf16: bool) -> float:
    device = x.device
    times = []
    for i in range(_STEPS + 1):  # the first step warms up (weight packing, allocations)
        t0 = time.perf_counter()
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
            y = model.embed(x)
        loss = y.float().pow(2).mean()
        if loss.requires_grad:  # a frozen backbone: the forward pass is what is timed
            loss.backward()
        model.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i:
            times.append(time.perf_counter() - t0)
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
) -> PrecisionChoice:
    """The precision to train with: ``requested`` unless it is ``auto`` (see the module).

    ``trainable=False`` (a probe fitting its head on cached features): fp32, nothing to gain.
    """
    from vitrina.engine import bf16_supported

    if requested != "auto":
        return PrecisionChoice(requested, "requested")
    if not trainable:
        return PrecisionChoice("fp32", "only the head trains (on cached features): fp32")
    if not bf16_supported(device):
        where = "this GPU" if device.type == "cuda" else "this CPU"
        return PrecisionChoice(
            "fp32", f"{where} has no bf16 matrix units (bf16 would be emulated, ~9x slower)"
        )
    pre = model.preprocess
    bs = max(2, min(batch_size, 16))
    x = torch.randn(bs, pre.channels, *pre.input_size, device=device)
    trial = copy.deepcopy(model).to(device).train()
    fp32 = _steps_per_s(trial, x, bf16=False)
    bf16 = _steps_per_s(trial, x, bf16=True)
    del trial
    chosen = "bf16" if bf16 >= MIN_GAIN * fp32 else "fp32"
    return PrecisionChoice(
        chosen,
        f"measured: bf16 {bf16 / fp32:.2f}x fp32 (bf16 is used from {MIN_GAIN:.1f}x)",
        fp32,
        bf16,
        bs,
    )
