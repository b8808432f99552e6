"""Inference backends, chosen by name: ``eager`` (fp32) and ``bf16`` (autocast + channels_last).

Every backend takes a normalized float32 batch and returns float32 outputs on the CPU, so
consumers never care which one ran. ``auto`` resolves to the fastest backend this machine
supports (see :func:`resolve_backend`).
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch

from vitrina.models import VitrinaModel
from vitrina.registry import Registry

__all__ = ["BACKENDS", "Backend", "bf16_supported", "resolve_backend"]

OUTPUTS = ("logits", "embed")


class Backend:
    """Runs a model on batches. Subclasses change how, never what is returned."""

    name = "base"

    def __init__(self, model: VitrinaModel, device: torch.device) -> None:
        self.model = model.eval().to(device)
        self.device = device

    def context(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.device, non_blocking=True)

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor, output: str = "logits") -> torch.Tensor:
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
        x = self.prepare_input(x)
        with self.context():
            y = self.model.classify(x) if output == "logits" else self.model.embed(x)
        return y.float().cpu()


BACKENDS: Registry[type[Backend]] = Registry("backend")


@BACKENDS.register("eager")
class EagerBackend(Backend):
    """Plain PyTorch fp32: the reference every other backend is checked against."""

    name = "eager"


@BACKENDS.register("bf16")
class Bf16Backend(Backend):
    """bfloat16 autocast with channels_last memory format (AMX / AVX-512 BF16 on CPUs,
    tensor cores on GPUs). Outputs are cast back to fp32."""

    name = "bf16"

    def __init__(self, model: VitrinaModel, device: torch.device) -> None:
        super().__init__(model, device)
        self.model = self.model.to(memory_format=torch.channels_last)

    def context(self) -> contextlib.AbstractContextManager:
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        x = super().prepare_input(x)
        return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


@functools.cache
def _cpu_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def bf16_supported(device: torch.device) -> bool:
    """True where bf16 matrix hardware makes autocast fast (not merely possible)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    flags = _cpu_flags()
    return bool({"amx_bf16", "avx512_bf16"} & flags)


def resolve_backend(name: str, device: torch.device) -> str:
    """Map ``auto`` to a concrete backend; check other names exist."""
    if name == "auto":
        return "bf16" if bf16_supported(device) else "eager"
    BACKENDS.get(name)  # raises with suggestions
    return name
