"""dlib's face ResNet (``dlib_face_recognition_resnet_model_v1``) as a vitrina model.

The network (dlib's ``dnn_face_recognition_ex.cpp``): 7x7/2 conv, 3x3/2 max-pool, 14 residual
blocks (32, 64, 128, 256 channels; a stride-2 block adds a 2x2 average-pooled shortcut,
zero-padded to the larger shape as dlib's ``add_prev`` does), global average pool, 256->128
linear without bias. Input: 150x150 RGB face chips aligned by dlib's 5-point landmarks,
``(pixel - channel mean) / 256``. Its 128-d vectors are compared by Euclidean distance (dlib:
the same person below ~0.6).

``create("dlib_face_resnet", weights="pretrained")`` reads the weights from the ``.dat`` file
of the ``face-recognition-models`` package (located with ``importlib.util.find_spec``, never
imported: its ``__init__`` needs ``pkg_resources``). The batch-norm-like ``affine`` layers are
folded into the convolutions. ``embed(x)`` is dlib's descriptor; ``classify`` is a fresh head
over it (the file has none) for fine-tuning on enrolled people.

Everything runs through :mod:`vitrina.engine` like any other model, so every backend (eager,
bf16, onnx, int8, auto) serves faces; the test suite holds the eager vectors to dlib's own
``compute_face_descriptor`` within 1e-5.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vitrina.errors import WeightsNotFoundError
from vitrina.models.preprocess import Preprocess

__all__ = [
    "DLIB_MEAN",
    "DLIB_RESNET_FILE",
    "DlibFaceResNet",
    "dlib_face_preprocess",
    "dlib_resnet_file",
    "read_dlib_resnet",
]

DLIB_RESNET_FILE = "dlib_face_recognition_resnet_model_v1.dat"
#: dlib's ``input_rgb_image`` defaults (the file stores its own, equal to these)
DLIB_MEAN = (122.782, 117.001, 104.298)
_INSTALL = "pip install 'vitrina[faces]'"

#: (channels, downsample) of the 14 residual blocks, input first
_BLOCKS: tuple[tuple[int, bool], ...] = (
    *((32, False),) * 3,
    (64, True),
    *((64, False),) * 3,
    (128, True),
    *((128, False),) * 2,
    (256, True),
    *((256, False),) * 2,
    (256, True),
)


def dlib_face_preprocess(mean: tuple[float, float, float] = DLIB_MEAN) -> Preprocess:
    """``(pixel - mean) / 256`` on 150x150 RGB chips, as a :class:`Preprocess` record
    (``x/255`` normalised by ``mean/255`` and ``std = 256/255``)."""
    return Preprocess(
        input_size=(150, 150),
        channels=3,
        mean=tuple(float(m) / 255.0 for m in mean),
        std=(256.0 / 255.0,) * 3,
        crop_pct=1.0,
        interpolation="bicubic",
    )


def dlib_resnet_file() -> Path:
    """The ``.dat`` file in the installed ``face-recognition-models`` package."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.origin:
        raise WeightsNotFoundError(f"dlib face models not installed: {_INSTALL}")
    path = Path(spec.origin).parent / "models" / DLIB_RESNET_FILE
    if not path.is_file():
        raise WeightsNotFoundError(f"{path}: dlib face model file missing: {_INSTALL}")
    return path


def _add_padded(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's add_prev: tensors of different shapes add as if zero-padded at the far ends."""
    if a.shape == b.shape:
        return a + b
    c, h, w = (max(a.shape[i], b.shape[i]) for i in (1, 2, 3))

    def pad(t: torch.Tensor) -> torch.Tensor:
        return F.pad(t, (0, w - t.shape[3], 0, h - t.shape[2], 0, c - t.shape[1]))

    return pad(a) + pad(b)


class _Block(nn.Module):
    """relu(shortcut + conv(relu(conv(x)))); a down block pools the shortcut 2x2."""

    def __init__(self, cin: int, cout: int, down: bool) -> None:
        super().__init__()
        stride, pad = (2, 0) if down else (1, 1)  # dlib pads 3x3 convs only at stride 1
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, pad)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1)
        self.down = down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(F.relu(self.conv1(x)))
        return F.relu(_add_padded(F.avg_pool2d(x, 2, 2) if self.down else x, y))


