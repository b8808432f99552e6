"""Inference backends, chosen by name: ``eager`` (fp32), ``bf16`` (autocast + channels_last)
and ``onnx`` (ONNX Runtime fp32, in :mod:`vitrina.engine.onnx`), ``int8``, ``pruned``, ``auto``.

A backend computes one *output* of a model on a normalized float32 batch: ``"logits"``
(``model.classify``), ``"embed"`` (``model.embed``), or any other method of the model a task
asks for (``"boxes"`` for a detector). It returns float32 on the CPU — a tensor, or a list of
tensors for outputs of variable length per input — so tasks never care which backend ran.
How far each backend may be from eager fp32 is its stated :data:`TOLERANCES`, checked per
output by :func:`compare_outputs` (comparisons for new outputs register in
:data:`OUTPUT_CHECKS`).
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from vitrina.lazy import is_module, is_tensor, lazy_module
from vitrina.registry import Registry

if TYPE_CHECKING:
    import torch

    from vitrina.models import VitrinaModel
else:
    torch = lazy_module("torch")

_F = TypeVar("_F", bound=Callable[..., Any])


def inference_mode(fn: _F) -> _F:
    """``@torch.inference_mode()`` that imports torch when the function is called, not when
    it is defined."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        with torch.inference_mode():
            return fn(*args, **kwargs)

    return run  # type: ignore[return-value]


def as_tensor(x: Any) -> torch.Tensor:
    """A batch for a PyTorch backend: numpy arrays become tensors (sharing their memory)."""
    return torch.from_numpy(x) if isinstance(x, np.ndarray) else x


__all__ = [
    "BACKENDS",
    "OUTPUT_CHECKS",
    "TOLERANCES",
    "Backend",
    "Tolerance",
    "bf16_supported",
    "compare_outputs",
    "int8_vnni",
    "model_output",
    "network",
    "onnx_available",
    "resolve_backend",
]

#: Outputs every vitrina model has, and the contract method computing each.
OUTPUTS = ("logits", "embed")
_METHODS = {"logits": "classify", "embed": "embed"}


def model_output(model: torch.nn.Module, output: str, x: torch.Tensor) -> Any:
    """``model``'s ``output`` for the batch ``x`` (``logits`` -> ``classify``, ``embed`` ->
    ``embed``, any other name -> the model's method of that name)."""
    method = getattr(model, _METHODS.get(output, output), None)
    if output.startswith("_") or not callable(method):
        from vitrina.errors import VitrinaError

        arch = getattr(model, "arch", type(model).__name__)
        raise VitrinaError(f"model {arch!r} has no output {output!r}")
    return method(x)


def network(model: Any) -> torch.nn.Module:
    """The PyTorch module of ``model``: itself, or for a run loaded deferred
    (:class:`vitrina.runs.DeferredModel`) its network, built now. Whatever hands the model
    to PyTorch's own machinery (tracing for export, ``deepcopy``) asks for this."""
    if is_module(model):
        return model
    materialize = getattr(model, "materialize", None)
    return materialize() if callable(materialize) else model


def _to_cpu_float(y: Any) -> Any:
    if is_tensor(y):
        return y.float().cpu()
    if isinstance(y, list | tuple):
        return [_to_cpu_float(v) for v in y]
    if isinstance(y, dict):
        return {k: _to_cpu_float(v) for k, v in y.items()}
    return y


@dataclass(frozen=True)
class Tolerance:
    """How far a backend may be from eager fp32 on the same batch.

    ``top1``: least share of images whose top-1 class must agree (logits only);
    ``rel``: largest mean |difference| relative to the mean |output| of eager fp32;
    ``atol``: largest single |difference| (``None``: not checked).
    """

    top1: float = 1.0
    rel: float = 1e-3
    atol: float | None = None

    def ok(self, report: dict[str, float]) -> bool:
        if report["top1_agreement"] < self.top1 or report["rel_mean_diff"] > self.rel:
            return False
        return self.atol is None or report["max_abs_diff"] <= self.atol

    def describe(self) -> str:
        parts = [
            f"top-1 agreement >= {self.top1:.0%}",
            f"mean |diff| <= {self.rel:g} x mean |output|",
        ]
        if self.atol is not None:
            parts.append(f"max |diff| <= {self.atol:g}")
        return ", ".join(parts)


#: The stated tolerance of each backend against eager fp32 (tests hold every backend to it;
#: ``auto`` only picks a backend that meets it on real inputs).
TOLERANCES: dict[str, Tolerance] = {
    "eager": Tolerance(top1=1.0, rel=1e-5, atol=1e-4),
    "onnx": Tolerance(top1=1.0, rel=1e-3, atol=1e-3),
    "bf16": Tolerance(top1=0.99, rel=0.05),
    "int8": Tolerance(top1=0.99, rel=0.15),
    "openvino": Tolerance(top1=1.0, rel=1e-3, atol=1e-3),
    "openvino-bf16": Tolerance(top1=0.99, rel=0.05),
    "openvino-int8": Tolerance(top1=0.99, rel=0.15),
    # dlib's own C++ for its face ResNet: the same arithmetic in another order
    "dlib": Tolerance(top1=1.0, rel=1e-4, atol=1e-4),
}


