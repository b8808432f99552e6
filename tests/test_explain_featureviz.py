"""Layer views (filters, feature maps), feature visualization and DeepDream on tiny models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from conftest import one_line_error
from vitrina.errors import VitrinaError
from vitrina.explain import featureviz as fv
from vitrina.explain import layers as lv
from vitrina.models import Preprocess, VitrinaModel, create

TINY = Preprocess(input_size=(32, 32), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), crop_pct=1.0)


@pytest.fixture
def cnn() -> VitrinaModel:
    torch.manual_seed(0)
    return create("tutorial_cnn")


def colour_model(preprocess: Preprocess = TINY) -> VitrinaModel:
    """conv 1x1 (identity) -> BN -> global mean -> logits: class k = colour k minus the others,
    so the image that maximises logit k (or channel k of ``net.0``) is pure colour k."""
    net = nn.Sequential(
        nn.Conv2d(3, 3, 1),
        nn.BatchNorm2d(3),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(1),
        nn.Linear(3, 3),
    )
    with torch.no_grad():
        net[0].weight.copy_(torch.eye(3).view(3, 3, 1, 1))
        net[0].bias.zero_()
        net[4].weight.copy_(2 * torch.eye(3) - 1)
        net[4].bias.zero_()
    return VitrinaModel.wrap(net, arch="colours", preprocess=preprocess)


def activation(model: VitrinaModel, images: np.ndarray, layer: str, channel: int) -> np.ndarray:
    """Mean activation of ``channel`` for (N, H, W, 3) images in [0, 1] (naive reference)."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        out = lv.layer_extractor(model.eval(), layer)(lv.to_network_input(model, x))[layer]
    return out[:, channel].mean(dim=(1, 2)).numpy()


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def no_hooks(model: nn.Module) -> bool:
    return not any(
        m._forward_hooks or m._forward_pre_hooks or m._backward_hooks for m in model.modules()
    )


# --------------------------------------------------------------------------- visualize


def test_visualize_raises_channel_far_above_grey_and_random_images(cnn):
    res = fv.visualize(cnn, layer="features.3", channel=3, steps=128, seed=0)
    assert res.array.shape == (32, 32, 3) and res.array.dtype == np.float32
    assert res.image.size == (32, 32) and res.array.min() >= 0.0 and res.array.max() <= 1.0
    assert (res.layer, res.channel, res.class_index) == ("features.3", 3, None)
    rng = np.random.default_rng(0)
    random = activation(cnn, rng.random((50, 32, 32, 3)).astype(np.float32), "features.3", 3)
    grey = activation(cnn, np.full((1, 32, 32, 3), 0.5, np.float32), "features.3", 3)[0]
    best = activation(cnn, res.array[None], "features.3", 3)[0]
    assert best > max(grey, random.max()) + 5 * random.std()
    curve = res.objective_curve
    assert len(curve) == 128 and np.mean(curve[-10:]) > np.mean(curve[:10]) + 5 * random.std()


@pytest.mark.parametrize("param", ["fourier", "pixel"])
@pytest.mark.parametrize("transforms", ["standard", "none"])
def test_visualize_channel_of_colour_detector_paints_that_colour(param, transforms):
    model = colour_model()
    for k in range(3):
        res = fv.visualize(
            model, layer="0", channel=k, steps=48, lr=0.1, param=param, transforms=transforms
        )
        means = res.array.mean(axis=(0, 1))
        assert means.argmax() == k and means[k] > 0.75, (k, means)


def test_visualize_class_logit_paints_the_class_colour():
    model = colour_model().eval()
    for k in range(3):
        res = fv.visualize(model, class_index=k, steps=64, lr=0.3)
        means = res.array.mean(axis=(0, 1))
        others = np.delete(means, k)
        assert means[k] > 0.45 and others.max() < 0.25, (k, means)
        assert (res.layer, res.channel, res.class_index) == (None, None, k)
        with torch.no_grad():
            x = torch.from_numpy(res.array).permute(2, 0, 1)[None]
            assert int(model.classify(lv.to_network_input(model, x)).argmax()) == k


def test_visualize_same_seed_same_image_other_seed_other_image(cnn):
    kw = dict(layer="features.3", channel=1, steps=8)
    a, b = fv.visualize(cnn, seed=3, **kw), fv.visualize(cnn, seed=3, **kw)
    c = fv.visualize(cnn, seed=4, **kw)
    assert np.array_equal(a.array, b.array) and a.objective_curve == b.objective_curve
    assert np.abs(a.array - c.array).mean() > 1e-3


