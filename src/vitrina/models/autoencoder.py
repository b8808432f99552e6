"""A convolutional autoencoder whose encoder is any vitrina model.

The encoder is a zoo backbone (:class:`~vitrina.models.contract.VitrinaModel`) without its
classifier: ``encoder.embed(x)`` is the code, the same vector ``vitrina embed`` and ``index``
read from the encoder's run folder afterwards. The decoder (:class:`ConvDecoder`) maps the code
back to the image: a linear layer to a 4x4 map, then transposed convolutions (stride 2, batch
norm, ReLU) doubling it up to the input size, and a 3x3 convolution to the image's channels.
Reconstructions are compared with the normalised input the encoder saw.

The bottleneck is the pooled vector, not a spatial map: what the autoencoder learns to keep
is exactly what the embedding holds (so its features serve retrieval and linear probes as
they are), at the price of blurrier reconstructions than a spatial bottleneck would give.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vitrina.models.contract import VitrinaModel, drop_classifier

__all__ = ["Autoencoder", "ConvDecoder", "as_encoder"]


def as_encoder(model: VitrinaModel) -> VitrinaModel:
    """``model`` as an encoder: no classifier, no classes (what an encoder run folder holds;
    ``create(arch, weights=RUN, num_classes=n)`` gives it a fresh ``n``-class head)."""
    drop_classifier(model)
    model.num_classes = 0
    model.class_names = []
    return model


class ConvDecoder(nn.Module):
    """Code ``(B, D)`` -> image ``(B, channels, H, W)`` (see the module docstring).

    ``width``: channels of the first 4x4 map, halved at each upsampling (at least 16)."""

    def __init__(
        self, code: int, channels: int, size: tuple[int, int], *, width: int = 128
    ) -> None:
        super().__init__()
        h, w = int(size[0]), int(size[1])
        self.size, self.code, self.width = (h, w), int(code), int(width)
        ups = max(1, math.ceil(math.log2(max(h, w) / 4)))
        self.fc = nn.Linear(self.code, self.width * 16)
        layers: list[nn.Module] = []
        c = self.width
        for _ in range(ups):
            out = max(16, c // 2)
            layers += [
                nn.ConvTranspose2d(c, out, 4, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(out),
                nn.ReLU(inplace=True),
            ]
            c = out
        self.up = nn.Sequential(*layers)
        self.out = nn.Conv2d(c, channels, 3, padding=1)

    def settings(self) -> dict[str, Any]:
        return {"code": self.code, "size": list(self.size), "width": self.width}

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.fc(z)).view(len(z), self.width, 4, 4)
        x = self.out(self.up(x))
        if tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
        return x


class Autoencoder(nn.Module):
    """``encoder`` (a vitrina model without classifier) + :class:`ConvDecoder`.

    ``forward(x)`` -> ``(reconstruction, code)``; the loss compares the reconstruction with
    ``x``."""

    def __init__(self, encoder: VitrinaModel, *, width: int = 128) -> None:
        super().__init__()
        self.encoder = as_encoder(encoder)
        pre = encoder.preprocess
        self.decoder = ConvDecoder(
            encoder.num_features, pre.channels, tuple(pre.input_size), width=width
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        code = self.encoder.embed(x)
        return self.decoder(code), code
