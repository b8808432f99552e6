"""Classic models (HOG + SVM, SIFT bag of words + SVM, perceptron on pixels) as run folders
every consumer reads: fitted by scikit-learn, stored without pickle, refused where they
cannot go (ONNX), and flat photos reported by name."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from conftest import run_cli
from vitrina.errors import VitrinaError


def _shapes(path: Path, kind: str, seed: int, size: int = 96) -> Path:
    """Axis-aligned squares or discs on a noisy background: HOG sees only horizontal and
    vertical edges in one, every orientation in the other; SIFT sees corners or curves."""
    rng = np.random.default_rng(seed)
    a = np.clip(rng.normal(70, 12, (size, size)), 0, 255).astype(np.uint8)
    im = Image.fromarray(a).convert("RGB")
    draw = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(5, 8))):
        r = int(rng.integers(7, 14))
        x, y = (int(v) for v in rng.integers(r, size - r, 2))
        fill = tuple(int(v) for v in rng.integers(150, 255, 3))
        box = (x - r, y - r, x + r, y + r)
        (draw.rectangle if kind == "squares" else draw.ellipse)(box, fill=fill)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)
    return path


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shapes") / "data"
    for i in range(14):
        _shapes(root / "squares" / f"s{i:02d}.png", "squares", seed=i)
        _shapes(root / "discs" / f"d{i:02d}.png", "discs", seed=100 + i)
    return root


def _cfg(data: Path, out: Path, arch: str, **kw):
    from vitrina.training import TrainConfig

    return TrainConfig(
        data_dir=str(data), arch=arch, out=str(out), num_workers=0, device="cpu", **kw
    )


@pytest.fixture(scope="module")
def hog_run(shapes: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vitrina.training import train_classifier

    out = tmp_path_factory.mktemp("hog") / "run"
    return train_classifier(_cfg(shapes, out, "hog_svm"), progress=False).run_dir


def test_hog_svm_is_a_run_folder_without_pickle(hog_run: Path, shapes: Path) -> None:
    info = json.loads((hog_run / "vitrina.json").read_text())
    assert info["arch"] == "hog_svm" and info["weights_origin"] == "fitted"
    assert info["config"]["classic"]["features"] == {
        "size": [128, 128],
        "cell": 8,
        "block": 2,
        "bins": 9,
    }
    assert info["metrics"]["val_accuracy"] == 1.0
    assert info["metrics"]["svm_C"] in (0.001, 0.01, 0.1, 1.0, 10.0)
    assert {p.name for p in hog_run.iterdir()} >= {"model.safetensors", "vitrina.json"}
    assert not list(hog_run.rglob("*.pkl")) and not list(hog_run.rglob("*.joblib"))
    from safetensors.torch import load_file

    assert set(load_file(str(hog_run / "model.safetensors"))) == {"head.weight", "head.bias"}

    from vitrina.classify import load

    clf = load(hog_run)
    preds = clf.predict(sorted(shapes.rglob("*.png")), backend="auto", device="cpu")
    assert all(p.label == p.path.parent.name for p in preds)
    assert clf.last_engine is not None and clf.last_engine.backend_name == "eager"


def test_hog_descriptor_is_opencvs_on_the_resized_photo(hog_run: Path, shapes: Path) -> None:
    """The engine's descriptor (normalised tensors -> pixels -> OpenCV) equals OpenCV's HOG
    computed directly on the photo resized by PIL: the plain path."""
    import cv2

    from vitrina.embed import Embedder, EmbeddingSpec

    path = sorted(shapes.rglob("*.png"))[0]
    spec = EmbeddingSpec(str(hog_run), normalize=False)
    got = Embedder(spec, backend="eager", device="cpu").embed_paths([path])
    assert got.vectors.shape == (1, 8100)
    pixels = np.asarray(Image.open(path).convert("RGB").resize((128, 128), Image.BILINEAR))
    hog = cv2.HOGDescriptor((128, 128), (16, 16), (8, 8), (8, 8), 9)
    np.testing.assert_allclose(got.vectors[0], hog.compute(pixels).reshape(-1), atol=1e-6)


def test_head_is_the_svm_decision_function(hog_run: Path, shapes: Path) -> None:
    """The stored head reproduces scikit-learn's LinearSVC, fitted again on the same features
    with the recorded C: logits = temperature x (-d/2, d/2)."""
    from sklearn.svm import LinearSVC

    from vitrina.embed import Embedder, EmbeddingSpec
    from vitrina.runs import load_model, read_run

    info = read_run(hog_run)
    model = load_model(hog_run)
    emb = Embedder(EmbeddingSpec(str(hog_run), normalize=False), backend="eager", device="cpu")
    train = sorted(shapes.rglob("*.png"))
    res = emb.embed_paths(train)
    x = res.vectors.astype(np.float64)
    # the split is seeded: fit on exactly the training photos of the run
    from vitrina.data import scan_folder, stratified_split

    scan = scan_folder(shapes)
    tr, _ = stratified_split(scan.samples, 0.2, 0)
    names = {s.path: s.label for s in tr}
    rows = [i for i, p in enumerate(res.paths) if p in names]
    svm = LinearSVC(C=info.metrics["svm_C"], dual="auto", max_iter=10_000, random_state=0)
    svm.fit(x[rows], [names[res.paths[i]] for i in rows])
    d = svm.decision_function(x)
    with torch.no_grad():
        logits = model.head.double()(torch.from_numpy(x)).numpy()
    t = info.metrics["temperature"]
    np.testing.assert_allclose(logits[:, 1] - logits[:, 0], t * d, rtol=1e-4, atol=1e-4)


def test_classic_models_stay_on_pytorch_backends(hog_run: Path, tmp_path: Path) -> None:
    from vitrina.classify import export_model
    from vitrina.engine import Engine, Logits
    from vitrina.runs import load_model

    model = load_model(hog_run)
    with pytest.raises(VitrinaError, match="outside PyTorch"):
        Engine(model, backend="onnx", device="cpu")
    with pytest.raises(VitrinaError, match="cannot export 'hog_svm' to ONNX"):
        export_model(hog_run, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()
    x = torch.rand(2, 3, 128, 128)
    ref = Engine(model, backend="eager", device="cpu").forward(Logits(), x)
    for backend in ("fp64", "auto"):
        got = Engine(model, backend=backend, device="cpu").forward(Logits(), x)
        torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)


def test_sift_bag_of_words_reports_flat_photos_by_name(
    shapes: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A flat photo has no SIFT keypoint: training names it and goes on; so do predict,
    embed and the index."""
    import shutil

    from vitrina.classify import load
    from vitrina.models.classic import SiftBovwSvm
    from vitrina.training import train_classifier

    data = Path(shutil.copytree(shapes, tmp_path / "data"))
    Image.new("RGB", (80, 60), (128, 128, 128)).save(data / "squares" / "flat.png")
    res = train_classifier(_cfg(data, tmp_path / "run", "sift_bovw_svm"), progress=False)
    assert res.metrics["val_accuracy"] >= 0.8
    assert len(res.bad_files) == 1 and "flat.png: no SIFT keypoints" in res.bad_files[0]
    info = json.loads((res.run_dir / "vitrina.json").read_text())
    assert info["config"]["classic"]["features"] == {"words": 256, "max_keypoints": 500}
    assert info["config"]["fit"]["vocabulary"]["words"] == 256
    assert info["metrics"]["unreadable_files"] == 1

    clf = load(res.run_dir)
    assert isinstance(clf.model, SiftBovwSvm)
    assert float(clf.model.net.vocabulary.abs().sum()) > 0  # the fitted words came back
    photos = [data / "squares" / "flat.png", data / "squares" / "s00.png"]
    preds = clf.predict(photos, backend="eager", device="cpu")
    assert preds[0].label is None and "no SIFT keypoints" in (preds[0].error or "")
    assert preds[1].label == "squares"

    code, _, err = run_cli(capsys, "embed", res.run_dir, *photos, "--out", tmp_path / "v.npy")
    assert code == 1  # one photo could not be described (the exit code says so)
    assert "flat.png" in err and "no SIFT keypoints" in err
    assert np.load(tmp_path / "v.npy").shape == (1, 256)


