"""RoIAlign as two small matrix products: torchvision's numbers, BLAS's speed.

torchvision's ``roi_align`` on a CPU loops over regions, channels and sample points, and its
backward pass scatters every sample into the feature map one value at a time: measured on
the detection benchmark's training step (Faster R-CNN over EfficientNet-Lite0 at 224, 8
photos, 64 regions each, 2 cores), a quarter of the step was ``_roi_align_backward``.

But RoIAlign is linear in the feature map, and its weights separate by axis. Each output bin
averages ``s x s`` bilinear samples; a sample's weight on pixel ``(y, x)`` is
``wy(y) * wx(x)``, and the rules that zero or clamp a sample do so per axis too. So for a
region ``r`` of photo ``b``, channel by channel::

    out[r, :, i, j] = sum_y sum_x  Ay[r, i, y] * X[b, :, y, x] * Ax[r, j, x]

with ``Ay`` ``(ph, H)`` and ``Ax`` ``(pw, W)`` holding the summed sample weights of each bin
row and column. That is ``Ay @ X @ Ax^T``: one matrix product for the columns of all the
regions of a photo, then a small one per region; the backward pass is the same products
transposed. :func:`roi_align` computes torchvision's ``roi_align`` this way (the same
sample positions, validity rule, clamping and averaging: the same numbers to float rounding;
tests hold both the outputs and the gradients equal), and :class:`SeparableRoIAlign` is
torchvision's ``MultiScaleRoIAlign`` over it. Tracing (ONNX export) keeps torchvision's
operator, which ONNX has, and so do GPUs, whose kernels scatter in parallel.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops import roi_align as tv_roi_align
from torchvision.ops.poolers import _convert_to_roi_format, _filter_input, _setup_scales

__all__ = ["SeparableRoIAlign", "roi_align"]


def _axis_weights(
    start: Tensor, length: Tensor, bins: int, samples: int, size: int, aligned: bool
) -> Tensor:
    """``(R, bins, size)``: each bin's summed bilinear weights over one axis of the map,
    divided by ``samples`` (torchvision's ``roi_align`` rules for a fixed sampling ratio)."""
    if not aligned:
        length = length.clamp(min=1.0)
    step = (torch.arange(bins * samples, dtype=start.dtype, device=start.device) + 0.5) / samples
    pos = start[:, None] + (length / bins)[:, None] * step  # (R, bins * samples)
    valid = (pos >= -1.0) & (pos <= size)
    pos = pos.clamp(min=0.0)
    low = pos.floor().long()
    top = low >= size - 1
    low = torch.where(top, torch.full_like(low, size - 1), low)
    pos = torch.where(top, low.to(pos.dtype), pos)
    high = (low + 1).clamp(max=size - 1)
    frac = pos - low.to(pos.dtype)
    keep = valid.to(pos.dtype) / samples
    w = torch.zeros(pos.shape[0], bins * samples, size, dtype=pos.dtype, device=pos.device)
    w.scatter_add_(2, low[..., None], ((1 - frac) * keep)[..., None])
    w.scatter_add_(2, high[..., None], (frac * keep)[..., None])
    return w.reshape(pos.shape[0], bins, samples, size).sum(dim=2)


def roi_align(
    input: Tensor,
    rois: Tensor,
    output_size: tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> Tensor:
    """torchvision's ``roi_align(input, rois, ...)`` (``rois``: ``(R, 5)``, the photo's
    index first) as separable matrix products on a CPU; an adaptive ``sampling_ratio``
    (<= 0, a different sample count per region), other devices and tracing go to
    torchvision's operator. No gradient flows to ``rois`` (as in torchvision's)."""
    ph, pw = output_size
    if (
        sampling_ratio <= 0
        or input.device.type != "cpu"  # GPUs: torchvision's kernels scatter in parallel
        or torch.jit.is_tracing()
        or torch.onnx.is_in_onnx_export()
    ):
        return tv_roi_align(input, rois, output_size, spatial_scale, sampling_ratio, aligned)
    n, c, h, w = input.shape
    out_dtype = input.dtype
    with torch.autocast(input.device.type, enabled=False):  # torchvision's op runs in fp32
        x = input if input.dtype == torch.float64 else input.float()
        with torch.no_grad():
            r = rois.detach().to(x.dtype)
            offset = 0.5 if aligned else 0.0
            x1 = r[:, 1] * spatial_scale - offset
            y1 = r[:, 2] * spatial_scale - offset
            ax = _axis_weights(x1, r[:, 3] * spatial_scale - offset - x1, pw, sampling_ratio, w,
                               aligned)  # fmt: skip
            ay = _axis_weights(y1, r[:, 4] * spatial_scale - offset - y1, ph, sampling_ratio, h,
                               aligned)  # fmt: skip
            photo = r[:, 0].long()
        out = x.new_zeros(r.shape[0], c, ph, pw)
        for b in range(n):
            idx = torch.nonzero(photo == b).flatten()
            k = idx.numel()
            if k == 0:
                continue
            # the columns of every region in one product: (C*H, W) @ (W, k*pw) ...
            cols = x[b].reshape(c * h, w) @ ax[idx].reshape(k * pw, w).t()
            cols = cols.reshape(c, h, k, pw).permute(2, 1, 0, 3).reshape(k, h, c * pw)
            # ... then the rows, region by region: (ph, H) @ (H, C*pw)
            pooled = torch.bmm(ay[idx], cols).reshape(k, ph, c, pw).permute(0, 2, 1, 3)
            out.index_copy_(0, idx, pooled)
    return out.to(out_dtype)


class SeparableRoIAlign(MultiScaleRoIAlign):
    """torchvision's ``MultiScaleRoIAlign`` (the same level of the pyramid for each region,
    the same outputs) pooling with :func:`roi_align`. No weights: runs saved with
    torchvision's pool load into it unchanged."""

    def forward(  # type: ignore[override]
        self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]
    ) -> Tensor:
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            return super().forward(x, boxes, image_shapes)
        features = _filter_input(x, self.featmap_names)
        if self.scales is None or self.map_levels is None:
            self.scales, self.map_levels = _setup_scales(
                features, image_shapes, self.canonical_scale, self.canonical_level
            )
        rois = _convert_to_roi_format(boxes)
        size = tuple(self.output_size)
        if len(features) == 1:
            return roi_align(features[0], rois, size, self.scales[0], self.sampling_ratio)
        levels = self.map_levels(boxes)
        result = features[0].new_zeros((len(rois), features[0].shape[1], *size))
        for level, (feature, scale) in enumerate(zip(features, self.scales, strict=True)):
            idx = torch.where(levels == level)[0]
            pooled = roi_align(feature, rois[idx], size, scale, self.sampling_ratio)
            result.index_copy_(0, idx, pooled.to(result.dtype))
        return result
