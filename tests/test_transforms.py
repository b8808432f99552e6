from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vitrina.data.transforms import eval_transform, plain_eval_transform, train_transform
from vitrina.models.preprocess import Preprocess


def photo(w: int, h: int, seed: int = 0) -> Image.Image:
    """A smooth gradient with some texture: like a photo, unlike noise."""
    y, x = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(seed)
    a = np.stack([x * 255 / w, y * 255 / h, (x + y) * 127 / (w + h)], -1)
    a = a + rng.normal(0, 4, a.shape)
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


@pytest.mark.parametrize("size", [(500, 375), (375, 500), (224, 224), (1000, 90), (40, 40)])
@pytest.mark.parametrize(
    "pre",
    [
        Preprocess(mean=(0.5,) * 3, std=(0.5,) * 3, interpolation="bicubic"),
        Preprocess(input_size=(32, 32), channels=1, mean=(0.5,), std=(0.5,), crop_pct=1.0),
        Preprocess(input_size=(299, 299), crop_pct=0.875),
    ],
)
def test_fast_eval_transform_matches_torchvision(size: tuple[int, int], pre: Preprocess) -> None:
    img = photo(*size)
    fast, plain = eval_transform(pre)(img), plain_eval_transform(pre)(img)
    assert fast.shape == plain.shape == (pre.channels, *pre.input_size)
    assert fast.dtype == torch.float32
    # same geometry; only resampling at the crop border may differ slightly
    assert (fast - plain).abs().mean() < 0.02
    assert (fast - plain).abs().max() < 0.25


def test_train_transform_none_equals_eval_and_light_varies() -> None:
    pre = Preprocess()
    img = photo(300, 200)
    assert torch.equal(train_transform(pre, "none")(img), eval_transform(pre)(img))
    torch.manual_seed(0)
    a, b = train_transform(pre, "light")(img), train_transform(pre, "light")(img)
    assert a.shape == b.shape == (3, 224, 224) and not torch.equal(a, b)
    with pytest.raises(ValueError, match="augment"):
        train_transform(pre, "heavy")


def test_reduced_jpeg_decoding_matches_full_decoding(tmp_path) -> None:
    """The draft fast path of read_image against a full decode, through the eval transform."""
    from vitrina.io import read_image

    path = tmp_path / "big.jpg"
    photo(2400, 1800).save(path, quality=92)
    pre = Preprocess(mean=(0.5,) * 3, std=(0.5,) * 3, interpolation="bicubic")
    tf = eval_transform(pre)
    fast_img = read_image(path, min_side=256)
    full_img = read_image(path)
    assert min(fast_img.size) >= 256 and fast_img.size[0] < full_img.size[0]  # really reduced
    fast, full = tf(fast_img), tf(full_img)
    assert (fast - full).abs().mean() < 0.02
    # small images and non-JPEGs are decoded as they are
    small = tmp_path / "small.jpg"
    photo(300, 200).save(small)
    assert read_image(small, min_side=256).size == (300, 200)


def test_side_light_darkens_one_side_and_keeps_the_photo() -> None:
    from vitrina.data.transforms import SideLight

    flat = Image.fromarray(np.full((60, 80, 3), 200, np.uint8))
    torch.manual_seed(0)
    lit = [np.asarray(SideLight(strength=(0.6, 0.6), gamma=(1, 1), p=1.0)(flat)) for _ in range(8)]
    for a in lit:
        assert a.shape == (60, 80, 3) and a.dtype == np.uint8
        assert a.max() >= 195 and a.min() <= 90  # 1 on one side, 0.4 on the other
    # the direction varies: not always the left side that is dark
    assert len({int(np.argmin(a.mean(axis=(0, 2)))) for a in lit}) > 1
    grey = Image.fromarray(np.full((20, 20), 100, np.uint8), mode="L")
    assert SideLight(p=1.0)(grey).mode == "L"
    assert SideLight(p=0.0)(flat) is flat


def test_low_resolution_loses_detail_at_the_same_size() -> None:
    from vitrina.data.transforms import LowResolution

    sharp = photo(112, 112, seed=3)
    torch.manual_seed(0)
    blurred = LowResolution(sides=(24, 24), p=1.0)(sharp)
    assert blurred.size == sharp.size
    detail = lambda im: np.abs(np.diff(np.asarray(im, np.float32), axis=1)).mean()  # noqa: E731
    assert detail(blurred) < 0.6 * detail(sharp)
    small = photo(20, 20)
    assert LowResolution(sides=(24, 64), p=1.0)(small) is small  # never upscales


def test_the_camera_augmentation_varies_more_than_reid_and_keeps_the_shape() -> None:
    from vitrina.data.transforms import reid_train_transform

    pre = Preprocess(input_size=(112, 96), mean=(0.5,) * 3, std=(0.5,) * 3)
    img = photo(92, 112, seed=1)

    def spread(augment: str) -> float:
        torch.manual_seed(0)
        xs = torch.stack([reid_train_transform(pre, augment)(img) for _ in range(24)])
        assert xs.shape == (24, 3, 112, 96)
        return float(xs.mean(dim=(1, 2, 3)).std())  # how much the overall light varies

    assert spread("camera") > 2 * spread("reid")
