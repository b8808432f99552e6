"""train-autoencoder: an encoder run folder that embed/index read and train starts from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import make_dataset, run_cli, toy_config
from vitrina.errors import VitrinaError
from vitrina.training.autoencoder import AutoencoderConfig, train_autoencoder


def _cfg(data: Path, out: Path, **kw) -> AutoencoderConfig:
    base = dict(
        data_dir=str(data),
        arch="tutorial_cnn",
        epochs=10,
        batch_size=8,
        lr=3e-3,
        width=32,
        augment="none",
        val_fraction=0.2,
        out=str(out),
        num_workers=0,
        device="cpu",
    )
    base.update(kw)
    return AutoencoderConfig(**base)


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("ae") / "photos", per_class=8)


@pytest.fixture(scope="module")
def encoder_run(photos: Path, tmp_path_factory: pytest.TempPathFactory):
    return train_autoencoder(_cfg(photos, tmp_path_factory.mktemp("aerun") / "run"), progress=False)


def test_encoder_run_folder(encoder_run) -> None:
    run = encoder_run.run_dir
    info = json.loads((run / "vitrina.json").read_text())
    assert info["task"] == "encoder" and info["classes"] == [] and info["num_classes"] == 0
    assert info["arch"] == "tutorial_cnn" and info["data"]["num_images"] == 24
    weights = load_file(str(run / "model.safetensors"))
    assert weights and not any(k.startswith("head.") for k in weights)  # no classifier
    assert load_file(str(run / "decoder.safetensors"))
    pictures = sorted((run / "plots" / "reconstructions").glob("epoch-*.png"))
    assert [p.name for p in pictures] == [f"epoch-{i:03d}.png" for i in range(1, 11)]
    assert (run / "plots" / "curves.png").is_file()
    # it learned: the held-out reconstruction error fell
    losses = [r["val_loss"] for r in encoder_run.history]
    assert losses[-1] < 0.8 * losses[0], losses
    assert encoder_run.metrics["best_epoch"] == 1 + losses.index(min(losses))


def test_embed_reads_the_encoder(encoder_run, photos: Path) -> None:
    from vitrina.data.transforms import eval_transform
    from vitrina.embed import Embedder, EmbeddingSpec
    from vitrina.io import read_image
    from vitrina.runs import load_model

    run = encoder_run.run_dir
    paths = sorted(photos.rglob("*.png"))[:3]
    got = Embedder(EmbeddingSpec(str(run), normalize=False), backend="eager", device="cpu")
    vectors = got.embed_paths(paths).vectors
    model = load_model(run)
    tf = eval_transform(model.preprocess)
    with torch.no_grad():
        ref = model.embed(torch.stack([tf(read_image(p)) for p in paths]))
    torch.testing.assert_close(torch.from_numpy(vectors), ref, atol=1e-5, rtol=1e-4)


def test_train_starts_from_the_encoder(encoder_run, photos: Path, tmp_path: Path) -> None:
    """Pretrain without labels, then a probe with labels on the encoder's frozen features."""
    from vitrina.models import create
    from vitrina.runs import load_model
    from vitrina.training import train_classifier

    run = encoder_run.run_dir
    clf = create("tutorial_cnn", weights=str(run), num_classes=3).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(clf.embed(x), load_model(run).embed(x))
        assert clf.classify(x).shape == (2, 3)
    cfg = toy_config(photos, tmp_path / "probe", mode="probe", weights=str(run), epochs=5)
    res = train_classifier(cfg, progress=False)
    assert res.metrics["val_accuracy"] >= 0.6  # three colours from unlabelled features
    assert json.loads((res.run_dir / "vitrina.json").read_text())["weights_origin"].startswith(
        "run:"
    )


def test_predict_refuses_an_encoder_clearly(encoder_run, capsys, photos: Path) -> None:
    from vitrina.classify import load

    with pytest.raises(VitrinaError, match="no classes to predict"):
        load(encoder_run.run_dir)
    code, _, err = run_cli(capsys, "predict", encoder_run.run_dir, next(photos.rglob("*.png")))
    assert code == 1 and "vitrina train PHOTOS --arch tutorial_cnn --weights" in err


def test_resume_and_cli(photos: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    code, stdout, err = run_cli(
        capsys,
        "train-autoencoder",
        photos,
        "--arch",
        "tutorial_cnn",
        "--epochs",
        "1",
        "--width",
        "16",
        "--workers",
        "0",
        "--device",
        "cpu",
        "--out",
        out,
    )
    assert code == 0, err
    assert "reconstruction error" in stdout and "--weights" in stdout
    res = train_autoencoder(_cfg(photos, out, epochs=2, width=16), resume=True, progress=False)
    assert [r["epoch"] for r in res.history] == [1, 2]
    code, _, err = run_cli(capsys, "train-autoencoder", photos, "--input-size", "64x", "--out", out)
    assert code == 2 and "HEIGHTxWIDTH" in err
