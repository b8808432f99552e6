"""Training and inference at fp64, fp32 and bf16: the same computation at other precisions."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import make_dataset, toy_config
from vitrina.errors import VitrinaError
from vitrina.training import PRECISIONS, Callback, TrainConfig, train_classifier
from vitrina.training.precision import inference_backend, loss_dtype, param_dtype


class _Dtypes(Callback):
    """Records the dtype of the model's parameters at the end of each epoch."""

    def __init__(self) -> None:
        self.seen: list[torch.dtype] = []
        self.model: torch.nn.Module | None = None

    def on_epoch_end(self, state, record) -> None:
        assert self.model is not None
        self.seen.append(next(self.model.parameters()).dtype)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("prec") / "data", per_class=8)


def _train(data: Path, out: Path, precision: str, **kw):
    cfg = toy_config(data, out, precision=precision, epochs=2, optimizer="sgd", lr=0.02, **kw)
    return train_classifier(cfg, progress=False)


def test_fp64_is_fp32_in_more_bits(data: Path, tmp_path: Path) -> None:
    """Same seed, data and steps: fp64 weights end within fp32 rounding of fp32's; the run
    folder stores float32 either way."""
    r32 = _train(data, tmp_path / "fp32", "fp32")
    r64 = _train(data, tmp_path / "fp64", "fp64")
    w32 = load_file(str(r32.run_dir / "model.safetensors"))
    w64 = load_file(str(r64.run_dir / "model.safetensors"))
    assert all(v.dtype == torch.float32 for v in w64.values() if v.is_floating_point())
    for k in w32:
        torch.testing.assert_close(w64[k], w32[k], atol=2e-4, rtol=1e-3)
    # the resume point keeps the float64 weights it trained with
    ckpt = load_file(str(r64.run_dir / "checkpoint" / "last.safetensors"))
    assert ckpt["model.net.features.0.weight"].dtype == torch.float64
    assert r64.history[0]["train_loss"] == pytest.approx(r32.history[0]["train_loss"], rel=1e-4)


def test_fp64_probe_uses_the_fp64_backend(data: Path, tmp_path: Path, monkeypatch) -> None:
    """--mode probe at fp64 computes the cached features with the fp64 backend and fits the
    head in float64 (L-BFGS), giving the head fp32 gives to within rounding."""
    from vitrina import engine as engine_pkg

    used: list[str] = []
    real = engine_pkg.Engine.__init__

    def spy(self, model, **kw):
        used.append(kw.get("backend", "auto"))
        real(self, model, **kw)

    monkeypatch.setattr(engine_pkg.Engine, "__init__", spy)
    base = toy_config(data, tmp_path / "scratch", epochs=3)
    src = train_classifier(base, progress=False).run_dir
    runs = {}
    for p in ("fp32", "fp64"):
        cfg = toy_config(data, tmp_path / p, mode="probe", weights=str(src), epochs=5, precision=p)
        runs[p] = train_classifier(cfg, progress=False)
    assert "fp64" in used and "eager" in used
    # A convex fit: both reach the same optimum (L-BFGS takes other steps in other bits).
    l32, l64 = (runs[p].history[-1]["train_loss"] for p in ("fp32", "fp64"))
    assert l64 == pytest.approx(l32, rel=2e-2)
    assert runs["fp64"].metrics["val_accuracy"] == runs["fp32"].metrics["val_accuracy"]


def test_fp64_embedding_training(tmp_path: Path) -> None:
    from test_train_embedding import cfg, make_identities
    from vitrina.training.embedding import train_embedding

    ids = make_identities(tmp_path / "ids", n_ids=4, per_id=4)
    res = train_embedding(
        cfg(ids, tmp_path / "run", precision="fp64", epochs=1, val_fraction=0.5, p=2),
        progress=False,
    )
    w = load_file(str(res.run_dir / "model.safetensors"))
    assert all(v.dtype != torch.float64 for v in w.values())


def test_precision_choices_and_helpers(data: Path) -> None:
    assert PRECISIONS == ("fp64", "fp32", "bf16", "auto")
    assert [inference_backend(p) for p in ("fp64", "fp32", "bf16")] == ["fp64", "eager", "bf16"]
    with pytest.raises(ValueError, match="resolved by choose_precision"):
        inference_backend("auto")  # auto is fp32 or bf16 once measured, never a backend
    assert param_dtype("fp64") == torch.float64 and param_dtype("bf16") == torch.float32
    assert param_dtype("auto") == torch.float32
    assert loss_dtype(torch.zeros(1, dtype=torch.bfloat16)).dtype == torch.float32
    assert loss_dtype(torch.zeros(1, dtype=torch.float64)).dtype == torch.float64
    with pytest.raises(VitrinaError, match="did you mean: fp64"):
        TrainConfig(data_dir=str(data), precision="fp46").resolved()
    from vitrina.training.embedding import EmbeddingConfig

    with pytest.raises(
        VitrinaError, match="--precision 'fp16' is not one of fp64, fp32, bf16, auto"
    ):
        EmbeddingConfig(data_dir=str(data), precision="fp16").resolved()


def test_auto_precision_for_an_autoencoder(tmp_path: Path, monkeypatch) -> None:
    """train-autoencoder --precision auto resolves like train's: fp32 without bf16 units
    (said in precision.json, recorded in the run's config); with them, the trial steps time
    the whole autoencoder (it has no ``embed``: its reconstruction is timed)."""
    import json

    import vitrina.engine as engine
    from vitrina.models import create
    from vitrina.models.autoencoder import Autoencoder
    from vitrina.training import precision
    from vitrina.training.autoencoder import AutoencoderConfig, train_autoencoder

    photos = make_dataset(tmp_path / "photos", per_class=3)
    cfg = AutoencoderConfig(
        data_dir=str(photos),
        arch="tutorial_cnn",
        epochs=1,
        batch_size=4,
        width=16,
        augment="none",
        precision="auto",
        out=str(tmp_path / "ae"),
        num_workers=0,
        device="cpu",
    )
    if not engine.bf16_supported(torch.device("cpu")):
        res = train_autoencoder(cfg, progress=False)
        saved = json.loads((res.run_dir / "precision.json").read_text())
        assert saved["chosen"] == "fp32" and "no bf16 matrix units" in saved["reason"]
        config = json.loads((res.run_dir / "vitrina.json").read_text())["config"]
        assert config["precision"] == "fp32"
    monkeypatch.setattr(engine, "bf16_supported", lambda device: True)
    timed: list[tuple[int, ...]] = []
    real = precision._steps_per_s

    def spy(model, x, bf16, step):
        timed.append(tuple(x.shape))
        assert real(model, x, bf16, step) > 0  # the real trial steps run on the autoencoder
        return 3.0 if bf16 else 1.0  # bf16 faked 3x faster (it is emulated on most CPUs)

    monkeypatch.setattr(precision, "_steps_per_s", spy)
    encoder = create("tutorial_cnn")
    model = Autoencoder(encoder, width=16)
    pre = encoder.preprocess
    before = {k: v.clone() for k, v in model.state_dict().items()}
    choice = precision.choose_precision("auto", model, torch.device("cpu"), 4, preprocess=pre)
    assert choice.chosen == "bf16" and choice.bf16_steps_per_s > choice.fp32_steps_per_s
    assert timed == [(4, pre.channels, *pre.input_size)] * 2 * precision._ROUNDS
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # timed on a copy
