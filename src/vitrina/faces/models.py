"""dlib's face models, loaded once per process from the ``face-recognition-models`` package.

The package's own ``__init__`` imports ``pkg_resources`` (gone from current setuptools), so its
folder is located with ``importlib.util.find_spec`` and never imported. ``dlib`` and ``torch``
are imported on first use: importing :mod:`vitrina.faces` stays cheap.

:class:`TorchFaceResNet` runs dlib's face ResNet in torch, from the same ``.dat`` file: the
dlib-bin wheel has no BLAS, so its ResNet costs ~150 ms a face on one core; torch's ~16 ms.
"""

from __future__ import annotations

import functools
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vitrina.errors import VitrinaError, WeightsNotFoundError

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

_INSTALL = "pip install face-recognition-models"


def dlib_module() -> Any:
    """The ``dlib`` module, or a one-line error saying which wheel to install."""
    try:
        import dlib
    except ImportError as exc:
        raise VitrinaError(
            "dlib is not installed: pip install dlib-bin (the prebuilt wheel, not 'dlib')"
        ) from exc
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


@functools.cache
def hog_detector() -> Any:
    """dlib's HOG + linear SVM frontal face detector (``run(img, upsample, threshold)``)."""
    return dlib_module().get_frontal_face_detector()


@functools.cache
def cnn_detector() -> Any:
    """dlib's MMOD CNN face detector (slow on a CPU; finds turned and small faces)."""
    return dlib_module().cnn_face_detection_model_v1(str(model_file("cnn")))


@functools.cache
def shape_predictor() -> Any:
    """dlib's 5-point landmark predictor (eye corners and the bottom of the nose)."""
    return dlib_module().shape_predictor(str(model_file("landmarks5")))


@functools.cache
def face_recognizer() -> Any:
    """dlib's ResNet face descriptor (128-d; same person when the distance is below ~0.6)."""
    return dlib_module().face_recognition_model_v1(str(model_file("resnet")))


@functools.cache
def torch_face_resnet() -> TorchFaceResNet:
    """dlib's face ResNet in torch (same vectors as :func:`face_recognizer` within 1e-5)."""
    return TorchFaceResNet.from_dat(model_file("resnet"))


# --------------------------------------------------------------------------- the ResNet in torch


@dataclass(frozen=True)
class _Conv:
    weight: np.ndarray  # (out, in, kh, kw), the following affine layer folded in
    bias: np.ndarray  # (out,)
    stride: int
    padding: int


@dataclass(frozen=True)
class _Block:
    """relu(shortcut + affine(conv(relu(affine(conv(x)))))); a down block pools the shortcut."""

    first: _Conv
    second: _Conv
    down: bool


class TorchFaceResNet:
    """dlib's ``dlib_face_recognition_resnet_model_v1`` evaluated with torch.

    The network (dlib's ``dnn_face_recognition_ex.cpp``): 7x7/2 conv, 3x3/2 max-pool, 14 residual
    blocks (32, 64, 128, 256 channels; a stride-2 block adds a 2x2 average-pooled shortcut,
    zero-padded to the larger shape as dlib's ``add_prev`` does), global average pool, 256->128
    linear. Input: 150x150 RGB chips, ``(pixel - channel mean) / 256``.
    """

    def __init__(
        self, mean: np.ndarray, stem: _Conv, pool: tuple[int, int], blocks: list[_Block], fc: Any
    ) -> None:
        import torch

        def t(a: np.ndarray) -> Any:
            return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))

        self._mean = t(mean).view(1, 3, 1, 1)
        self._stem = (t(stem.weight), t(stem.bias), stem.stride, stem.padding)
        self._pool = pool
        self._blocks = [
            (
                (t(b.first.weight), t(b.first.bias), b.first.stride, b.first.padding),
                (t(b.second.weight), t(b.second.bias), b.second.stride, b.second.padding),
                b.down,
            )
            for b in blocks
        ]
        weight, bias = fc
        self._fc = (t(weight), None if bias is None else t(bias))

    @classmethod
    def from_dat(cls, path: Path) -> TorchFaceResNet:
        return cls(*_read_face_resnet(path))

    def __call__(self, chips: np.ndarray) -> np.ndarray:
        """``(N, 150, 150, 3)`` uint8 RGB chips -> ``(N, 128)`` float32 descriptors."""
        import torch
        import torch.nn.functional as F

        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(chips)).permute(0, 3, 1, 2).float()
            x = (x - self._mean) / 256.0
            w, b, s, p = self._stem
            x = F.max_pool2d(F.relu(F.conv2d(x, w, b, s, p)), self._pool[0], self._pool[1])
            for (w1, b1, s1, p1), (w2, b2, s2, p2), down in self._blocks:
                y = F.conv2d(F.relu(F.conv2d(x, w1, b1, s1, p1)), w2, b2, s2, p2)
                x = F.relu(_add_padded(F.avg_pool2d(x, 2, 2) if down else x, y))
            weight, bias = self._fc
            x = x.mean(dim=(2, 3)) @ weight
            if bias is not None:
                x = x + bias
            return x.numpy().astype(np.float32, copy=False)


