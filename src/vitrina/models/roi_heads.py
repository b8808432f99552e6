"""Faster R-CNN's box head with a label-smoothed classifier loss and tempered class scores.

torchvision's ``RoIHeads`` computes its classifier loss as a plain cross-entropy inside its
``forward`` (``fastrcnn_loss``). :class:`SmoothedRoIHeads` keeps every step of it and replaces
only that term by the cross-entropy with ``label_smoothing`` over the same sampled regions and
the same logits. Why and what it measured: :data:`vitrina.models.detection.BOX_LABEL_SMOOTHING`.

At inference the boxes are scored by torchvision's ``postprocess_detections`` with the class
logits divided by ``score_temperature`` first (1: torchvision's scores exactly): label
smoothing keeps the logits of the classes close together, and a temperature below 1 spreads
them again. It orders each class's boxes by how far the class leads the others, where the
plain softmax ranks a box whose class is only the runner-up close to one where it leads. Why
and what it measured: :data:`vitrina.detect.fitted.DEFAULT_SCORE_TEMPERATURE`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchvision.models.detection.roi_heads import RoIHeads

__all__ = ["SmoothedRoIHeads"]


class SmoothedRoIHeads(RoIHeads):
    """``RoIHeads`` whose training ``loss_classifier`` is label-smoothed by
    ``label_smoothing`` (0: torchvision's loss exactly) and whose boxes are scored with the
    class logits divided by ``score_temperature`` (1: torchvision's scores exactly)."""

    label_smoothing: float = 0.0
    score_temperature: float = 1.0

    def postprocess_detections(  # type: ignore[override]
        self,
        class_logits: torch.Tensor,
        box_regression: torch.Tensor,
        proposals: Any,
        image_shapes: Any,
    ) -> Any:
        if self.score_temperature != 1.0:
            class_logits = class_logits / self.score_temperature
        return super().postprocess_detections(class_logits, box_regression, proposals, image_shapes)

    def select_training_samples(self, proposals: Any, targets: Any) -> Any:
        out = super().select_training_samples(proposals, targets)
        if self.label_smoothing:
            self._sampled_labels = out[2]  # the class each sampled region learns
        return out

    def forward(  # type: ignore[override]
        self, features: Any, proposals: Any, image_shapes: Any, targets: Any = None
    ) -> Any:
        if not self.training or not self.label_smoothing:
            return super().forward(features, proposals, image_shapes, targets)
        seen: dict[str, torch.Tensor] = {}
        hook = self.box_predictor.register_forward_hook(
            lambda _m, _i, out: seen.__setitem__("logits", out[0])
        )
        try:
            result, losses = super().forward(features, proposals, image_shapes, targets)
        finally:
            hook.remove()
        labels = torch.cat(self._sampled_labels, dim=0)
        del self._sampled_labels
        losses["loss_classifier"] = nn.functional.cross_entropy(
            seen["logits"], labels, label_smoothing=self.label_smoothing
        )
        return result, losses
