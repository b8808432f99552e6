"""vitrina.explain attribution core: CAMs and gradient attributions as arrays.

A small CNN is trained here on generated 64x64 images where class ``patch`` has a bright
square at a random position and class ``plain`` is noise only; every method must then point
at the square on held-out images (the pointing game).
"""

from __future__ import annotations

import copy
import gc
import os
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from conftest import one_line_error
from vitrina.errors import UnknownNameError, VitrinaError
from vitrina.explain.attribution import (
    METHODS,
    crop_box,
    explain,
    explain_batch,
    explain_similarity,
    iter_explain,
    map_to_image,
    overlay,
)
from vitrina.explain.targets import probe_layers, resolve_layer
from vitrina.models import Preprocess, VitrinaModel, create
from vitrina.models.embedding import EmbeddingModel

SIDE = 64
ALL = METHODS.names()
CAMS = ["eigencam", "gradcam", "gradcam++", "layercam", "scorecam"]
# Mass inside the patch, mean over held-out images; the patch covers ~5% of the image.
# Measured on this model: 0.47 (CAMs, 16x16 maps) .. 0.73 (occlusion).
MIN_MASS = 0.35
MIN_HITS = 0.75  # share of images whose peak lies inside the patch


def patch_batch(rng: np.random.Generator, n: int, positive: bool | None = None):
    """(n, 64, 64, 3) uint8 noise images; class 1 has a bright square of side 12-16.

    Returns the images, labels and per image ``(x, y, side)`` of the square (None for class 0).
    """
    ys = rng.integers(0, 2, n) if positive is None else np.full(n, int(positive))
    a = rng.normal(110, 35, (n, SIDE, SIDE, 3))
    boxes: list[tuple[int, int, int] | None] = []
    for i, y in enumerate(ys):
        if not y:
            boxes.append(None)
            continue
        s = int(rng.integers(12, 17))
        x0, y0 = (int(v) for v in rng.integers(2, SIDE - s - 2, 2))
        a[i, y0 : y0 + s, x0 : x0 + s] = rng.normal(235, 8, (s, s, 3))
        boxes.append((x0, y0, s))
    return np.clip(a, 0, 255).astype(np.uint8), ys, boxes