class DlibFaceResNet(nn.Module):
    """The network, with a classifier over its 128-d descriptor (``classifier``: what
    :class:`~vitrina.models.contract.LinearHeadModel` takes as the head, so ``embed`` is the
    descriptor)."""

    def __init__(self, num_classes: int = 1) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 7, 2, 0)
        self.pool = nn.MaxPool2d(3, 2)
        blocks, cin = [], 32
        for cout, down in _BLOCKS:
            blocks.append(_Block(cin, cout, down))
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(256, 128, bias=False)
        self.classifier = nn.Linear(128, num_classes)

    def descriptor(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.pool(F.relu(self.stem(x))))
        return self.fc(x.mean(dim=(2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.descriptor(x))

    def load_dat(self, path: Path) -> tuple[float, float, float]:
        """Weights from dlib's ``.dat`` file; returns the file's channel means."""
        mean, convs, fc = read_dlib_resnet(path)
        targets = [self.stem] + [c for b in self.blocks for c in (b.conv1, b.conv2)]
        if len(convs) != len(targets) or fc.shape != (128, 256):
            raise WeightsNotFoundError(f"{path}: not the layout of dlib's face ResNet v1")
        with torch.no_grad():
            for conv, c in zip(targets, convs, strict=True):
                if (tuple(c.weight.shape), c.stride, c.padding) != (
                    tuple(conv.weight.shape),
                    conv.stride[0],
                    conv.padding[0],
                ):
                    raise WeightsNotFoundError(f"{path}: not the layout of dlib's face ResNet v1")
                conv.weight.copy_(torch.from_numpy(c.weight))
                conv.bias.copy_(torch.from_numpy(c.bias))
            self.fc.weight.copy_(torch.from_numpy(fc))
        return mean


# --------------------------------------------------------------------------- the .dat format
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


@dataclass(frozen=True)
class _Conv:
    weight: np.ndarray  # (out, in, kh, kw), the following affine layer folded in
    bias: np.ndarray  # (out,)
    stride: int
    padding: int


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


def read_dlib_resnet(
    path: str | Path,
) -> tuple[tuple[float, float, float], list[_Conv], np.ndarray]:
    """``(channel means, convolutions input first with affines folded, fc weight (128, 256))``.

    Raises:
        WeightsNotFoundError: the file is not dlib's face ResNet v1 (another layout, damaged).
    """
    path = Path(path)
    try:
        layers = _read_layers(path.read_bytes())
    except (ValueError, IndexError, ZeroDivisionError) as exc:
        raise WeightsNotFoundError(f"{path}: not the layout of dlib's face ResNet v1") from exc
    except OSError as exc:
        raise WeightsNotFoundError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    code = "".join(kind for kind, _ in layers)
    if not _LAYOUT.fullmatch(code):
        raise WeightsNotFoundError(f"{path}: not the layout of dlib's face ResNet v1 ({code})")
    values = [v for _, v in layers]
    convs: list[_Conv] = [_fold(values[1], values[2])]
    i = 5
    while code[i] == "C":
        down = code[i + 5] == "P"
        if down and values[i + 5] != (2, 2):
            raise WeightsNotFoundError(f"{path}: not the layout of dlib's face ResNet v1")
        convs += [_fold(values[i], values[i + 1]), _fold(values[i + 3], values[i + 4])]
        i += 8 if down else 7
    weight, bias = values[-1]
    if bias is not None:
        raise WeightsNotFoundError(f"{path}: not the layout of dlib's face ResNet v1 (fc bias)")
    mean = tuple(float(v) for v in values[0])
    return mean, convs, np.ascontiguousarray(weight.T)  # type: ignore[return-value]


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
    return _Conv(
        np.ascontiguousarray(weight * gamma[:, None, None, None], dtype=np.float32),
        np.ascontiguousarray(bias * gamma + beta, dtype=np.float32),
        stride,
        padding,
    )