def _add_padded(a: Any, b: Any) -> Any:
    """dlib's add_prev: tensors of different shapes add as if zero-padded at the far ends."""
    if a.shape == b.shape:
        return a + b
    out = a.new_zeros([max(i, j) for i, j in zip(a.shape, b.shape, strict=True)])
    out[: a.shape[0], : a.shape[1], : a.shape[2], : a.shape[3]] += a
    out[: b.shape[0], : b.shape[1], : b.shape[2], : b.shape[3]] += b
    return out


# dlib serialization: an integer is one byte (value-byte count in the low nibble, 0x80 for a
# negative sign) and that many little-endian bytes; a string, its length and bytes; a float,
# mantissa and exponent integers; a tensor, version 2, four dims and raw float32s. Each layer
# writes its name string, then its fields; the layers come input first.
_LAYERS = {
    b"input_rgb_image_sized": "I",
    b"con_4": "C",
    b"affine_": "A",
    b"relu_": "R",
    b"max_pool_2": "M",
    b"avg_pool_2": "P",
    b"add_prev_": "D",
    b"fc_2": "F",
}
_LAYER_NAME = re.compile(
    b"\\x01(" + b"|".join(re.escape(bytes([len(k)]) + k) for k in _LAYERS) + b")"
)
_LAYOUT = re.compile(r"ICARM(?:CARCAP?DR)+GF")


class _Reader:
    def __init__(self, data: bytes, pos: int) -> None:
        self.data, self.pos = data, pos

    def int(self) -> int:
        head = self.data[self.pos]
        n = head & 0x0F
        value = int.from_bytes(self.data[self.pos + 1 : self.pos + 1 + n], "little")
        self.pos += 1 + n
        return -value if head & 0x80 else value

    def ints(self, n: int) -> list[int]:
        return [self.int() for _ in range(n)]

    def float(self) -> float:
        mantissa = self.int()
        return float(mantissa) * 2.0 ** self.int()

    def tensor(self) -> np.ndarray:
        if self.int() != 2:
            raise ValueError("tensor version")
        n = int(np.prod(self.ints(4)))
        out = np.frombuffer(self.data, "<f4", count=n, offset=self.pos).astype(np.float32)
        self.pos += 4 * n
        return out


def _read_face_resnet(path: Path) -> tuple[Any, ...]:
    try:
        layers = _read_layers(path.read_bytes())
    except (ValueError, IndexError, ZeroDivisionError) as exc:
        raise WeightsNotFoundError(f"{path}: not the layout of dlib's face ResNet v1") from exc
    code = "".join(kind for kind, _ in layers)
    if not _LAYOUT.fullmatch(code):
        raise WeightsNotFoundError(f"{path}: not the layout of dlib's face ResNet v1 ({code})")
    values = [v for _, v in layers]
    i = 1
    stem = _fold(values[i], values[i + 1])
    pool = values[i + 3]
    i += 4
    blocks = []
    while code[i] == "C":
        down = code[i + 5] == "P"
        if down and values[i + 5] != (2, 2):
            raise WeightsNotFoundError(f"{path}: not the layout of dlib's face ResNet v1")
        first, second = _fold(values[i], values[i + 1]), _fold(values[i + 3], values[i + 4])
        blocks.append(_Block(first, second, down))
        i += 8 if down else 7
    return values[0], stem, pool, blocks, values[-1]


def _read_layers(data: bytes) -> list[tuple[str, Any]]:
    """(kind letter, parameters) of each named layer, input first."""
    layers: list[tuple[str, Any]] = []
    for match in _LAYER_NAME.finditer(data):
        kind = _LAYERS[match.group(1)[1:]]
        r = _Reader(data, match.end())
        if kind == "I":
            layers.append((kind, np.array([r.float(), r.float(), r.float()], np.float32)))
        elif kind == "C":
            params = r.tensor()
            out, kh, kw, sy, sx, py, px = r.ints(7)
            if sy != sx or py != px or kh != kw:
                raise ValueError("non-square convolution")
            cin = (params.size - out) // (out * kh * kw)
            if out <= 0 or cin <= 0 or params.size != out * (cin * kh * kw + 1):
                raise ValueError("convolution size")
            weight = params[: out * cin * kh * kw].reshape(out, cin, kh, kw)
            layers.append((kind, (weight, params[out * cin * kh * kw :], sy, py)))
        elif kind == "A":
            gamma, beta = np.split(r.tensor(), 2)
            layers.append((kind, (gamma, beta)))
        elif kind in "MP":
            nr, nc, sy, sx, py, px = r.ints(6)
            if py or px or nr != nc or sy != sx:
                raise ValueError("padded or non-square pooling")
            layers.append(("G" if nr == 0 else kind, (nr, sy)))
        elif kind == "F":
            n_out, n_in = r.ints(2)
            params = r.tensor()
            w = params[: n_in * n_out].reshape(n_in, n_out)
            bias = params[n_in * n_out :] if params.size == (n_in + 1) * n_out else None
            layers.append((kind, (w, bias)))
        else:
            layers.append((kind, None))
    return layers


def _fold(conv: tuple[np.ndarray, np.ndarray, int, int], affine: tuple[Any, Any]) -> _Conv:
    """conv then per-channel ``gamma * x + beta``, as one conv."""
    weight, bias, stride, padding = conv
    gamma, beta = affine
    return _Conv(weight * gamma[:, None, None, None], bias * gamma + beta, stride, padding)
