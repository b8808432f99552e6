"""Detection: the detectors over zoo backbones, the engine task, training (plain loop and the
cached-feature fast path), backends on boxes, predict / evaluate, and the detectors that need
no training. Photos are generated (coloured shapes, 320x240 and 500x700), never shared data."""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFilter
from torch import nn

from conftest import one_line_error, run_cli, usage_error
from detect_util import CLASSES, make_shapes, write_voc
from vitrina.detect import (
    Detections,
    DetectionTask,
    DetectTrainConfig,
    evaluate_detector,
    fuse_views,
    load_detector,
    train_detector,
)
from vitrina.detect.detectors import RunDetector, sized_views
from vitrina.engine import BOXES, TOLERANCES, Engine, compare_outputs
from vitrina.errors import RunFolderError, UnknownNameError, VitrinaError
from vitrina.models import Preprocess
from vitrina.models.detection import HEADS, DetectorSpec, create_detector, feature_nodes
from vitrina.runs import RunInfo, load_model, read_run, save_run


def _voc_set(root: Path, n: int, seed: int = 0) -> Path:
    shots = make_shapes(root / "images", n, seed=seed)
    write_voc(shots, root / "annotations")
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    return root


@pytest.fixture(scope="session")
def shelf_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _voc_set(tmp_path_factory.mktemp("shelves"), 24, seed=7)


def _config(data: Path, out: Path, **kw) -> DetectTrainConfig:
    base = dict(
        data_dir=str(data),
        arch="fasterrcnn",
        input_size=(128, 128),
        epochs=3,
        batch_size=4,
        freeze="lower",
        augment="flip",
        val_fraction=0.25,
        out=str(out),
        num_workers=0,
        device="cpu",
    )
    base.update(kw)
    return DetectTrainConfig(**base)


@pytest.fixture(scope="session")
def shelf_run(shelf_set: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Faster R-CNN trained for a few steps on the generated shelves."""
    out = tmp_path_factory.mktemp("shelfrun") / "run"
    return train_detector(_config(shelf_set, out), progress=False).run_dir


# ---------------------------------------------------------------------------- the network
# Faster R-CNN and FCOS (two stages; one, anchor-free) in the fast suite, all four in the slow.
HEAD_CASES = [
    h if h in ("fasterrcnn", "fcos") else pytest.param(h, marks=pytest.mark.slow)
    for h in HEADS.names()
]


@pytest.mark.parametrize("head", HEAD_CASES)
def test_every_head_on_a_zoo_backbone_any_input_size(head: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    spec = DetectorSpec(
        head=head, backbone="efficientnet_lite0", num_classes=3, input_size=(64, 96)
    )
    model = create_detector(spec)
    assert model.spec.return_nodes and len(model.spec.in_channels) == 3
    assert model.preprocess.input_size == (64, 96)
    x = torch.randn(2, 3, 64, 96)
    model.train()
    targets = [
        {"boxes": torch.tensor([[10.0, 8.0, 60.0, 50.0]]), "labels": torch.tensor([2])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},  # nothing
    ]
    losses = model.losses(x, targets)
    assert losses and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    model.eval()
    with torch.no_grad():
        out = model.boxes(x)
    assert isinstance(out, list) and len(out) == 2
    for rows in out:
        assert rows.shape[1] == 6
        if len(rows):
            assert rows[:, 5].min() >= 0 and rows[:, 5].max() <= 2  # 0-based classes
            assert (rows[:, 4] >= spec.score_thresh).all()
    with pytest.raises(RuntimeError, match="eval mode"):
        model.train().boxes(x)
    # A run folder rebuilds the same network (vitrina.runs.build_model).
    model.eval()
    info = RunInfo(
        arch=model.arch,
        classes=list(CLASSES),
        preprocess=model.preprocess,
        task="detection",
        config={"detector": model.spec.to_dict()},
    )
    save_run(tmp_path / "run", model, info)
    again = load_model(tmp_path / "run")
    assert again.arch == model.arch and again.class_names == list(CLASSES)
    with torch.no_grad():
        for a, b in zip(model.boxes(x), again.boxes(x), strict=True):
            torch.testing.assert_close(a, b)


def test_faster_rcnn_box_classifier_is_label_smoothed_and_otherwise_torchvisions() -> None:
    """Faster R-CNN's box head learns with a label-smoothed classifier loss: the same sampled
    regions and logits as torchvision's (at 0 the loss is torchvision's exactly), only the
    classifier term changes; half of the sampled regions may be objects; inference, weights
    and the state-dict keys are torchvision's."""
    import copy

    import torch.nn.functional as F
    from torchvision.models.detection.roi_heads import RoIHeads

    from vitrina.models.detection import BOX_LABEL_SMOOTHING, BOX_POSITIVE_FRACTION

    torch.manual_seed(0)
    spec = DetectorSpec(head="fasterrcnn", backbone="resnet18", num_classes=3, input_size=(64, 96))
    model = create_detector(spec)
    heads = model.net.roi_heads
    assert isinstance(heads, RoIHeads) and heads.label_smoothing == BOX_LABEL_SMOOTHING > 0
    assert heads.fg_bg_sampler.positive_fraction == BOX_POSITIVE_FRACTION
    x = torch.randn(2, 3, 64, 96)
    targets = [
        {"boxes": torch.tensor([[10.0, 8.0, 60.0, 50.0]]), "labels": torch.tensor([2])},
        {"boxes": torch.tensor([[30.0, 4.0, 90.0, 60.0]]), "labels": torch.tensor([0])},
    ]

    def losses(smoothing: float) -> tuple[dict, torch.Tensor, torch.Tensor]:
        m = copy.deepcopy(model).train()
        m.net.roi_heads.label_smoothing = smoothing
        seen: dict[str, torch.Tensor] = {}
        m.net.roi_heads.box_predictor.register_forward_hook(
            lambda _m, _i, out: seen.__setitem__("logits", out[0])
        )
        plain_select = type(m.net.roi_heads).select_training_samples

        def select(self, proposals, tgts):  # the labels of the sampled regions
            out = plain_select(self, proposals, tgts)
            seen["labels"] = torch.cat(out[2])
            return out

        m.net.roi_heads.select_training_samples = select.__get__(m.net.roi_heads)
        torch.manual_seed(1)  # the same sampled regions in each call
        return m.losses(x, targets), seen["logits"], seen["labels"]

    plain, logits0, labels0 = losses(0.0)
    smooth, logits, labels = losses(BOX_LABEL_SMOOTHING)
    torch.testing.assert_close(logits, logits0)
    assert torch.equal(labels, labels0) and (labels > 0).any()  # objects among the regions
    torch.testing.assert_close(plain["loss_classifier"], F.cross_entropy(logits0, labels0))
    torch.testing.assert_close(
        smooth["loss_classifier"],
        F.cross_entropy(logits, labels, label_smoothing=BOX_LABEL_SMOOTHING),
    )
    assert not torch.allclose(smooth["loss_classifier"], plain["loss_classifier"])
    for k in ("loss_box_reg", "loss_objectness", "loss_rpn_box_reg"):
        torch.testing.assert_close(smooth[k], plain[k])
    smooth["loss_classifier"].backward()  # it trains the head
    # inference and weights: torchvision's
    ref = copy.deepcopy(model)
    ref.net.roi_heads.__class__ = RoIHeads
    assert list(ref.state_dict()) == list(model.state_dict())
    model.eval(), ref.eval()
    with torch.no_grad():
        for a, b in zip(model.boxes(x), ref.boxes(x), strict=True):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("backbone", ["efficientnet_lite0", "resnet18"])
