"""vitrina's own small networks: fast to train from scratch on a CPU.

Both end in a single ``nn.Linear`` classifier (``classifier``), so the generic wrapper in
:mod:`vitrina.models.contract` finds the head and takes the 84-d input to it as the embedding.
"""

from __future__ import annotations

import torch
from torch import nn

from vitrina.models.preprocess import Preprocess

__all__ = ["LENET5_PREPROCESS", "TUTORIAL_CNN_PREPROCESS", "LeNet5", "TutorialCNN"]

#: Both take 32x32 only (``fixed_size``): their first linear layer is sized for the 16x5x5
#: map a 32x32 input leaves. Another size is refused before training
#: (:meth:`Preprocess.check_size`), not met as a shape error inside PyTorch.
LENET5_PREPROCESS = Preprocess(
    input_size=(32, 32), channels=1, mean=(0.5,), std=(0.5,), crop_pct=1.0, fixed_size=True
)
TUTORIAL_CNN_PREPROCESS = Preprocess(
    input_size=(32, 32),
    channels=3,
    mean=(0.5, 0.5, 0.5),
    std=(0.5, 0.5, 0.5),
    crop_pct=1.0,
    fixed_size=True,
)


class _ConvNet(nn.Module):
    """conv(c,6,5) - pool - conv(6,16,5) - pool - fc 120 - fc 84 - classifier."""

    def __init__(self, in_chans: int, num_classes: int) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, 6, 5),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        self.fc = nn.Sequential(
            nn.Flatten(1),
            nn.Linear(16 * 5 * 5, 120),
            nn.ReLU(inplace=True),
            nn.Linear(120, 84),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.fc(self.features(x)))


class LeNet5(_ConvNet):
    """LeCun et al. 1998 layout for 1x32x32 input, read the modern way (ReLU + max-pool)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__(1, num_classes)


class TutorialCNN(_ConvNet):
    """The CNN of PyTorch's "Training a classifier" (CIFAR-10) tutorial, 3x32x32 input."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__(3, num_classes)