def test_visualize_sizes_progress_and_grey_models(cnn):
    calls = []
    res = fv.visualize(
        cnn, layer="features.1", steps=3, size=(24, 40), on_progress=lambda *a: calls.append(a)
    )
    assert res.array.shape == (24, 40, 3) and res.channel is None  # whole-layer objective
    assert calls == [(1, 3), (2, 3), (3, 3)]
    assert fv.visualize(cnn, steps=1).layer == lv.default_layers(cnn)[-2]
    grey = fv.visualize(create("lenet5"), layer="features.0", channel=0, steps=4).array
    assert grey.shape == (32, 32, 3) and np.array_equal(grey[..., 0], grey[..., 2])


def test_visualize_default_size_is_capped_only_when_the_network_allows_it():
    big = Preprocess(input_size=(200, 200), crop_pct=1.0)
    assert fv.visualize(colour_model(big), layer="0", steps=1).array.shape == (160, 160, 3)
    # flatten + linear: only its own input size works, so the default falls back to it
    fixed = VitrinaModel.wrap(
        nn.Sequential(nn.Conv2d(3, 2, 4, stride=4), nn.Flatten(1), nn.Linear(2 * 50 * 50, 2)),
        arch="fixed",
        preprocess=big,
    )
    assert fv.visualize(fixed, class_index=0, steps=1).array.shape == (200, 200, 3)


def test_visualize_and_dream_leave_the_model_as_they_found_it():
    model = colour_model()
    model.train()
    model.net[0].bias.requires_grad_(False)
    before = snapshot(model)
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    fv.visualize(model, layer="1", channel=0, steps=5)
    fv.visualize(model, class_index=1, steps=5)
    fv.dream(model, np.full((40, 40, 3), 0.4, np.float32), layer="1", steps=2, octaves=2)
    lv.first_layer_filters(model)
    lv.feature_maps(model, np.full((40, 40, 3), 0.4, np.float32))  # default layers
    assert fv.visualize(model, steps=2).layer == "1"  # the only stage: 3 x 32 x 32
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN stats untouched: eval
    assert {n: p.requires_grad for n, p in model.named_parameters()} == grads
    assert all(m.training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
    assert no_hooks(model)


def test_visualize_bad_requests_fail_in_one_line(cnn):
    with pytest.raises(VitrinaError) as e:
        fv.visualize(cnn, layer="featurs.3", steps=1)
    one_line_error(str(e.value), "no layer 'featurs.3'", "features.3")
    with pytest.raises(VitrinaError) as e:
        fv.visualize(cnn, layer="features.3", channel=16, steps=1)
    one_line_error(str(e.value), "channel 16", "16 channels")
    with pytest.raises(VitrinaError) as e:
        fv.visualize(cnn, class_index=10, steps=1)
    one_line_error(str(e.value), "class_index 10", "10 classes")
    with pytest.raises(VitrinaError, match="not both"):
        fv.visualize(cnn, layer="features.3", class_index=1)
    with pytest.raises(VitrinaError, match="fourier, pixel"):
        fv.visualize(cnn, param="fft")


# --------------------------------------------------------------------------- dream


def test_dream_keeps_size_amplifies_the_layer_and_is_reproducible(cnn):
    rng = np.random.default_rng(1)
    photo = (rng.random((40, 50, 3)) * 255).astype(np.uint8)
    a = fv.dream(cnn, photo, layer="features.3", steps=10, max_side=50)
    assert isinstance(a, Image.Image) and a.size == (50, 40)
    out = np.asarray(a)
    assert np.abs(out.astype(int) - photo).mean() > 5

    # what the layer sees (squared activation) grows
    def energy(img: np.ndarray) -> float:
        x = torch.from_numpy(img.astype(np.float32) / 255).permute(2, 0, 1)[None]
        with torch.no_grad():
            act = lv.layer_extractor(cnn, "features.3")(lv.to_network_input(cnn, x))
        return float(act["features.3"].pow(2).mean())

    assert energy(out) > 2 * energy(photo)
    assert np.array_equal(
        out, np.asarray(fv.dream(cnn, photo, layer="features.3", steps=10, max_side=50))
    )
    other = fv.dream(cnn, photo, layer="features.3", steps=10, max_side=50, seed=1)
    assert not np.array_equal(out, np.asarray(other))


def test_dream_on_a_large_photo_returns_its_size(cnn, tmp_path):
    path = tmp_path / "big.png"
    Image.fromarray(np.full((300, 200, 3), 128, np.uint8)).save(path)
    calls = []
    out = fv.dream(cnn, path, layer="features.1", steps=2, on_progress=lambda *a: calls.append(a))
    assert out.size == (200, 300)
    assert calls[-1][0] == calls[-1][1] == len(calls)  # counts steps over all octaves
    with pytest.raises(VitrinaError) as e:
        fv.dream(cnn, path, layer="nope")
    one_line_error(str(e.value), "no layer 'nope'")


# --------------------------------------------------------------------------- layer views


def test_first_layer_filters_are_scaled_around_grey(cnn):
    w = cnn.net.features[0].weight.detach()
    f = lv.first_layer_filters(cnn)
    assert f.shape == (6, 5, 5, 3) and f.dtype == np.float32
    # each filter: its largest |weight| maps to 0 or 1, zero maps to 0.5, signs kept
    peak = w.abs().amax(dim=(1, 2, 3)).numpy()
    expected = 0.5 + 0.5 * w.permute(0, 2, 3, 1).numpy() / peak[:, None, None, None]
    assert np.allclose(f, expected, atol=1e-6)
    assert np.allclose(np.maximum(f.max(axis=(1, 2, 3)), 1 - f.min(axis=(1, 2, 3))), 1.0)
    assert lv.first_layer_filters(create("lenet5")).shape == (6, 5, 5, 1)


def test_filters_grid_tiles_each_filter_with_nearest_upscaling(cnn):
    f = lv.first_layer_filters(cnn)
    grid = np.asarray(lv.filters_grid(cnn))
    # 6 filters of 5x5, x6 -> 30-pixel tiles, 3 columns x 2 rows, 2-pixel gaps
    assert grid.shape == (2 + 2 * 32, 2 + 3 * 32, 3)
    second = grid[2 : 2 + 30, 34 : 34 + 30]  # filter 1: row 0, column 1
    assert np.array_equal(second[::6, ::6], (f[1] * 255).round().astype(np.uint8))


def test_first_conv_is_the_one_that_runs_first():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.late = nn.Conv2d(8, 4, 3)  # defined first, runs second
            self.stem = nn.Conv2d(3, 8, 7)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.pool(self.late(self.stem(x))).flatten(1))

    model = VitrinaModel.wrap(Net(), arch="net", preprocess=TINY)
    assert lv.first_layer_filters(model).shape == (8, 7, 7, 3)
    assert no_hooks(model)