def test_freeze_stem_freezes_every_layer_before_stride_8_norms_included(backbone: str) -> None:
    """--freeze stem: the convolutions and the norms of the early layers (timm's norms hold
    their activation as a child module, and were once left training), so a training step
    computes no gradient at the full-resolution layers; the layers from stride 8 on train."""
    model = create_detector(
        DetectorSpec(head="fasterrcnn", backbone=backbone, num_classes=2, input_size=(128, 128))
    )
    frozen = {id(p) for p in model.stem_parameters()}
    body = model.net.backbone.body
    x = torch.rand(1, 3, 128, 128)
    strides: dict[str, int] = {}
    hooks = [
        m.register_forward_hook(
            lambda _m, _i, out, n=n: strides.__setitem__(n, 128 // out.shape[-1])
        )
        for n, m in body.named_modules()
        if n and any(True for _ in m.parameters(recurse=False))
    ]
    with torch.no_grad():
        body(x)
    for h in hooks:
        h.remove()
    assert min(strides.values()) == 2 and max(strides.values()) == 32
    for name, module in body.named_modules():
        if name not in strides:
            continue
        own = [id(p) for p in module.parameters(recurse=False)]
        if strides[name] < 8:
            assert all(i in frozen for i in own), f"{name} (stride {strides[name]}) trains"
        else:
            assert not any(i in frozen for i in own), f"{name} (stride {strides[name]}) frozen"


def test_backbones_of_both_libraries_give_strides_8_16_32() -> None:
    import torchvision

    nodes, channels = feature_nodes(torchvision.models.resnet18())
    assert channels == (128, 256, 512) and nodes[-1].startswith("layer4")
    _, channels = feature_nodes(torchvision.models.mobilenet_v3_small())
    assert len(channels) == 3
    model = create_detector(DetectorSpec(head="fcos", backbone="resnet18", input_size=(64, 64)))
    lower, upper = model.split_backbone(1)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        whole = model.net.backbone.body(x)
        parts = lower(x)
        parts.update(upper(parts["c1"]))
    for k in whole:
        torch.testing.assert_close(whole[k], parts[k])
    with pytest.raises(VitrinaError, match="multiple of 32"):
        DetectorSpec(input_size=(100, 128))
    with pytest.raises(UnknownNameError, match="did you mean"):
        create_detector(DetectorSpec(head="fasterrcn"))


def test_drop_path_skips_blocks_in_training_only() -> None:
    """--drop-path: the backbone's residual blocks are dropped at random in training; in
    inference the network answers exactly as one without it (same weights)."""
    from vitrina.models.detection import set_drop_path

    torch.manual_seed(0)
    plain = create_detector(DetectorSpec(num_classes=2, input_size=(64, 64)))
    dropping = create_detector(DetectorSpec(num_classes=2, input_size=(64, 64), drop_path=0.5))
    dropping.load_state_dict(plain.state_dict())  # stochastic depth adds no weights
    body, plain_body = dropping.net.backbone.body, plain.net.backbone.body
    x = torch.randn(2, 3, 64, 64)
    dropping.train()
    plain.train()  # the backbone's norms stay frozen in training: only the drops differ
    torch.manual_seed(1)
    a = body(x)["c2"]
    b = body(x)["c2"]
    assert not torch.allclose(a, b)
    torch.testing.assert_close(plain_body(x)["c2"], plain_body(x)["c2"])
    dropping.eval()
    plain.eval()
    torch.testing.assert_close(body(x)["c2"], plain_body(x)["c2"])

    with pytest.raises(VitrinaError, match="no residual blocks with stochastic depth"):
        create_detector(DetectorSpec(backbone="resnet18", input_size=(64, 64), drop_path=0.1))
    with pytest.raises(VitrinaError, match="--drop-path: a plain CNN has no residual blocks"):
        set_drop_path(nn.Sequential(nn.Conv2d(3, 3, 1)), 0.1, "a plain CNN")
    old = DetectorSpec.from_dict({"head": "fasterrcnn", "num_classes": 2})  # runs before it
    assert old.drop_path == 0.0


# ---------------------------------------------------------------------------- the engine task
class _FixedBoxes(nn.Module):
    """Returns the same boxes (input pixels) for every image: the task's mapping is what is
    tested."""

    def __init__(self, rows: list[list[float]]) -> None:
        super().__init__()
        self.arch = "fixed_boxes"
        self.preprocess = Preprocess(
            input_size=(128, 160), mean=(0.5,) * 3, std=(0.5,) * 3, crop_pct=1.0
        )
        self.rows = torch.tensor(rows, dtype=torch.float32)
        self.w = nn.Parameter(torch.zeros(1))

    def boxes(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.rows.clone() + self.w for _ in range(len(x))]


def test_detection_task_maps_boxes_back_to_each_photo(tmp_path: Path) -> None:
    wide = tmp_path / "wide.png"
    Image.new("RGB", (320, 240), (90, 90, 90)).save(wide)
    tall = tmp_path / "tall.png"
    Image.new("RGB", (500, 700), (90, 90, 90)).save(tall)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff nope")
    # In input pixels (160 wide, 128 high): a box, a weak box, a box in the padding only.
    model = _FixedBoxes([[20, 8, 100, 88, 0.9, 1], [0, 0, 10, 10, 0.2, 0], [0, 0, 12, 3, 0.8, 2]])
    eng = Engine(model, backend="eager", num_workers=0)
    results = list(eng.run(DetectionTask(min_score=0.5), [wide, tall, broken]))
    assert [r.ok for r in results] == [True, True, False]
    assert "broken.jpg" in results[2].error
    # wide 320x240 -> scale 0.5 (160x120), padded 4 px top: box (40, 8, 200, 168) in the photo
    d = results[0].value
    assert isinstance(d, Detections) and d.size == (320, 240)
    np.testing.assert_allclose(d.boxes, [[40, 8, 200, 168]], atol=1e-4)
    assert d.labels.tolist() == [1] and d.scores.tolist() == pytest.approx([0.9])
    # tall 500x700 -> scale 128/700, padded (160 - 91) // 2 = 34 px left
    s = 91 / 500
    t = results[1].value
    assert t.size == (500, 700) and len(t) == 1  # the padding-only box has no area in the photo
    np.testing.assert_allclose(t.boxes[0, [1, 3]], [8 / (128 / 700), 88 / (128 / 700)], rtol=1e-4)
    np.testing.assert_allclose(t.boxes[0, [0, 2]], [0, (100 - 34) / s], rtol=1e-4)
    assert len(next(iter(eng.run(DetectionTask(), [wide]))).value) == 2  # min_score 0 keeps it


def test_fuse_views_joins_what_the_views_saw_of_one_object() -> None:
    seen = [[0, 0, 10, 10, 0.8, 1], [50, 50, 60, 60, 0.6, 2]]
    mirrored = [[1, 0, 11, 10, 0.4, 1], [0, 0, 10, 10, 0.9, 2]]
    fused = fuse_views([np.array(seen), np.array(mirrored)])
    got = sorted(fused.tolist(), key=lambda r: -r[4])
    # class 1, seen by both (IoU 0.82): score-weighted box, mean score
    # class 2 at the same place: another object; each lone box keeps half its score
    want = [
        [0.4 / 1.2, 0, 10 + 0.4 / 1.2, 10, 0.6, 1],
        [0, 0, 10, 10, 0.45, 2],
        [50, 50, 60, 60, 0.3, 2],
    ]
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_array_equal(fuse_views([np.array(seen)]), np.array(seen, np.float32))
    assert fuse_views([np.zeros((0, 6)), np.zeros((0, 6))]).shape == (0, 6)


def test_flip_fuses_each_photo_with_its_mirror_image(
    shelf_run: Path, shelf_set: Path, tmp_path: Path
) -> None:
    """``flip=True`` (``--flip``) is the plain detector on the photo and on its mirror image,
    boxes mirrored back and fused: checked against exactly that, done by hand."""
    pairs = []
    for i, p in enumerate(sorted((shelf_set / "images").glob("*.png"))[:3]):
        img = Image.open(p).convert("RGB").resize((256, 256))  # square: no letterbox padding
        img.save(a := tmp_path / f"{i}.png")
        img.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(b := tmp_path / f"{i}-mirror.png")
        pairs.append((a, b))
    plain = load_detector(shelf_run, backend="eager", num_workers=0)
    both = load_detector(shelf_run, backend="eager", num_workers=0, flip=True)
    assert "mirrored" in both.describe() and "mirrored" not in plain.describe()

    def rows(d: Detections) -> np.ndarray:
        return np.column_stack([d.boxes, d.scores, d.labels])

    found = 0
    for (a, b), r in zip(pairs, both.detect([a for a, _ in pairs], min_score=0.0), strict=True):
        (seen,) = plain.detect([a], min_score=0.0)
        (mirrored,) = plain.detect([b], min_score=0.0)
        back = rows(mirrored.value)
        back[:, [0, 2]] = 256 - back[:, [2, 0]]
        want = Detections.from_rows(fuse_views([rows(seen.value), back]), (256, 256))
        got = r.value
        assert got.size == (256, 256) and len(got) == len(want)
        np.testing.assert_allclose(got.boxes, want.boxes, atol=1e-3)
        np.testing.assert_allclose(got.scores, want.scores, atol=1e-5)
        assert got.labels.tolist() == want.labels.tolist()
        found += len(got)
    assert found > 0
    with pytest.raises(VitrinaError, match="--flip is for detectors trained"):
        load_detector("hog_people", flip=True)


def test_scales_fuse_the_answers_of_the_run_at_each_input_size(
    shelf_run: Path, shelf_set: Path, capsys, monkeypatch
) -> None:
    """``scales`` (``--scales``) is the plain detector at each input size (the run's size x
    scale, rounded to a multiple of 32), its answers fused per photo: checked against exactly
    that, done by hand with one detector per size."""
    photos = sorted((shelf_set / "images").glob("*.png"))[:3]
    model = load_model(shelf_run)
    views = sized_views(model, (0.75, 1.0, 1.26, 1.3))  # 96, 128, 160; 1.3 rounds to 160 too
    assert [tuple(v.preprocess.input_size) for v in views] == [(96, 96), (128, 128), (160, 160)]
    assert views[1] is model and all(v.net is model.net for v in views)  # the same weights
    assert model.preprocess.input_size == (128, 128)  # the run's own model is not changed
    multi = RunDetector(model, backend="eager", num_workers=0, scales=(0.75, 1.0, 1.26))
    assert "96x96, 128x128, 160x160" in multi.describe()
    singles = [RunDetector(v, backend="eager", num_workers=0) for v in views]
    found = 0
    for i, r in enumerate(multi.detect(photos, min_score=0.05)):
        per_size = [next(iter(d.detect([photos[i]], min_score=0.0))).value for d in singles]
        assert len({d.size for d in per_size}) == 1  # every view answers in the photo's pixels
        fused = fuse_views([d.rows() for d in per_size])
        want = Detections.from_rows(fused[fused[:, 4] >= 0.05], per_size[0].size)
        got = r.value
        assert r.index == i and got.size == want.size and len(got) == len(want)
        np.testing.assert_allclose(got.boxes, want.boxes, atol=1e-3)
        np.testing.assert_allclose(got.scores, want.scores, atol=1e-5)
        assert got.labels.tolist() == want.labels.tolist()
        found += len(got)
    assert found > 0
    # one scale that is the run's own size is the plain detector
    plain = RunDetector(model, backend="eager", num_workers=0)
    one = RunDetector(model, backend="eager", num_workers=0, scales=(1.0,))
    a = [r.value.rows() for r in plain.detect(photos, min_score=0.0)]
    b = [r.value.rows() for r in one.detect(photos, min_score=0.0)]
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    # a photo that cannot be read is one error, not one per size
    broken = shelf_set.parent / "broken-scales.jpg"
    broken.write_bytes(b"\xff\xd8\xff nope")
    results = list(multi.detect([photos[0], broken]))
    assert [r.ok for r in results] == [True, False] and "broken-scales.jpg" in results[1].error
    # the engines take the items a chunk at a time: indices and answers run on across chunks
    import vitrina.detect.detectors as detectors

    monkeypatch.setattr(detectors, "SCALES_CHUNK", 2)
    chunked = list(multi.detect([*photos, broken], min_score=0.05))
    assert [r.index for r in chunked] == [0, 1, 2, 3]
    assert [r.ok for r in chunked] == [True, True, True, False]
    for r, want in zip(chunked, multi.detect(photos, min_score=0.05), strict=False):
        np.testing.assert_array_equal(r.value.rows(), want.value.rows())
    for bad in ((), (0.0,), (float("nan"),)):
        with pytest.raises(VitrinaError, match="scale"):
            RunDetector(model, backend="eager", num_workers=0, scales=bad)
    with pytest.raises(VitrinaError, match="--scales is for detectors trained"):
        load_detector("hog_people", scales=(1.0, 1.3))
    code, _, err = run_cli(capsys, "detect", "evaluate", shelf_run, shelf_set, "--scales", "x")
    assert code == 2
    usage_error(err, "--scales", "0.85,1,1.3")


# ---------------------------------------------------------------------------- training
def test_a_tiny_detector_trains_and_leaves_a_run(shelf_run: Path, shelf_set: Path) -> None:
    info = read_run(shelf_run)
    assert info.task == "detection" and info.classes == list(CLASSES)
    assert info.config["detector"]["head"] == "fasterrcnn"
    assert info.metrics["cached_features"] is True
    assert info.metrics["epochs_run"] == 3 and "val" in info.metrics
    history = [json.loads(line) for line in (shelf_run / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert all("val_mAP" in h and "val_mAP50" in h and "loss_classifier" in h for h in history)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    for plot in ("curves.png", "pr_curves.png"):
        assert (shelf_run / "plots" / plot).stat().st_size > 1000
    det = load_detector(shelf_run, backend="eager", num_workers=0)
    assert det.classes == list(CLASSES)
    photos = sorted((shelf_set / "images").glob("*.png"))[:4]
    found = [r.value for r in det.detect(photos, min_score=0.0)]
    assert sum(len(f) for f in found) > 0  # it has learned to put boxes somewhere


def test_cached_features_give_the_same_weights_as_the_plain_loop(
    shelf_set: Path, tmp_path: Path, monkeypatch
) -> None:
    from vitrina.training.layout import ENV

    # the cached path trains in the contiguous layout; the plain loop would choose its layout
    # by timing, and channels-last arithmetic differs in the last bits: compare like with like
    monkeypatch.setenv(ENV, "contiguous")
    kw = dict(arch="fcos", epochs=1, augment="none", freeze="lower")
    fast = train_detector(_config(shelf_set, tmp_path / "fast", **kw), progress=False)
    plain = train_detector(
        _config(shelf_set, tmp_path / "plain", **kw), progress=False, fast_paths=False
    )
    assert fast.metrics["cached_features"] and not plain.metrics["cached_features"]
    a, b = load_model(fast.run_dir).state_dict(), load_model(plain.run_dir).state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)
    assert fast.history[-1]["train_loss"] == pytest.approx(
        plain.history[-1]["train_loss"], rel=1e-4
    )


def test_training_resumes_and_refuses_to_overwrite(shelf_set: Path, tmp_path: Path) -> None:
    cfg = _config(shelf_set, tmp_path / "run", arch="ssdlite", epochs=1, freeze="backbone")
    first = train_detector(cfg, progress=False)
    assert len(first.history) == 1
    with pytest.raises(RunFolderError, match="not empty"):
        train_detector(cfg, progress=False)
    more = _config(shelf_set, tmp_path / "run", epochs=2)  # the run's own settings are kept
    again = train_detector(more, resume=True, progress=False)
    assert [h["epoch"] for h in again.history] == [1, 2]
    assert read_run(tmp_path / "run").config["arch"] == "ssdlite"


def test_a_time_budget_ends_the_run_and_the_learning_rate(shelf_set: Path, tmp_path: Path) -> None:
    cfg = _config(
        shelf_set, tmp_path / "run", arch="ssdlite", epochs=5, freeze="backbone",
        time_budget=1e-4, budget_clock="process",
    )  # fmt: skip
    res = train_detector(cfg, progress=False)
    assert len(res.history) == 1 and res.history[0]["time_budget_reached"]
    assert res.history[0]["lr"] == pytest.approx(3e-4 * 0.01)  # the cosine ran to its end
    assert res.metrics["budget_clock"] == "process" and res.metrics["budget_seconds"] > 0


def test_ema_is_recorded_and_a_resumed_run_keeps_averaging(shelf_set: Path, tmp_path: Path) -> None:
    """--ema: the run records it and a resume keeps averaging (what the average is and when
    the model holds it: tests/test_averaging.py)."""
    cfg = _config(
        shelf_set, tmp_path / "run", arch="ssdlite", epochs=1, freeze="backbone", ema=True
    )
    train_detector(cfg, progress=False)
    assert read_run(tmp_path / "run").config["ema"] is True
    more = _config(shelf_set, tmp_path / "run", epochs=2)  # the run's own settings are kept
    again = train_detector(more, resume=True, progress=False)
    assert [h["epoch"] for h in again.history] == [1, 2]
    assert read_run(tmp_path / "run").config["ema"] is True
    assert "val_mAP" in again.history[-1]


def test_precision_auto_times_training_steps_of_the_detector(
    shelf_set: Path, tmp_path: Path, monkeypatch
) -> None:
    """detect train --precision auto: the trial runs the detector's own training losses (a
    box per image, backward included) at its input size on a copy, its frozen layers frozen;
    with cached features nothing is timed and the run says why it stays fp32; fp64 is
    refused."""
    import vitrina.engine as engine
    from vitrina.detect.train import _precision
    from vitrina.training import precision

    timed: list[tuple[tuple[int, ...], bool]] = []
    real = precision._steps_per_s

    def spy(model, x, bf16, step):
        timed.append((tuple(x.shape), bf16))
        if not bf16:  # real fp32 steps (bf16 is emulated, and slow, on most CPUs)
            assert real(model, x, bf16, step) > 0
        return 3.0 if bf16 else 1.0  # bf16 faked 3x faster

    monkeypatch.setattr(engine, "bf16_supported", lambda device: True)
    monkeypatch.setattr(precision, "_steps_per_s", spy)
    spec = DetectorSpec(head="fcos", num_classes=len(CLASSES), input_size=(128, 96))
    model = create_detector(spec, pretrained_backbone=False)
    for p in model.stem_parameters():
        p.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    choice = _precision("auto", model, torch.device("cpu"), 4, cached=False)
    assert choice.chosen == "bf16" and "measured: bf16 3.00x" in choice.reason
    assert timed == [((4, 3, 128, 96), False), ((4, 3, 128, 96), True)] * precision._ROUNDS
    for k, v in model.state_dict().items():  # the trial ran on a copy
        torch.testing.assert_close(v, before[k])
    assert all(p.grad is None for p in model.parameters())

    timed.clear()
    cached = _config(shelf_set, tmp_path / "cached", arch="fcos", epochs=1, precision="auto")
    res = train_detector(cached, progress=False)
    assert timed == [] and res.metrics["cached_features"]
    saved = json.loads((res.run_dir / "precision.json").read_text())
    assert saved["chosen"] == "fp32" and "cached" in saved["reason"]
    assert read_run(res.run_dir).config["precision"] == "fp32"  # what it trained with
    with pytest.raises(VitrinaError, match="not one of fp32, bf16, auto"):
        _config(shelf_set, tmp_path / "x", precision="fp64").resolved()


@pytest.mark.slow
def test_a_detector_trains_in_bf16(shelf_set: Path, tmp_path: Path) -> None:
    """--precision bf16 (what auto picks on AMX): the whole network but the stem trains
    under autocast, the loss falls and the run keeps float32 weights (emulated, and slow,
    on CPUs without bf16 units)."""
    cfg = _config(shelf_set, tmp_path / "bf16", arch="fcos", epochs=2, freeze="stem")
    cfg.precision = "bf16"
    res = train_detector(cfg, progress=False)
    losses = [h["train_loss"] for h in res.history]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert read_run(res.run_dir).config["precision"] == "bf16"
    assert all(v.dtype != torch.bfloat16 for v in load_model(res.run_dir).state_dict().values())


def test_bad_photos_and_boxes_do_not_stop_training(tmp_path: Path) -> None:
    root = _voc_set(tmp_path / "set", 10, seed=2)
    first = sorted((root / "images").glob("*.png"))[0]
    first.write_bytes(first.read_bytes()[:400])  # the header reads, the pixels do not
    ann = sorted((root / "annotations").glob("*.xml"))[1]
    ann.write_text(
        ann.read_text().replace(
            "</annotation>",
            "<object><name>crate</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax>"
            "<ymax>9</ymax></bndbox></object></annotation>",
        )
    )
    res = train_detector(
        _config(root, tmp_path / "run", epochs=1, freeze="backbone", augment="light"),
        progress=False,
    )
    assert any(first.name in m for m in res.bad_files), res.bad_files  # met while training
    assert any("'crate' is not in the class list" in m for m in res.bad_files)
    assert (res.run_dir / "model.safetensors").is_file()


def test_multi_scale_batches_cover_every_photo_once_each_at_one_drawn_size(
    shelf_set: Path,
) -> None:
    from vitrina.data.annotations import read_annotated
    from vitrina.detect.data import PhotoBoxes, ScaledBatches, scaled_sizes
    from vitrina.models import Preprocess

    sizes = scaled_sizes((128, 160), (0.75, 1, 1.25))
    assert sizes == [(96, 128), (128, 160), (160, 192)]  # multiples of 32, sorted
    assert scaled_sizes((64, 64), (0.1, 1)) == [(64, 64)]  # never under 64
    draw = [list(ScaledBatches(10, 4, sizes, torch.Generator().manual_seed(3))) for _ in "ab"]
    assert draw[0] == draw[1]  # seeded: the same batches and sizes
    batches = draw[0]
    assert len(batches) == 2 and all(len(b) == 4 for b in batches)  # the last part dropped
    assert all(len({size for _, size in b}) == 1 and b[0][1] in sizes for b in batches)
    assert len({i for b in batches for i, _ in b}) == 8
    keep = list(ScaledBatches(10, 4, sizes, torch.Generator(), drop_last=False))
    assert sorted(i for b in keep for i, _ in b) == list(range(10))

    photos = read_annotated(shelf_set).photos
    pre = Preprocess(input_size=(128, 160), mean=(0.5,) * 3, std=(0.5,) * 3, crop_pct=1.0)
    ds = PhotoBoxes(photos, pre)
    for size in sizes:
        _, x, target, _ = ds[(0, size)]
        assert x.shape[1:] == size
        # the photo letterboxed to that size, its boxes with it: back in the photo's pixels
        # they are the annotations
        image = Image.open(photos[0].path)
        placement = ds._letterbox_for(size)(image).meta
        back = placement.to_photo(target["boxes"].numpy())
        np.testing.assert_allclose(back, photos[0].boxes, atol=1e-3)
        assert target["labels"].tolist() == list(photos[0].labels)


def test_a_detector_trains_at_several_input_sizes(shelf_set: Path, tmp_path: Path) -> None:
    """--train-scales: every batch at one of the sizes, no cached features (they are of one
    size), and the run records the scales for --resume."""
    cfg = _config(shelf_set, tmp_path / "ms", epochs=1, freeze="stem", augment="light")
    cfg.train_scales = (0.75, 1.25)
    res = train_detector(cfg, progress=False)
    assert np.isfinite(res.history[-1]["train_loss"])
    assert read_run(res.run_dir).config["train_scales"] == [0.75, 1.25]
    assert DetectTrainConfig.from_dict(read_run(res.run_dir).config).train_scales == (0.75, 1.25)
    with pytest.raises(VitrinaError, match="--train-scales 0,1 is out of range"):
        _config(shelf_set, tmp_path / "x", train_scales=(0, 1)).resolved()
    with pytest.raises(VitrinaError, match=r"--drop-path 1\.5 is out of range"):
        _config(shelf_set, tmp_path / "x", drop_path=1.5).resolved()
    with pytest.raises(VitrinaError, match=r"--weight-decay -0\.1 is out of range"):
        _config(shelf_set, tmp_path / "x", weight_decay=-0.1).resolved()
    with pytest.raises(VitrinaError, match=r"--nms-iou 1\.0 is out of range"):
        _config(shelf_set, tmp_path / "x", nms_iou=1.0).resolved()
    # weight decay by optimizer: decoupled (adamw) 0.05, L2 (sgd) 1e-4; a value given is kept
    assert _config(shelf_set, tmp_path / "x").resolved().weight_decay == 0.05
    assert _config(shelf_set, tmp_path / "x", optimizer="sgd").resolved().weight_decay == 1e-4
    assert _config(shelf_set, tmp_path / "x", weight_decay=0.0).resolved().weight_decay == 0.0


def test_multi_scale_is_the_default_with_the_augmentations_that_move_pixels(
    shelf_run: Path, shelf_set: Path, tmp_path: Path
) -> None:
    from vitrina.detect.train import DEFAULT_TRAIN_SCALES

    # --augment flip (with --freeze lower: the features are computed once, at one size)
    assert read_run(shelf_run).config["train_scales"] == [1.0]
    res = train_detector(
        _config(shelf_set, tmp_path / "stem", epochs=1, freeze="stem", augment="light"),
        progress=False,
    )
    assert read_run(res.run_dir).config["train_scales"] == list(DEFAULT_TRAIN_SCALES)

    # a run made before multi-scale training resumes as it was trained: at one size
    meta = res.run_dir / "vitrina.json"
    doc = json.loads(meta.read_text())
    del doc["config"]["train_scales"]
    # ... and with torchvision's suppression overlap, as every run made before it was fitted
    del doc["config"]["nms_iou"]
    doc["config"].pop("nms_iou_choice", None)
    doc["config"]["detector"]["nms_thresh"] = 0.5
    # ... and scoring its boxes as torchvision does
    del doc["config"]["score_temperature"]
    doc["config"]["detector"].pop("score_temperature")
    meta.write_text(json.dumps(doc))
    more = _config(shelf_set, res.run_dir, epochs=2)
    again = train_detector(more, resume=True, progress=False)
    assert [h["epoch"] for h in again.history] == [1, 2]
    assert read_run(again.run_dir).config["train_scales"] == [1.0]
    assert read_run(again.run_dir).config["detector"]["nms_thresh"] == 0.5
    assert read_run(again.run_dir).config["detector"]["score_temperature"] == 1.0
    assert "made before it was fitted" in read_run(again.run_dir).config["score_temperature_choice"]
    assert read_run(again.run_dir).config["stem_norms_frozen"] is True


def test_a_detector_trains_on_mosaics(shelf_set: Path, tmp_path: Path) -> None:
    """--augment mosaic: half of the photos of each batch are mosaics of four (some with no
    box at all), at the sizes of multi-scale training; the run records it."""
    from vitrina.detect.train import DEFAULT_TRAIN_SCALES

    res = train_detector(
        _config(shelf_set, tmp_path / "mosaic", epochs=1, freeze="stem", augment="mosaic"),
        progress=False,
    )
    assert np.isfinite(res.history[-1]["train_loss"])
    config = read_run(res.run_dir).config
    assert config["augment"] == "mosaic"
    assert config["train_scales"] == list(DEFAULT_TRAIN_SCALES)


def test_a_run_made_while_the_stems_norms_trained_resumes(
    shelf_set: Path, tmp_path: Path, monkeypatch
) -> None:
    """Before 4 Dec 2026 --freeze stem left timm's norms training; such a run's optimizer
    holds them, so it resumes with them training, and says so."""
    from vitrina.models.detection import Detector

    new = Detector.stem_parameters
    monkeypatch.setattr(Detector, "stem_parameters", lambda self, norms=True: new(self, False))
    cfg = _config(shelf_set, tmp_path / "old", epochs=1, freeze="stem", augment="light")
    res = train_detector(cfg, progress=False)
    meta = res.run_dir / "vitrina.json"
    doc = json.loads(meta.read_text())
    del doc["config"]["stem_norms_frozen"]
    meta.write_text(json.dumps(doc))
    monkeypatch.setattr(Detector, "stem_parameters", new)
    again = train_detector(_config(shelf_set, res.run_dir, epochs=2), resume=True, progress=False)
    assert [h["epoch"] for h in again.history] == [1, 2]
    assert read_run(again.run_dir).config["stem_norms_frozen"] is False
    model = create_detector(DetectorSpec(head="fasterrcnn", num_classes=2, input_size=(128, 128)))
    assert len(model.stem_parameters(norms=False)) < len(model.stem_parameters())


def test_the_input_is_fitted_to_the_photos_and_never_enlarges_them() -> None:
    from vitrina.data.annotations import AnnotatedPhoto
    from vitrina.detect.fitted import fit_input_size

    def photos(*sizes: tuple[int, int]) -> list[AnnotatedPhoto]:
        return [AnnotatedPhoto(Path(f"{i}.png"), f"{i}.png", s) for i, s in enumerate(sizes)]

    assert fit_input_size(photos((224, 224)) * 3)[0] == (224, 224)  # the photos' own size
    assert fit_input_size(photos((250, 180), (240, 240), (230, 100)))[0] == (256, 256)
    (hw, why) = fit_input_size(photos((1920, 1080), (4000, 3000), (640, 480)))
    assert hw == (320, 320) and "at most 320" in why  # large photos: the CPU's budget
    assert fit_input_size(photos((40, 30), (64, 48)))[0] == (128, 128)  # tiny: the floor
    assert fit_input_size(photos((0, 0)))[0] == (320, 320)  # sizes unknown


def test_a_run_without_input_size_records_the_fitted_one(tmp_path: Path) -> None:
    data = tmp_path / "small"
    write_voc(
        make_shapes(data / "images", 6, seed=3, sizes=((150, 120), (140, 160))),
        data / "annotations",
    )
    (data / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    cfg = _config(data, tmp_path / "run", input_size=None, epochs=1, val_fraction=0.0)
    assert cfg.resolved().input_size is None  # chosen once the photos are read
    res = train_detector(cfg, progress=False)
    run = read_run(res.run_dir)
    assert run.preprocess.input_size == (160, 160)  # median longer side 160: not enlarged
    assert run.config["input_size"] == [160, 160]
    assert "fitted to the training photos" in run.config["input_size_choice"]
    # a handful of boxes say nothing of how objects overlap: torchvision's suppression
    assert run.config["nms_iou"] == run.config["detector"]["nms_thresh"] == 0.5
    assert "too few" in run.config["nms_iou_choice"]
    # no validation photos to fit the class-score temperature on: the default
    assert run.config["detector"]["score_temperature"] == 0.7
    assert "the default (no validation photos" in run.config["score_temperature_choice"]


def _boxed(*photos: list[tuple[float, float, float, float, int]]) -> list:
    from vitrina.data.annotations import AnnotatedPhoto

    return [
        AnnotatedPhoto(
            Path(f"{i}.png"),
            f"{i}.png",
            (400, 300),
            boxes=[b[:4] for b in rows],
            labels=[b[4] for b in rows],
        )
        for i, rows in enumerate(photos)
    ]


def test_the_suppression_overlap_is_fitted_to_how_the_training_boxes_overlap() -> None:
    from vitrina.detect.fitted import NMS_IOU_CHOICES, class_overlaps, fit_nms_iou

    side_by_side = [(0, 0, 100, 100, 0), (100, 0, 200, 100, 0), (200, 0, 300, 100, 1)]
    # products side by side: a second box half over the first is a duplicate
    iou, why = fit_nms_iou(_boxed(*[side_by_side] * 40))
    assert iou == NMS_IOU_CHOICES[0] == 0.3 and "0.0% of them" in why
    # overlaps between classes do not count: suppression is per class
    stacked = [(0, 0, 100, 100, 0), (10, 0, 110, 100, 1), (200, 0, 300, 100, 2)]
    assert fit_nms_iou(_boxed(*[stacked] * 40))[0] == 0.3
    assert class_overlaps(_boxed(stacked)).tolist() == [0.0, 0.0, 0.0]
    # a crowd: a tenth of the people overlap another by IoU 0.6 -> torchvision's 0.5 stays
    crowd = [(0, 0, 100, 200, 0), (25, 0, 125, 200, 0)]
    apart = [(0, 0, 100, 200, 0), (150, 0, 250, 200, 0)]
    iou, why = fit_nms_iou(_boxed(*([crowd] * 5 + [apart] * 45)))
    assert round(float(class_overlaps(_boxed(crowd))[0]), 2) == 0.6
    assert iou == 0.5 and "10.0% of them" in why
    # 4% overlapping by IoU 0.33 -> the lowest choice above that: 0.35
    near = [(0, 0, 100, 100, 0), (50, 0, 150, 100, 0)]  # IoU 1/3
    assert fit_nms_iou(_boxed(*([near] * 2 + [apart] * 48)))[0] == 0.35
    # too few boxes to tell: torchvision's default, and the reason says so
    iou, why = fit_nms_iou(_boxed(side_by_side))
    assert iou == 0.5 and "3 training boxes are too few" in why
    assert fit_nms_iou([])[0] == 0.5


def test_a_score_temperature_is_the_softmax_of_the_logits_divided_by_it() -> None:
    from torchvision.models.detection.roi_heads import RoIHeads

    net = create_detector(DetectorSpec(num_classes=3, input_size=(128, 128))).net
    heads = net.roi_heads
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(40, 4, generator=g) * 3
    xy = torch.rand(40, 2, generator=g) * 80
    proposals = [torch.cat([xy, xy + 10 + torch.rand(40, 2, generator=g) * 40], 1)]
    deltas = torch.zeros(40, 16)

    def answer(t: float, scale: float = 1.0, plain: bool = False) -> list:
        heads.score_temperature = t
        run = RoIHeads.postprocess_detections if plain else type(heads).postprocess_detections
        boxes, scores, labels = run(heads, logits * scale, deltas, proposals, [(128, 128)])
        return [boxes[0], scores[0], labels[0]]

    # at 1 the scores are torchvision's exactly
    for got, want in zip(answer(1.0), answer(1.0, plain=True), strict=True):
        torch.testing.assert_close(got, want)
    # at t: torchvision's answer for the logits divided by t (score threshold and NMS included)
    sharp, ref = answer(0.5), answer(1.0, scale=2.0, plain=True)
    assert len(sharp[1]) > 0
    for got, want in zip(sharp, ref, strict=True):
        torch.testing.assert_close(got, want)
    assert not torch.equal(answer(0.5)[1], answer(1.0)[1][: len(sharp[1])])
    # the spec carries it to the box head, and only a softmax box head takes one
    assert (
        create_detector(
            DetectorSpec(num_classes=3, input_size=(128, 128), score_temperature=0.6)
        ).net.roi_heads.score_temperature
        == 0.6
    )
    with pytest.raises(VitrinaError, match="Faster R-CNN's softmax box head only"):
        DetectorSpec(head="retinanet", num_classes=3, score_temperature=0.7)
    with pytest.raises(VitrinaError, match="out of range"):
        DetectorSpec(num_classes=3, score_temperature=0)
    assert DetectorSpec.from_dict({"num_classes": 2}).score_temperature == 1.0  # runs before


def test_the_score_temperature_is_fitted_on_the_validation_photos() -> None:
    from vitrina.detect.fitted import (
        DEFAULT_SCORE_TEMPERATURE,
        SCORE_TEMPERATURE_CHOICES,
        fit_score_temperature,
    )

    asked: list[float] = []

    def peak_at(best: float):
        def validation_map(t: float) -> float:
            asked.append(t)
            return 0.5 - abs(t - best)

        return validation_map

    t, why, tried = fit_score_temperature(peak_at(0.85), 300)
    assert t == 0.85 and sorted(tried) == sorted(SCORE_TEMPERATURE_CHOICES)
    assert "fitted on 300 validation boxes" in why and "0.85: 0.500" in why
    # a tie goes to the default, tried first
    t, _, _ = fit_score_temperature(lambda t: 0.4, 300)
    assert t == DEFAULT_SCORE_TEMPERATURE == SCORE_TEMPERATURE_CHOICES[0]
    # too few validation boxes: the default, nothing evaluated
    asked.clear()
    t, why, tried = fit_score_temperature(peak_at(1.0), 12)
    assert t == DEFAULT_SCORE_TEMPERATURE and not asked and not tried
    assert "12 validation boxes are too few" in why


def test_a_run_scores_at_the_temperature_fitted_on_its_validation_photos(
    shelf_set: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import vitrina.detect.fitted as fitted

    monkeypatch.setattr(fitted, "TEMPERATURE_FIT_MIN_BOXES", 1)
    res = train_detector(_config(shelf_set, tmp_path / "run", epochs=1), progress=False)
    run = read_run(res.run_dir)
    tried = res.metrics["score_temperature_val_mAP"]
    chosen = run.config["detector"]["score_temperature"]
    assert set(tried) == {f"{t:g}" for t in fitted.SCORE_TEMPERATURE_CHOICES}
    assert tried[f"{chosen:g}"] == max(tried.values())
    assert "fitted on" in run.config["score_temperature_choice"]
    assert run.config["score_temperature"] is None  # fitted again if the run resumes
    # the saved run scores its boxes at it, and its validation figure is the chosen one's
    assert load_model(res.run_dir).net.roi_heads.score_temperature == chosen  # type: ignore[union-attr]
    assert round(res.metrics["val"]["mAP"], 4) == tried[f"{chosen:g}"]
    # given: kept as given, nothing tried; another head has no temperature to give
    given = train_detector(
        _config(shelf_set, tmp_path / "given", epochs=1, score_temperature=0.85),
        progress=False,
    )
    assert read_run(given.run_dir).config["detector"]["score_temperature"] == 0.85
    assert "score_temperature_val_mAP" not in given.metrics
    with pytest.raises(VitrinaError, match="Faster R-CNN's softmax box head only"):
        _config(shelf_set, tmp_path / "x", arch="fcos", score_temperature=0.7).resolved()
    with pytest.raises(VitrinaError, match=r"--score-temperature 0\.0 is out of range"):
        _config(shelf_set, tmp_path / "x", score_temperature=0.0).resolved()


def test_train_command(shelf_set: Path, tmp_path: Path, capsys) -> None:
    code, out, err = run_cli(
        capsys, "detect", "train", shelf_set, "--arch", "ssdlite", "--input-size", "128x160",
        "--epochs", "1", "--freeze", "backbone", "--augment", "none", "--batch-size", "4",
        "--workers", "0", "--device", "cpu", "--out", tmp_path / "run", "--nms-iou", "0.4",
    )  # fmt: skip
    assert code == 0, err
    assert "validation mAP@[.5:.95]" in out and "run folder" in out
    assert read_run(tmp_path / "run").preprocess.input_size == (128, 160)
    # the overlap given is the one the saved network suppresses at
    assert read_run(tmp_path / "run").config["detector"]["nms_thresh"] == 0.4
    assert load_model(tmp_path / "run").net.nms_thresh == 0.4  # type: ignore[union-attr]
    code, _, err = run_cli(capsys, "detect", "train", shelf_set, "--arch", "yolo")
    assert code == 2 and "yolo" in err  # a choice: the usage error lists the architectures
    code, _, err = run_cli(capsys, "detect", "train", shelf_set, "--input-size", "100")
    assert code == 1
    one_line_error(err, "multiple of 32")


# ---------------------------------------------------------------------------- backends
def _batch(run: Path, photos: Sequence[Path]) -> tuple[Engine, torch.Tensor]:
    eng = Engine(load_model(run), backend="eager", num_workers=0)
    x = torch.cat([eng.prepare(DetectionTask(), p).inputs for p in photos])
    return eng, x


def test_backends_agree_with_eager_on_boxes(
    shelf_run: Path, shelf_set: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    photos = sorted((shelf_set / "images").glob("*.png"))[:6]
    eager, x = _batch(shelf_run, photos)
    ref = eager.forward(DetectionTask(), x)
    assert sum(len(r) for r in ref) > 0, "nothing to compare: the test run found no box"
    from vitrina.engine.openvino import openvino_available

    runtimes = ["onnx"] + (["openvino"] if openvino_available() else [])
    for name in runtimes:  # the exported graph ran, image by image, with eager's boxes
        runtime = Engine(load_model(shelf_run), backend=name, num_workers=0)
        got = runtime.forward(DetectionTask(), x)
        assert BOXES not in runtime.backend._fallback, name
        report = compare_outputs(ref, got, BOXES)
        assert TOLERANCES[name].ok(report) and report["max_abs_diff"] < 1e-3, (name, report)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # emulated bf16 on CPUs without bf16 units
        bf16 = Engine(load_model(shelf_run), backend="bf16", num_workers=0)
        low = bf16.forward(DetectionTask(), x)
    assert len(low) == len(ref) and all(r.dtype == torch.float32 for r in low)
    # auto tries every backend this machine could use (bf16 too, as on a CPU with AMX) and
    # keeps the fastest whose boxes meet its stated tolerance: never degraded boxes.
    import vitrina.engine.auto as auto_mod

    monkeypatch.setattr(auto_mod, "bf16_supported", lambda device: True)
    auto = Engine(load_model(shelf_run), backend="auto", num_workers=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        auto.forward(DetectionTask(), x)
    decision = auto.backend.decisions[BOXES]
    with_bf16 = ["bf16"] + (["openvino-bf16"] if "openvino" in runtimes else [])
    assert set(decision["trials"]) == {"eager", *runtimes, *with_bf16}
    assert decision["trials"][decision["chosen"]]["ok"]
    bf16_ok = TOLERANCES["bf16"].ok(compare_outputs(ref, low, BOXES))
    assert decision["trials"]["bf16"]["ok"] == bf16_ok

    # The detector on auto answers within the tolerance of the backend it chose (a bf16
    # runtime may move a box by a few pixels: pairs stay at IoU >= 0.9), on the boxes it shows
    # by default: the trial decided on one batch, and in bf16 a box scoring near the network's
    # 0.05 floor may come or go with another batching (the label-smoothed head gives this
    # small test run dozens of those).
    def rows(found: Sequence[Detections]) -> list[torch.Tensor]:
        return [
            torch.as_tensor(np.column_stack([d.boxes, d.scores, d.labels]), dtype=torch.float32)
            for d in found
        ]

    plain = load_detector(shelf_run, backend="eager", num_workers=0)
    chosen = load_detector(shelf_run, backend="auto", num_workers=0)
    shown = plain.default_min_score
    want = [r.value for r in plain.detect(photos, min_score=shown)]
    got = [r.value for r in chosen.detect(photos, min_score=shown)]
    assert sum(len(d.boxes) for d in want) > 0, "nothing shown to compare"
    backend = chosen.engine.backend_name
    assert backend in decision["trials"]
    assert TOLERANCES[backend].ok(compare_outputs(rows(want), rows(got), BOXES)), backend


def test_onnx_export_of_a_detector_is_checked(
    shelf_run: Path, shelf_set: Path, tmp_path: Path, capsys
) -> None:
    from vitrina.engine.onnx import export_checked, ort_session, run_session

    photos = sorted((shelf_set / "images").glob("*.png"))[:3]
    eng, x = _batch(shelf_run, photos)
    model = load_model(shelf_run)
    report = export_checked(model, tmp_path / "det.onnx", x, output=BOXES)
    assert report["top1_agreement"] == 1.0 and report["max_abs_diff"] < 1e-3
    rows = run_session(ort_session(tmp_path / "det.onnx"), x[:1])  # one image in, its boxes out
    assert rows.ndim == 2 and rows.shape[1] == 6
    assert len(rows) == len(eng.forward(DetectionTask(), x[:1])[0])
    code, out, err = run_cli(capsys, "detect", "export", shelf_run, "--out", tmp_path / "cli.onnx")
    assert code == 0, err
    assert "same boxes on 100%" in out and (tmp_path / "cli.onnx").stat().st_size > 10_000
    code, _, err = run_cli(capsys, "detect", "export", shelf_run, "--out", tmp_path / "cli.onnx")
    assert code == 1
    one_line_error(err, "cli.onnx", "exists")


# ---------------------------------------------------------------------------- predict, evaluate
def test_predict_writes_boxes_copies_and_crops(
    shelf_run: Path, shelf_set: Path, tmp_path: Path, capsys
) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for p in sorted((shelf_set / "images").glob("*.png"))[:3]:
        (photos / p.name).write_bytes(p.read_bytes())
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    args = ("detect", "predict", shelf_run, photos, "--backend", "eager", "--workers", "0")
    code, _out, err = run_cli(capsys, *args, "--min-score", "0.0", "--out", tmp_path / "b.json",
                             "--annotate", tmp_path / "ann", "--crops", tmp_path / "crops")  # fmt: skip
    assert code == 0, err
    assert "broken.jpg" in err and "skipped" in err
    doc = json.loads((tmp_path / "b.json").read_text())
    assert doc["classes"] == list(CLASSES)
    rows = {Path(r["photo"]).name: r for r in doc["photos"]}
    assert rows["broken.jpg"]["error"] and not rows["broken.jpg"]["boxes"]
    boxes = [b for r in doc["photos"] for b in r["boxes"]]
    assert boxes, "no box at min score 0"
    for r in doc["photos"]:
        for b in r["boxes"]:
            x1, y1, x2, y2 = b["box"]
            assert 0 <= x1 < x2 <= r["width"] and 0 <= y1 < y2 <= r["height"]  # photo pixels
            assert b["label"] in CLASSES
    assert len(list((tmp_path / "ann").glob("*.jpg"))) == 3
    crops = list((tmp_path / "crops").rglob("*.png"))
    assert len(crops) == len(boxes)
    assert {c.parent.name for c in crops} <= set(CLASSES)
    first = next(b for r in doc["photos"] for b in r["boxes"])
    x1, y1, x2, y2 = first["box"]
    sizes = {Image.open(c).size for c in crops}
    # the crop is the box's pixels (the JSON's box is rounded to 0.1 px: a pixel either way)
    w, h = int(np.ceil(x2)) - int(np.floor(x1)), int(np.ceil(y2)) - int(np.floor(y1))
    assert any(abs(w - cw) <= 1 and abs(h - ch) <= 1 for cw, ch in sizes), ((w, h), sizes)
    # CSV, a higher floor, and nothing overwritten.
    code, _, err = run_cli(capsys, *args, "--min-score", "0.99", "--out", tmp_path / "b.csv")
    assert code == 0, err
    lines = (tmp_path / "b.csv").read_text().splitlines()
    assert lines[0] == "photo,width,height,label,score,x1,y1,x2,y2"
    assert all(float(line.split(",")[4]) >= 0.99 for line in lines[1:])
    code, _, err = run_cli(capsys, *args, "--out", tmp_path / "b.csv")
    assert code == 1
    one_line_error(err, "b.csv", "exists")
    code, _, err = run_cli(capsys, "detect", "predict", tmp_path / "nowhere", photos)
    assert code == 1
    one_line_error(err, "nowhere", "neither a run folder nor a detector name")


def test_evaluate_reports_coco_metrics_and_worst_photos(
    shelf_run: Path, tmp_path: Path, capsys
) -> None:
    held_out = _voc_set(tmp_path / "held", 6, seed=99)
    det = load_detector(shelf_run, backend="eager", num_workers=0)
    ev = evaluate_detector(det, held_out, out=tmp_path / "ev", worst=4)
    m = ev.metrics
    assert m.photos == 6 and m.boxes == sum(m.gt.values()) > 0
    assert 0.0 <= m.mAP <= m.mAP50 <= 1.0
    assert set(m.ap) == set(CLASSES)
    for name in ("metrics", "worst", "pr_curves"):
        assert ev.files[name].stat().st_size > 500
    saved = json.loads(ev.files["metrics"].read_text())
    assert saved["mAP50"] == pytest.approx(m.mAP50, abs=1e-6) and "per_class" in saved
    code, out, err = run_cli(capsys, "detect", "evaluate", shelf_run, held_out, "--backend",
                             "eager", "--workers", "0", "--json")  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["mAP50"] == pytest.approx(m.mAP50, abs=1e-6)


# ---------------------------------------------------------------------------- no training
def _person(draw: ImageDraw.ImageDraw, x: float, y: float, s: float, color) -> tuple[float, ...]:
    """A standing figure of height ``s`` (head, torso, arms, legs); returns its box."""
    cx = x + s * 0.25
    draw.ellipse((cx - s * 0.07, y, cx + s * 0.07, y + s * 0.15), fill=color)
    draw.rectangle((cx - s * 0.11, y + s * 0.16, cx + s * 0.11, y + s * 0.55), fill=color)
    draw.rectangle((cx - s * 0.16, y + s * 0.17, cx - s * 0.12, y + s * 0.5), fill=color)
    draw.rectangle((cx + s * 0.12, y + s * 0.17, cx + s * 0.16, y + s * 0.5), fill=color)
    draw.polygon([(cx - s * 0.1, y + s * 0.55), (cx - s * 0.02, y + s * 0.55),
                  (cx - s * 0.06, y + s), (cx - s * 0.13, y + s)], fill=color)  # fmt: skip
    draw.polygon([(cx + s * 0.02, y + s * 0.55), (cx + s * 0.1, y + s * 0.55),
                  (cx + s * 0.13, y + s), (cx + s * 0.06, y + s)], fill=color)  # fmt: skip
    return (cx - s * 0.16, y, cx + s * 0.16, y + s)


def street_photo(path: Path) -> tuple[Path, list[tuple[float, ...]]]:
    """A 420x300 photo of two standing figures (what HOG's people detector finds) and their
    true boxes."""
    rng = np.random.default_rng(0)
    street = Image.fromarray(
        np.clip(170 + rng.normal(0, 8, (300, 420, 3)), 0, 255).astype(np.uint8)
    )
    truth = [
        _person(ImageDraw.Draw(street), 60, 40, 200, (40, 40, 50)),
        _person(ImageDraw.Draw(street), 260, 80, 160, (60, 30, 30)),
    ]
    street.filter(ImageFilter.GaussianBlur(1.2)).save(path)
    return path, truth


def test_hog_people_needs_no_training(tmp_path: Path, capsys) -> None:
    _, truth = street_photo(tmp_path / "street.png")
    rng = np.random.default_rng(1)
    Image.fromarray(np.clip(170 + rng.normal(0, 8, (300, 420, 3)), 0, 255).astype(np.uint8)).save(
        tmp_path / "empty.png"
    )
    det = load_detector("hog_people")
    found = {Path(r.item).name: r.value for r in det.detect(sorted(tmp_path.glob("*.png")))}
    assert len(found["empty.png"].above(det.default_min_score)) == 0
    people = found["street.png"].above(det.default_min_score)
    from vitrina.engine import box_iou

    iou = box_iou(np.array(truth), people.boxes)
    assert len(people) == 2 and (iou.max(axis=1) > 0.5).all(), (people.boxes, truth)
    code, out, err = run_cli(
        capsys, "detect", "predict", "hog_people", tmp_path, "--crops", tmp_path / "crops"
    )
    assert code == 0, err
    assert len(list((tmp_path / "crops" / "person").glob("*.png"))) == 2
    code, out, _ = run_cli(capsys, "detect", "list")
    assert code == 0 and "hog_people" in out and "hog_faces" in out and "fasterrcnn" in out


def test_dlib_faces_in_the_same_interface(tmp_path: Path) -> None:
    skimage = pytest.importorskip("skimage.data")
    Image.fromarray(skimage.astronaut()).save(tmp_path / "astronaut.png")
    det = load_detector("hog_faces")
    (r,) = list(det.detect([tmp_path / "astronaut.png"], min_score=0.5))  # one strong face
    assert r.ok and len(r.value) == 1 and det.classes == ["face"]
    x1, y1, x2, y2 = r.value.boxes[0]
    assert 150 < (x1 + x2) / 2 < 260 and 50 < (y1 + y2) / 2 < 160  # her face, upper middle


# ---------------------------------------------------------------------------- the service
def test_detect_endpoint_answers_like_predict(
    shelf_run: Path, shelf_set: Path, tmp_path: Path
) -> None:
    import httpx

    from service_util import bearer, running_service
    from vitrina.service import ServiceConfig

    photo = sorted((shelf_set / "images").glob("*.png"))[1]
    want = next(iter(load_detector(shelf_run, backend="eager", num_workers=0).detect([photo])))
    want = want.value.above(0.0)
    config = ServiceConfig(detector=str(shelf_run), token="t", backend="eager", device="cpu")
    with running_service(config) as url:
        health = httpx.get(f"{url}/healthz").json()
        assert health["detector"] == shelf_run.name and health["model"] is None
        r = httpx.post(
            f"{url}/v1/detect?min_score=0",
            files={"image": ("p.png", photo.read_bytes(), "image/png")},
            headers=bearer("t"),
            timeout=120,
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert (body["width"], body["height"]) == want.size and body["backend"] == "eager"
        assert len(body["boxes"]) == len(want) > 0
        for b, box, label in zip(body["boxes"], want.boxes, want.labels, strict=True):
            got = [b["box"][k] for k in ("left", "top", "right", "bottom")]
            np.testing.assert_allclose(got, box, atol=0.11)  # answers are rounded to 0.1 px
            assert b["label"] == CLASSES[label]
        strict = httpx.post(
            f"{url}/v1/detect",  # the run's own floor (0.5)
            files={"image": ("p.png", photo.read_bytes(), "image/png")},
            headers=bearer("t"),
            timeout=120,
        ).json()
        assert strict["min_score"] == 0.5 and all(b["score"] >= 0.5 for b in strict["boxes"])
        bad = httpx.post(
            f"{url}/v1/detect",
            files={"image": ("x.png", b"not a photo", "image/png")},
            headers=bearer("t"),
        )
        assert bad.status_code == 400 and bad.json()["error"]["code"]
        assert httpx.post(f"{url}/v1/detect", files={"image": ("p.png", b"x")}).status_code == 401
        assert (
            httpx.post(
                f"{url}/v1/classify",
                files={"image": ("p.png", photo.read_bytes(), "image/png")},
                headers=bearer("t"),
            ).status_code
            == 404
        )  # no --model: not configured


def test_detect_endpoint_with_flip_answers_like_predict_with_flip(
    shelf_run: Path, shelf_set: Path
) -> None:
    """``vitrina serve --detector RUN --flip`` answers what ``detect predict --flip`` does,
    and says so; ``--flip`` without a detector, or with one that needs no training, is one
    clear error."""
    import httpx

    from service_util import running_service
    from vitrina.service import ServiceConfig, create_app

    photo = sorted((shelf_set / "images").glob("*.png"))[2]
    both = load_detector(shelf_run, backend="eager", num_workers=0, flip=True)
    want = next(iter(both.detect([photo]))).value
    plain = next(iter(load_detector(shelf_run, backend="eager", num_workers=0).detect([photo])))
    plain = plain.value
    want, plain = want.above(0.0), plain.above(0.0)
    assert len(want) > 0 and not np.array_equal(want.scores, plain.scores)  # flip changes it
    config = ServiceConfig(detector=str(shelf_run), detector_flip=True, backend="eager")
    with running_service(config) as url:
        body = httpx.post(
            f"{url}/v1/detect?min_score=0",
            files={"image": ("p.png", photo.read_bytes(), "image/png")},
            timeout=120,
        ).json()
    assert body["flip"] is True and len(body["boxes"]) == len(want)
    for b, box, score in zip(body["boxes"], want.boxes, want.scores, strict=True):
        got = [b["box"][k] for k in ("left", "top", "right", "bottom")]
        np.testing.assert_allclose(got, box, atol=0.11)  # answers are rounded to 0.1 px
        assert b["score"] == pytest.approx(float(score), abs=1e-3)
    with pytest.raises(VitrinaError, match="--flip is for the detector"):
        ServiceConfig(model=str(shelf_run), detector_flip=True)
    with pytest.raises(VitrinaError, match="--flip"):
        create_app(ServiceConfig(detector="hog_people", detector_flip=True))


def test_detect_endpoint_with_scales_answers_like_predict_with_scales(
    shelf_run: Path, shelf_set: Path
) -> None:
    """``vitrina serve --detector RUN --scales 0.75,1`` answers what ``detect predict
    --scales 0.75,1`` does (the batcher runs each size's engine over the batch), and says so;
    ``--scales`` without a detector is one clear error."""
    import httpx

    from service_util import running_service
    from vitrina.service import ServiceConfig

    photos = sorted((shelf_set / "images").glob("*.png"))[2:4]
    det = load_detector(shelf_run, backend="eager", num_workers=0, scales=(0.75, 1.0))
    wants = [r.value.above(0.0) for r in det.detect(photos)]
    assert sum(len(w) for w in wants) > 0
    config = ServiceConfig(
        detector=str(shelf_run), detector_scales=(0.75, 1.0), backend="eager", max_batch=2
    )
    with running_service(config) as url:
        for photo, want in zip(photos, wants, strict=True):
            body = httpx.post(
                f"{url}/v1/detect?min_score=0",
                files={"image": ("p.png", photo.read_bytes(), "image/png")},
                timeout=120,
            ).json()
            assert body["scales"] == [0.75, 1.0] and body["flip"] is False
            assert len(body["boxes"]) == len(want)
            for b, box, score in zip(body["boxes"], want.boxes, want.scores, strict=True):
                got = [b["box"][k] for k in ("left", "top", "right", "bottom")]
                np.testing.assert_allclose(got, box, atol=0.11)  # rounded to 0.1 px
                assert b["score"] == pytest.approx(float(score), abs=1e-3)
    with pytest.raises(VitrinaError, match="--scales is for the detector"):
        ServiceConfig(model=str(shelf_run), detector_scales=(1.0, 1.3))


def test_serve_refuses_a_classifier_as_detector(toy_run: Path) -> None:
    from vitrina.service import ServiceConfig, create_app

    with pytest.raises(RunFolderError, match="not a detector"):
        create_app(ServiceConfig(detector=str(toy_run)))


def test_training_places_decoding_by_measurement_on_a_cpu_unless_told(tmp_path: Path) -> None:
    """A detector's step costs ~100x its photos' decoding: on a CPU the loader measures
    before it gives a core to a decoding process; ``--workers`` is obeyed as given."""
    from vitrina.detect.train import DetectTrainConfig, _loader
    from vitrina.models.detection import DetectorSpec, create_detector
    from vitrina.training.feeding import MeasuredLoader

    model = create_detector(DetectorSpec(head="fasterrcnn", backbone="resnet18", num_classes=2))
    photos = [object()] * 20  # never read: the loader is only built
    cfg = DetectTrainConfig(data_dir="x")
    loader = _loader(photos, model, "none", cfg, shuffle=True, g=torch.Generator())
    assert isinstance(loader, MeasuredLoader) and loader.num_workers == 0
    cfg.num_workers = 3
    loader = _loader(photos, model, "none", cfg, shuffle=True, g=torch.Generator())
    assert not isinstance(loader, MeasuredLoader) and loader.num_workers == 3