#: How a backend's outputs are compared with eager fp32's, per output name: a function
#: ``(ref, got) -> {"top1_agreement", "max_abs_diff", "rel_mean_diff"}`` (the keys
#: :class:`Tolerance` checks). Outputs not listed are compared as tensors (no top-1).
OUTPUT_CHECKS: dict[str, Any] = {}


def compare_outputs(ref: Any, got: Any, output: str = "logits") -> dict[str, float]:
    """Differences between a backend's outputs and eager fp32's on the same batch."""
    check = OUTPUT_CHECKS.get(output)
    if check is not None:
        return check(ref, got)
    ref, got = ref.float(), got.float()
    diff = (got - ref).abs()
    agree = (
        float((got.argmax(1) == ref.argmax(1)).float().mean())
        if output == "logits" and ref.dim() == 2 and len(ref)
        else 1.0
    )
    scale = float(ref.abs().mean()) or 1.0
    return {
        "top1_agreement": agree,
        "max_abs_diff": float(diff.max()) if diff.numel() else 0.0,
        "rel_mean_diff": float(diff.mean()) / scale if diff.numel() else 0.0,
    }


class Backend:
    """Runs a model on batches. Subclasses change how, never what is returned.

    ``outputs``: the model outputs this backend can compute (``None``: any the model has).
    Runtimes that execute an exported graph list the single-tensor outputs they export."""

    name = "base"
    outputs: tuple[str, ...] | None = None
    #: takes a numpy batch as it is and answers in numpy (runtimes of their own: OpenVINO,
    #: ONNX Runtime); PyTorch backends take tensors (numpy batches are converted)
    takes_arrays = False

    @classmethod
    def supports(cls, output: str) -> bool:
        return cls.outputs is None or output in cls.outputs

    def check_output(self, output: str) -> None:
        """One clear line when this backend cannot compute ``output``."""
        if not self.supports(output):
            from vitrina.errors import VitrinaError

            raise VitrinaError(
                f"the {self.name} backend computes {', '.join(self.outputs or ())} only, not "
                f"{output!r}; choose another backend (eager computes every output)"
            )

    def __init__(
        self,
        model: VitrinaModel,
        device: torch.device,
        threads: int | None = None,
        **options: Any,
    ) -> None:
        self.model = model.eval().to(device)
        self.device = device
        self.threads = threads  # intra-op threads for runtimes with their own pool
        self.options = options  # backend-specific (``calib`` for int8); others ignore them

    def context(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        return as_tensor(x).to(self.device, non_blocking=True)

    @inference_mode
    def __call__(self, x: torch.Tensor, output: str = "logits") -> Any:
        x = self.prepare_input(x)
        with self.context():
            y = model_output(self.model, output, x)
        return _to_cpu_float(y)


BACKENDS: Registry[type[Backend]] = Registry("backend")


@BACKENDS.register("eager")
class EagerBackend(Backend):
    """Plain PyTorch fp32: the reference every other backend is checked against.

    Convnets run in channels_last memory format (same fp32 arithmetic, 1.3-1.8x faster in
    oneDNN on CPUs); the plain layout is kept for the check in the tests."""

    name = "eager"

    def __init__(
        self,
        model: VitrinaModel,
        device: torch.device,
        threads: int | None = None,
        **options: Any,
    ) -> None:
        super().__init__(model, device, threads, **options)
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
        self,
        model: VitrinaModel,
        device: torch.device,
        threads: int | None = None,
        **options: Any,
    ) -> None:
        super().__init__(model, device, threads, **options)
        self.model = self.model.to(memory_format=torch.channels_last)
        if device.type == "cpu" and not bf16_supported(device):
            warnings.warn(
                "this CPU has no bf16 matrix units (AMX / AVX-512 BF16): bf16 runs emulated, "
                "typically several times slower than eager fp32 (--backend auto picks the "
                "fastest backend that keeps accuracy)",
                stacklevel=3,
            )

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


def int8_vnni() -> bool:
    """True where the CPU has int8 dot-product units (VNNI, AMX-INT8): full-range int8
    kernels are exact there; without them the u8*s8 kernels can saturate (see int8.py)."""
    return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & _cpu_flags())


def onnx_available() -> bool:
    """Whether the ONNX backends can run here (``onnx`` and ``onnxruntime`` installed)."""
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("onnxruntime", "onnx"))


def bf16_supported(device: torch.device) -> bool:
    """True where bf16 matrix hardware makes autocast fast (not merely possible)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    flags = _cpu_flags()
    return bool({"amx_bf16", "avx512_bf16"} & flags)


def resolve_backend(name: str, device: torch.device) -> str:
    """The backend ``name`` stands for before anything is measured; unknown names raise with
    suggestions. (The ``auto`` *backend* measures; this is its static first guess.)

    ``auto``: bf16 where bf16 matrix hardware exists (AMX / AVX-512 BF16 CPUs, bf16 GPUs);
    otherwise ONNX Runtime on CPUs (about 1.5-2x eager PyTorch for convnets on AVX2, and it
    checks itself against eager on its first batch); otherwise eager.
    """
    if name == "auto":
        if bf16_supported(device):
            return "bf16"
        return "onnx" if device.type == "cpu" and onnx_available() else "eager"
    BACKENDS.get(name)  # raises with suggestions
    return name
