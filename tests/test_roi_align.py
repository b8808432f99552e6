"""vitrina's RoIAlign (separable matrix products) against torchvision's operator: the fast
path must give the plain one's outputs and gradients, whatever the regions."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops import roi_align as tv_roi_align

from vitrina.models.roi_align import SeparableRoIAlign, roi_align


def _regions(n: int, photos: int, h: int, w: int, scale: float, g: torch.Generator) -> torch.Tensor:
    """Regions in input pixels: inside the photo, tiny, on its edges and partly outside."""
    H, W = h / scale, w / scale
    xy = torch.rand(n, 2, generator=g) * torch.tensor([W, H]) * 1.1 - 0.05 * torch.tensor([W, H])
    wh = torch.rand(n, 2, generator=g) * torch.tensor([W, H]) * 0.7
    wh[: n // 4] *= 0.02  # smaller than a cell of the map
    boxes = torch.cat([xy, xy + wh], dim=1)
    edge = torch.tensor([[0.0, 0.0, W, H], [W - 2, H - 2, W + 5, H + 5], [-8.0, -8.0, 3.0, 3.0]])
    boxes = torch.cat([boxes, edge])
    photo = torch.randint(0, photos, (len(boxes), 1), generator=g).float()
    photo[-3:] = 0
    return torch.cat([photo, boxes], dim=1)


@pytest.mark.parametrize("sampling_ratio", [1, 2, 3])
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("hw", [(9, 13), (1, 6), (16, 16)])
def test_roi_align_gives_torchvisions_outputs_and_gradients(
    sampling_ratio: int, aligned: bool, hw: tuple[int, int]
) -> None:
    g = torch.Generator().manual_seed(sum(hw) * 10 + sampling_ratio + 2 * aligned)
    h, w = hw
    scale = 1 / 8
    x = torch.randn(3, 4, h, w, generator=g, dtype=torch.float64)
    rois = _regions(24, 2, h, w, scale, g).double()  # photo 2 has no region
    out_size = (7, 5)
    a = x.clone().requires_grad_(True)
    b = x.clone().requires_grad_(True)
    want = tv_roi_align(a, rois, out_size, scale, sampling_ratio, aligned)
    got = roi_align(b, rois, out_size, scale, sampling_ratio, aligned)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    grad = torch.randn(want.shape, generator=g, dtype=torch.float64)
    want.backward(grad)
    got.backward(grad)
    assert a.grad is not None and b.grad is not None
    torch.testing.assert_close(b.grad, a.grad, rtol=0, atol=1e-12)


def test_roi_align_float32_channels_last_and_an_adaptive_sampling_ratio() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 16, 28, 28, generator=g).contiguous(memory_format=torch.channels_last)
    rois = _regions(40, 2, 28, 28, 1 / 8, g)
    want = tv_roi_align(x, rois, (7, 7), 1 / 8, 2)
    torch.testing.assert_close(roi_align(x, rois, (7, 7), 1 / 8, 2), want, rtol=0, atol=1e-5)
    # sampling_ratio <= 0: a sample count per region, left to torchvision (the same op)
    assert torch.equal(roi_align(x, rois, (7, 7), 1 / 8, 0), tv_roi_align(x, rois, (7, 7), 1 / 8))
    assert roi_align(x, rois[:0], (7, 7), 1 / 8, 2).shape == (0, 16, 7, 7)


def test_separable_pool_is_torchvisions_multiscale_pool() -> None:
    """Each region pooled from the same pyramid level, with the same numbers and gradients;
    no weights, so runs saved with torchvision's pool load unchanged."""
    g = torch.Generator().manual_seed(2)
    names = ["0", "1", "2"]
    maps = {
        n: torch.randn(2, 8, 64 // 2**i, 48 // 2**i, generator=g, dtype=torch.float64)
        for i, n in enumerate(names)
    }
    maps["extra"] = torch.randn(2, 8, 4, 3, generator=g, dtype=torch.float64)  # not pooled
    boxes = [_regions(30, 1, 512, 384, 1.0, g)[:, 1:].double() for _ in range(2)]
    boxes = [b.clamp(min=0) for b in boxes]
    boxes = [torch.cat([b[:, :2], torch.maximum(b[:, 2:], b[:, :2] + 1)], 1) for b in boxes]
    shapes = [(512, 384)] * 2
    plain = MultiScaleRoIAlign(names, 7, 2)
    fast = SeparableRoIAlign(names, 7, 2)
    assert dict(fast.state_dict()) == dict(plain.state_dict()) == {}
    a = {k: v.clone().requires_grad_(True) for k, v in maps.items()}
    b = {k: v.clone().requires_grad_(True) for k, v in maps.items()}
    want, got = plain(a, boxes, shapes), fast(b, boxes, shapes)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    grad = torch.randn(want.shape, generator=g, dtype=torch.float64)
    want.backward(grad)
    got.backward(grad)
    for n in names:  # a level no region maps to: no gradient, torchvision's is zeros
        assert a[n].grad is not None
        got_grad = b[n].grad if b[n].grad is not None else torch.zeros_like(a[n])
        torch.testing.assert_close(got_grad, a[n].grad, rtol=0, atol=1e-12)
    assert b["extra"].grad is None
    one = SeparableRoIAlign(["0"], 7, 2)  # one level: no level mapping
    torch.testing.assert_close(
        one(maps, boxes, shapes), MultiScaleRoIAlign(["0"], 7, 2)(maps, boxes, shapes)
    )
