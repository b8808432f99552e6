"""The ``fp64`` backend: the model in float64, the reference arithmetic for inference.

A float64 copy of the model is made (the caller's model stays float32) and each batch is
widened to float64; outputs come back as float32 like every backend's. It exists to measure
what fp32 (and bf16) cost in accuracy: never an ``auto`` candidate, as it is 2-4x slower than
fp32 on CPUs and much slower on most GPUs.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from vitrina.engine.backends import BACKENDS, TOLERANCES, Backend, Tolerance, network
from vitrina.errors import VitrinaError
from vitrina.lazy import lazy_module

if TYPE_CHECKING:
    import torch

    from vitrina.models import VitrinaModel
else:
    torch = lazy_module("torch")

__all__ = ["Fp64Backend"]

# fp64 differs from eager fp32 by fp32's own rounding: a relative 1e-4 is generous for deep
# nets (measured ~1e-6 on EfficientNet-Lite0 logits); top-1 may flip only on exact ties.
TOLERANCES["fp64"] = Tolerance(top1=0.99, rel=1e-4)


@BACKENDS.register("fp64")
class Fp64Backend(Backend):
    """PyTorch eager in float64 (a float64 copy of the model)."""

    name = "fp64"

    def __init__(
        self,
        model: VitrinaModel,
        device: torch.device,
        threads: int | None = None,
        **options: Any,
    ) -> None:
        if device.type == "mps":
            raise VitrinaError("the fp64 backend needs float64, which Apple's MPS lacks: use cpu")
        super().__init__(model, device, threads, **options)
        self.model = copy.deepcopy(network(self.model)).to(torch.float64)

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        return super().prepare_input(x).to(torch.float64)
