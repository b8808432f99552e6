"""Inference backends, chosen by name: ``eager`` (fp32), ``bf16`` (autocast + channels_last)
and ``onnx`` (ONNX Runtime fp32, in :mod:`vitrina.engine.onnx`).

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

    def __init__(
        self, model: VitrinaModel, device: torch.device, threads: int | None = None
    ) -> None:
        self.model = model.eval().to(device)
        self.device = device
        self.threads = threads  # intra-op threads for runtimes with their own pool

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
    """Plain PyTorch fp32: the reference every other backend is checked against.

    Convnets run in channels_last memory format (same fp32 arithmetic, 1.3-1.8x faster in
    oneDNN on CPUs); the plain layout is kept for the check in the tests."""

    name = "eager"

    def __init__(
        self, model: VitrinaModel, device: torch.device, threads: int | None = None
    ) -> None:
        super().__init__(model, device, threads)
        self.channels_last = any(isinstance(m, torch.nn.Conv2d) for m in self.model.modules())
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        x = super().prepare_input(x)
        if self.channels_last and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x


@BACKENDS.register("bf16")
class Bf16Backend(Backend):
    """bfloat16 autocast with channels_last memory format (AMX / AVX-512 BF16 on CPUs,
    tensor cores on GPUs). Outputs are cast back to fp32."""

    name = "bf16"

    def __init__(
        self, model: VitrinaModel, device: torch.device, threads: int | None = None
    ) -> None:
        super().__init__(model, device, threads)
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
    """Map ``auto`` to a concrete backend; check other names exist.

    ``auto``: bf16 where bf16 matrix hardware exists (AMX / AVX-512 BF16 CPUs, bf16 GPUs);
    otherwise ONNX Runtime on CPUs (about 1.5-2x eager PyTorch for convnets on AVX2, and it
    checks itself against eager on its first batch); otherwise eager.
    """
    if name == "auto":
        if bf16_supported(device):
            return "bf16"
        from vitrina.engine.onnx import onnx_available

        return "onnx" if device.type == "cpu" and onnx_available() else "eager"
    BACKENDS.get(name)  # raises with suggestions
    return name