def test_settings_recorded_in_the_run_rebuild_the_model(shapes: Path, tmp_path: Path) -> None:
    """A vocabulary of another size (a user's Python choice) reloads from vitrina.json."""
    from vitrina.models.classic import SiftBovwFeatures, SiftBovwSvm
    from vitrina.runs import RunInfo, load_model, save_run

    model = SiftBovwSvm(2)
    model.configure({"features": {"words": 16, "max_keypoints": 100}})
    model.net.vocabulary.copy_(torch.rand(16, 128))
    assert isinstance(model.net, SiftBovwFeatures) and model.num_features == 16
    info = RunInfo(
        arch="sift_bovw_svm",
        classes=["a", "b"],
        preprocess=model.preprocess,
        config={"classic": model.settings()},
    )
    save_run(tmp_path / "run", model, info)
    again = load_model(tmp_path / "run")
    assert again.num_features == 16 and again.net.max_keypoints == 100
    assert torch.equal(again.net.vocabulary, model.net.vocabulary)


def test_fitted_arch_ignores_gradient_options(shapes: Path, tmp_path: Path) -> None:
    from vitrina.training import TrainConfig

    c = TrainConfig(data_dir=str(shapes), arch="hog_svm").resolved()
    assert (c.mode, c.epochs, c.augment, c.weights) == ("scratch", 1, "none", None)
    with pytest.raises(VitrinaError, match="--weights imagenet does not apply"):
        TrainConfig(data_dir=str(shapes), arch="hog_svm", weights="imagenet").resolved()


