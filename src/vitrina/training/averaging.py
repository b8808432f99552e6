"""An exponential moving average of the weights, as a callback of the training loop.

Short runs on small batches end on weights that the last few hundred steps' noise has moved
about; their average over those steps is a better model (Polyak averaging; YOLO's and DETR's
recipes keep one). timm's :class:`~timm.utils.ModelEmaV3` keeps the average; this callback
decides when the model *is* the average: each epoch's validation and checkpoints see the
averaged weights, and training goes on from its own.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vitrina.training.loop import Callback, LoopState

__all__ = ["AveragedWeights"]


class AveragedWeights(Callback):
    """Keeps an exponential moving average of ``model``'s weights (parameters and buffers),
    updated after every optimizer step with timm's warmed-up decay ``1 - (1 + t)^-power``
    (capped at ``decay``: early steps move the average most, when the weights change fast).

    After each epoch's training steps the model holds the average, so validation, the best
    checkpoint and the resume point are of averaged weights; the next epoch puts the trained
    weights back first. When training ends the model keeps the average.

    ``start_step``: optimizer steps already taken (a resumed run: the average restarts from the
    weights it resumes, with the decay of that step)."""

    def __init__(
        self, model: nn.Module, decay: float = 0.999, power: float = 0.75, start_step: int = 0
    ) -> None:
        from timm.utils import ModelEmaV3

        self.model = model
        self.ema = ModelEmaV3(model, decay=decay, use_warmup=True, warmup_power=power)
        self.step = int(start_step)
        self._trained: dict[str, torch.Tensor] | None = None

    def on_epoch_start(self, state: LoopState) -> None:
        if self._trained is not None:
            self.model.load_state_dict(self._trained)
            self._trained = None

    def on_batch_end(self, state: LoopState) -> None:
        self.step += 1
        self.ema.update(self.model, step=self.step)

    def on_batches_end(self, state: LoopState) -> None:
        self._trained = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.model.load_state_dict(self.ema.module.state_dict())

    def on_fit_end(self, state: LoopState) -> None:
        self._trained = None  # the model keeps the average

    def decay_now(self) -> float:
        """The decay of the last update (0 before any)."""
        return float(self.ema.get_decay(self.step)) if self.step else 0.0

    def describe(self) -> dict[str, Any]:
        return {"decay": self.ema.decay, "power": self.ema.warmup_power, "steps": self.step}