class PatchNet(nn.Module):
    """Three 3x3 convs, one max-pool (a 16x16 map for CAMs), global average pooling, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=1),
            nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Flatten(1)
        self.classifier = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.fc(self.pool(self.features(x))))


def patch_model(input_size: int = 32, crop_pct: float = 1.0) -> VitrinaModel:
    pre = Preprocess(
        input_size=(input_size, input_size), mean=(0.5,) * 3, std=(0.5,) * 3, crop_pct=crop_pct
    )
    return VitrinaModel.wrap(
        PatchNet(), arch="patch_cnn", preprocess=pre, class_names=["plain", "patch"]
    )


def _to_input(a: np.ndarray) -> torch.Tensor:
    # What the model's eval transform does to a 64x64 image for a 32x32 input (to rounding).
    return F.avg_pool2d(torch.from_numpy(a).permute(0, 3, 1, 2).float() / 127.5 - 1.0, 2)


@pytest.fixture(scope="module")
def trained() -> VitrinaModel:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = patch_model()
    opt = torch.optim.Adam(model.parameters(), 5e-3)
    for _ in range(60):
        a, ys, _ = patch_batch(rng, 32)
        loss = F.cross_entropy(model(_to_input(a)), torch.from_numpy(ys))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    a, ys, _ = patch_batch(np.random.default_rng(1), 100)
    with torch.no_grad():
        acc = float((model(_to_input(a)).argmax(1).numpy() == ys).mean())
    assert acc >= 0.95, f"test model did not learn the patch (accuracy {acc:.2f})"
    return model


@pytest.fixture(scope="module")
def held_out() -> list[tuple[Image.Image, tuple[int, int, int]]]:
    a, _, boxes = patch_batch(np.random.default_rng(2), 8, positive=True)
    return [(Image.fromarray(img), box) for img, box in zip(a, boxes, strict=True)]


def pointing(heatmap: np.ndarray, box: tuple[int, int, int]) -> tuple[float, bool]:
    """(share of the heatmap mass inside the box, whether the peak is inside). The peak is
    taken on a 5x5 box-filtered map: robustly normalised maps have many ties at 1.0."""
    x0, y0, s = box
    inside = np.zeros(heatmap.shape, bool)
    inside[y0 : y0 + s, x0 : x0 + s] = True
    mass = float(heatmap[inside].sum() / max(float(heatmap.sum()), 1e-12))
    smooth = F.avg_pool2d(torch.from_numpy(heatmap)[None, None], 5, 1, 2, count_include_pad=False)[
        0, 0
    ]
    iy, ix = np.unravel_index(int(smooth.argmax()), heatmap.shape)
    return mass, bool(inside[iy, ix])


def hooks_of(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks)
        + len(m._backward_hooks)
        + len(m._forward_pre_hooks)
        + len(m._backward_pre_hooks)
        for m in model.modules()
    )


def live_tensors() -> int:
    gc.collect()
    # issubclass on the type: isinstance would touch deprecated module attributes' __class__.
    return sum(1 for o in gc.get_objects() if issubclass(type(o), torch._C.TensorBase))


# ---------------------------------------------------------------------------- pointing game


@pytest.mark.parametrize("method", ALL)
def test_pointing_game(trained, held_out, method):
    results = explain_batch(trained, [img for img, _ in held_out], [method])
    scores = [
        pointing(r[method].heatmap, box) for r, (_, box) in zip(results, held_out, strict=True)
    ]
    mass = np.mean([m for m, _ in scores])
    hits = np.mean([h for _, h in scores])
    area = np.mean([s * s / SIDE**2 for _, (_, _, s) in held_out])
    assert mass >= MIN_MASS, (
        f"{method}: {mass:.2f} of the mass in the patch (area share {area:.2f})"
    )
    assert hits >= MIN_HITS, f"{method}: peak inside the patch on {hits:.0%} of images"
    assert all(r[method].label == "patch" and r[method].probability > 0.5 for r in results)


@pytest.mark.parametrize("method", ["gradcam", "scorecam", "saliency"])
@pytest.mark.parametrize("embedding_run", [False, True])
def test_similarity_maps_point_at_the_shared_patch(trained, held_out, method, embedding_run):
    model = trained
    if (
        embedding_run
    ):  # a retrieval run over the same backbone (its embedding = the pooled features)
        model = EmbeddingModel(copy.deepcopy(trained), bnneck=False).eval()
    (qa, qbox), (ra, rbox) = held_out[0], held_out[1]
    q, r = explain_similarity(model, qa, ra, method)
    with torch.no_grad():
        tf = [_to_input(np.array(im)[None]) for im in (qa, ra)]
        expected = float(F.cosine_similarity(model.embed(tf[0]), model.embed(tf[1])))
    for ex, box in ((q, qbox), (r, rbox)):
        mass, hit = pointing(ex.heatmap, box)
        assert mass >= MIN_MASS and hit, f"{method}: {mass:.2f} of the similarity map in the patch"
        assert ex.label == "similarity" and ex.probability is None
        assert ex.score == pytest.approx(expected, abs=1e-3)
        assert ex.heatmap.shape == (SIDE, SIDE)


# ---------------------------------------------------------------------------- output contract


@pytest.mark.parametrize("method", ALL)
def test_every_method_gives_a_unit_map_of_the_input_size(method):
    torch.manual_seed(0)
    model = create("tutorial_cnn", num_classes=3)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (41, 57, 3), dtype=np.uint8))
    ex = explain(model, img, method)
    assert ex.heatmap.shape == (41, 57) and ex.heatmap.dtype == np.float32
    assert ex.heatmap_input.shape == (32, 32) and ex.heatmap_input.dtype == np.float32
    for m in (ex.heatmap, ex.heatmap_input):
        assert np.isfinite(m).all() and m.min() >= 0.0 and m.max() <= 1.0
    assert ex.method == method and ex.seconds > 0
    assert ex.layer == ("features" if method in CAMS else None)
    assert len(ex.top3) == 3 and ex.top3[0][1] >= ex.top3[-1][1]
    assert ex.label == "class 0" or ex.label.startswith("class ")
    assert ex.probability == pytest.approx(ex.top3[0][1])


def test_heatmap_is_zero_outside_the_center_crop(trained):
    model = copy.deepcopy(trained)
    model.preprocess = Preprocess(
        input_size=(32, 32), mean=(0.5,) * 3, std=(0.5,) * 3, crop_pct=0.8
    )
    img = Image.fromarray(np.random.default_rng(3).integers(0, 255, (60, 100, 3), dtype=np.uint8))
    ex = explain(model, img, "saliency")
    x0, y0, x1, y1 = (round(v) for v in crop_box(model.preprocess, img.size))
    assert 0 < x0 < x1 < 100 and 0 < y0 < y1 < 60
    outside = np.ones(ex.heatmap.shape, bool)
    outside[y0:y1, x0:x1] = False
    assert ex.heatmap[outside].max() == 0.0
    assert ex.heatmap[y0:y1, x0:x1].max() > 0.5


@pytest.mark.parametrize(
    ("size", "crop_pct"), [((100, 60), 0.875), ((48, 90), 0.875), ((64, 64), 1.0), ((20, 30), 2.0)]
)
def test_crop_box_is_the_region_the_eval_transform_keeps(size, crop_pct):
    from vitrina.data.transforms import eval_transform

    pre = Preprocess(input_size=(32, 32), mean=(0.0,) * 3, std=(1.0,) * 3, crop_pct=crop_pct)
    W, H = size
    # Red encodes x, green y: the transformed image says where each input pixel came from.
    xs, ys = np.meshgrid(np.arange(W), np.arange(H))
    a = np.stack([xs * 255 / (W - 1), ys * 255 / (H - 1), np.zeros_like(xs)], -1)
    t = eval_transform(pre)(Image.fromarray(a.round().astype(np.uint8)))
    x0, y0, x1, y1 = crop_box(pre, size)
    inside = slice(8, 24)  # away from the edges, which padding may fill
    got_x = t[0, 16, inside].numpy() * (W - 1)
    got_y = t[1, inside, 16].numpy() * (H - 1)
    centres = (np.arange(32)[inside] + 0.5) / 32
    np.testing.assert_allclose(got_x, x0 + centres * (x1 - x0) - 0.5, atol=1.5)
    np.testing.assert_allclose(got_y, y0 + centres * (y1 - y0) - 0.5, atol=1.5)


def test_map_to_image_places_the_map_in_the_crop():
    pre = Preprocess(input_size=(4, 4), crop_pct=1.0)
    m = np.zeros((4, 4), np.float32)
    m[:, :2] = 1.0  # left half of the crop
    out = map_to_image(m, pre, (16, 8))  # wide image: the crop is its central 8x8
    assert out.shape == (8, 16)
    assert out[:, :4].max() == 0 and out[:, 12:].max() == 0
    assert out[:, 4:7].min() > 0.9 and out[:, 9:12].max() < 0.1


def test_target_by_name_index_and_default(trained, held_out):
    img = held_out[0][0]
    default = explain(trained, img, "gradcam")
    by_name = explain(trained, img, "gradcam", target="plain")
    by_index = explain(trained, img, "gradcam", target=0)
    assert default.target == 1 and default.label == "patch"
    assert by_name.target == by_index.target == 0 and by_name.label == "plain"
    np.testing.assert_array_equal(by_name.heatmap, by_index.heatmap)
    assert by_name.probability == pytest.approx(1 - default.probability, abs=1e-5)


def test_smoothgrad_is_seeded_and_leaves_the_global_rng_alone(trained, held_out):
    img = held_out[0][0]
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = explain(trained, img, "smoothgrad", seed=1).heatmap
    after = torch.rand(1)
    b = explain(trained, img, "smoothgrad", seed=1).heatmap
    c = explain(trained, img, "smoothgrad", seed=2).heatmap
    assert torch.equal(before, after)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_explain_reads_a_path(trained, held_out, tmp_path):
    path = tmp_path / "patch.png"
    held_out[0][0].save(path)
    ex = explain(trained, path, "layercam")
    np.testing.assert_allclose(
        ex.heatmap, explain(trained, held_out[0][0], "layercam").heatmap, atol=1e-6
    )


# ---------------------------------------------------------------------------- errors


def test_unknown_method_lists_the_valid_names(trained, held_out):
    with pytest.raises(UnknownNameError) as err:
        explain(trained, held_out[0][0], "gradcam+")
    one_line_error(str(err.value), "gradcam+", "gradcam++")
    with pytest.raises(UnknownNameError) as err:
        explain(trained, held_out[0][0], "xyzzy")
    one_line_error(str(err.value), "xyzzy", *ALL)
    with pytest.raises(UnknownNameError):
        explain_similarity(trained, held_out[0][0], held_out[1][0], "nope")


def test_unknown_or_unusable_layer_fails_with_suggestions(trained, held_out):
    img = held_out[0][0]
    assert explain(trained, img, "gradcam", layer="net.features.4").layer == "features.4"
    with pytest.raises(VitrinaError) as err:
        explain(trained, img, "gradcam", layer="feature.4")
    one_line_error(str(err.value), "feature.4", "features.4")
    with pytest.raises(VitrinaError) as err:
        explain(trained, img, "gradcam", layer="zzz")
    one_line_error(str(err.value), "zzz", "features")  # no close name: the CAM layers are listed
    with pytest.raises(VitrinaError) as err:
        explain(trained, img, "gradcam", layer="pool")  # (B, C, 1, 1): nothing spatial
    one_line_error(str(err.value), "pool", "not a (B, C, H, W) feature map", "features")


def test_unknown_target_fails_with_the_class_names(trained, held_out):
    img = held_out[0][0]
    with pytest.raises(VitrinaError) as err:
        explain(trained, img, target="pach")
    one_line_error(str(err.value), "pach", "patch")
    with pytest.raises(VitrinaError) as err:
        explain(trained, img, target="dog")
    one_line_error(str(err.value), "dog", "plain", "patch")
    with pytest.raises(VitrinaError) as err:
        explain(trained, img, target=2)
    one_line_error(str(err.value), "2", "out of range", "2 classes")


def test_overlay_blends_a_colormap():
    img = Image.new("RGB", (20, 10), (0, 0, 255))
    heat = np.zeros((10, 20), np.float32)
    heat[:, 10:] = 1.0
    out = overlay(img, heat, alpha=1.0)
    assert out.size == img.size and out.mode == "RGB"
    assert tuple(out.getpixel((15, 5))) == (128, 0, 0)  # jet(1.0): dark red
    assert tuple(out.getpixel((5, 5))) == (0, 0, 128)  # jet(0.0): dark blue
    assert overlay(img, heat, alpha=0.0).tobytes() == img.tobytes()
    assert overlay(img, np.ones((5, 5), np.float32), alpha=1.0).size == img.size  # resized
    with pytest.raises(VitrinaError) as err:
        overlay(img, heat, cmap="viridi")
    one_line_error(str(err.value), "viridi", "viridis")


# ---------------------------------------------------------------------------- model state


class Boom(nn.Module):
    """Raises on the ``after``-th forward call."""

    def __init__(self, after: int) -> None:
        super().__init__()
        self.after, self.calls = after, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls > self.after:
            raise RuntimeError("boom")
        return x


@pytest.mark.parametrize("method", ALL)
def test_hooks_modes_and_flags_are_restored_also_on_error(trained, held_out, method):
    model = copy.deepcopy(trained)
    model.train()
    model.net.features[0].eval()  # a mixed state must come back as it was
    model.net.features[0].weight.requires_grad_(False)
    modes = [m.training for m in model.modules()]
    flags = [p.requires_grad for p in model.parameters()]

    explain(model, held_out[0][0], method)
    assert hooks_of(model) == 0
    assert [m.training for m in model.modules()] == modes
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())

    boom = Boom(after=1)  # the prediction pass works, the method's first pass fails
    model.net.features.insert(5, boom)
    with pytest.raises(RuntimeError, match="boom"):
        explain(model, held_out[0][0], method)
    assert boom.calls > 1
    assert hooks_of(model) == 0
    assert [m.training for m in model.modules() if m is not boom] == modes
    assert [p.requires_grad for p in model.parameters()] == flags


def test_explain_works_inside_inference_mode(trained, held_out):
    with torch.inference_mode():
        ex = explain(trained, held_out[0][0], "gradcam")
    np.testing.assert_array_equal(ex.heatmap, explain(trained, held_out[0][0], "gradcam").heatmap)


def test_explain_batch_shares_one_forward_and_matches_explain(trained, held_out):
    imgs = [img for img, _ in held_out[:2]]
    rows = explain_batch(trained, imgs, ["gradcam", "occlusion"])
    assert [sorted(r) for r in rows] == [["gradcam", "occlusion"]] * 2
    np.testing.assert_array_equal(
        rows[1]["occlusion"].heatmap, explain(trained, imgs[1], "occlusion").heatmap
    )


def test_iter_explain_streams_and_restores_the_model_when_stopped_early(trained, held_out):
    model = copy.deepcopy(trained).train()
    seen = []
    for row in iter_explain(model, (img for img, _ in held_out), ["gradcam"]):
        seen.append(row["gradcam"].heatmap.shape)
        assert not model.training  # explaining runs in eval mode
        break
    assert seen == [(SIDE, SIDE)]
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert hooks_of(model) == 0


def test_memory_stays_flat():
    """No method keeps tensors alive between calls (both libraries have had such leaks)."""
    torch.manual_seed(0)
    model = patch_model(input_size=28).eval()
    rng = np.random.default_rng(0)
    imgs = [Image.fromarray(a) for a in rng.integers(0, 255, (7, 28, 28, 3), dtype=np.uint8)]
    explain_batch(model, imgs[:2], ALL)  # warm-up: imports, caches
    before = live_tensors()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nor any warning
        for img in imgs[2:]:
            explain_batch(model, [img], ALL)
    grown = live_tensors() - before
    assert grown <= 2


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads RSS from /proc")
def test_memory_stays_flat_over_200_images_per_method():
    torch.manual_seed(0)
    model = patch_model(input_size=32).eval()
    rng = np.random.default_rng(0)
    imgs = [Image.fromarray(a) for a in rng.integers(0, 255, (200, 40, 40, 3), dtype=np.uint8)]
    explain_batch(model, imgs[:20], ALL)
    before_t, before_rss = live_tensors(), rss_bytes()
    for img in imgs:
        explain_batch(model, [img], ALL)
    grown = rss_bytes() - before_rss
    assert live_tensors() - before_t <= 2
    assert grown < 30 * 2**20, (
        f"RSS grew by {grown / 2**20:.1f} MiB over 200 images x {len(ALL)} methods"
    )


# ---------------------------------------------------------------------------- layers


@pytest.mark.parametrize(
    ("arch", "layer"),
    [
        ("tutorial_cnn", "features"),
        ("resnet18", "layer4"),
        ("squeezenet1_1", "features"),
        ("efficientnet_lite0", "bn2"),
    ],
)
def test_default_cam_layer_is_the_last_feature_map(arch, layer):
    model = create(arch, num_classes=2).eval()
    h, w = model.preprocess.input_size
    _, probe = probe_layers(model, model.classify, torch.zeros(1, model.preprocess.channels, h, w))
    name, module = resolve_layer(model, None, probe)
    assert name == layer and module is dict(model.net.named_modules())[layer]
    assert hooks_of(model) == 0


def test_a_vision_transformer_has_no_default_cam_layer():
    model = create("vit_tiny_patch16_224", num_classes=2).eval()
    _, probe = probe_layers(model, model.classify, torch.zeros(1, 3, 224, 224))
    with pytest.raises(VitrinaError) as err:
        resolve_layer(model, None, probe)
    one_line_error(
        str(err.value), "vit_tiny_patch16_224", "no convolutional feature map", "saliency"
    )