def test_mlp_pixels_trains_like_a_network_and_exports(shapes: Path, tmp_path: Path) -> None:
    from vitrina.classify import export_model
    from vitrina.models import create
    from vitrina.training import train_classifier

    model = create("mlp_pixels", num_classes=3)
    assert model.num_features == 256 and model.preprocess.input_size == (32, 32)
    cfg = _cfg(shapes, tmp_path / "run", "mlp_pixels", mode="scratch", epochs=2, augment="none")
    res = train_classifier(cfg, progress=False)
    report = export_model(res.run_dir, tmp_path / "mlp.onnx")
    assert report["top1_agreement"] == 1.0


def test_classic_family_in_the_zoo() -> None:
    from vitrina import zoo

    for name in ("hog_svm", "sift_bovw_svm", "mlp_pixels"):
        assert zoo.family_of(name).name == "Classic"
    names = [e.name for e in zoo.find(family="classic").entries]
    assert sorted(names) == ["hog_svm", "mlp_pixels", "sift_bovw_svm"]
    entry = zoo.describe("hog_svm")
    assert entry.params == 8100 * 2 + 2 and entry.input_size == (128, 128)  # 2-class SVM
    timings = zoo.measure("hog_svm", ("eager", "onnx"), min_time=0.0, max_time=0.1)
    assert set(timings) == {"eager"}  # no ONNX for OpenCV features: no cell, no error


def test_gradient_explanations_are_refused_occlusion_works(hog_run: Path, shapes: Path) -> None:
    from vitrina.explain import explain
    from vitrina.runs import load_model

    model = load_model(hog_run)
    photo = sorted(shapes.rglob("*.png"))[0]
    with pytest.raises(VitrinaError, match="perturbation method: occlusion"):
        explain(model, photo, "saliency")
    ex = explain(model, photo, "occlusion")
    assert ex.heatmap.shape[:2] == Image.open(photo).size[::-1]