def test_feature_maps_strongest_channels_first_in_unit_range(cnn):
    rng = np.random.default_rng(2)
    photo = (rng.random((40, 40, 3)) * 255).astype(np.uint8)
    fm = lv.feature_maps(cnn, photo, ["features.1", "net.features.4"], top=4)
    assert list(fm) == ["features.1", "features.4"]
    assert fm["features.1"].maps.shape == (4, 28, 28) and fm["features.1"].shape == (6, 28, 28)
    assert fm["features.4"].maps.shape == (4, 10, 10)
    # naive reference: the network's own modules, channel means sorted
    from vitrina.data.transforms import eval_transform

    x = eval_transform(cnn.preprocess)(Image.fromarray(photo))[None]
    with torch.no_grad():
        ref = cnn.net.features[:5](x)[0]
    means = ref.mean(dim=(1, 2)).numpy()
    f4 = fm["features.4"]
    assert list(f4.channels) == list(np.argsort(-means)[:4])
    assert np.allclose(f4.strengths, np.sort(means)[::-1][:4], atol=1e-5)
    for f in fm.values():
        assert f.maps.dtype == np.float32 and f.maps.min() >= 0.0 and f.maps.max() <= 1.0
        assert np.all(np.diff(f.strengths) <= 0)
        top_ = f.maps.max(axis=(1, 2))  # each map on its own scale: min 0, max 1 (or all 0)
        assert np.allclose(f.maps.min(axis=(1, 2)), 0.0)
        assert np.all(np.isclose(top_, 1.0) | (top_ == 0.0))
    assert len(lv.feature_maps(cnn, photo, ["features.1"], top=50)["features.1"].channels) == 6


def test_feature_maps_default_layers_and_bad_layers(cnn):
    photo = np.full((40, 40, 3), 0.3, np.float32)
    assert lv.default_layers(cnn) == ["features.1", "features.2", "features.4", "features.5"]
    assert list(lv.feature_maps(cnn, photo, top=2)) == lv.default_layers(cnn)
    with pytest.raises(VitrinaError) as e:
        lv.feature_maps(cnn, photo, ["fc.1"])
    one_line_error(str(e.value), "'fc.1'", "not a feature map")
    with pytest.raises(VitrinaError) as e:
        lv.feature_maps(cnn, photo, ["feature.4"])
    one_line_error(str(e.value), "no layer 'feature.4'", "features.4")


def test_figure_and_png_writer(cnn, tmp_path):
    photo = np.full((40, 40, 3), 0.3, np.float32)
    fig = lv.feature_maps_figure(cnn, photo, ["features.1", "features.4"], top=3)
    assert fig.mode == "RGB" and fig.width == 6 + 4 * (lv.MAP_TILE + 6)
    paths = lv.write_layer_views(cnn, photo, tmp_path / "out", top=3)
    assert sorted(p.name for p in paths.values()) == ["feature_maps.png", "filters.png"]
    for p in paths.values():
        with Image.open(p) as im:
            assert im.format == "PNG" and im.width > 50
