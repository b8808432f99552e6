"""vitrina train-embedding: a run folder the embedding tools accept, resumable, clear failures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import one_line_error, run_cli, usage_error
from vitrina.errors import VitrinaError
from vitrina.evaluate.retrieval import loo_retrieval
from vitrina.models.embedding import EmbeddingModel
from vitrina.runs import load_model, read_run
from vitrina.training.embedding import EmbeddingConfig, train_embedding


def make_identities(root: Path, n_ids: int = 6, per_id: int = 6, seed: int = 0) -> Path:
    """Each identity is a fixed coarse colour pattern; its photos add noise and a shift."""
    rng = np.random.default_rng(seed)
    for i in range(n_ids):
        pattern = rng.integers(0, 256, size=(4, 4, 3)).astype(np.float32)
        big = np.kron(pattern, np.ones((10, 10, 1)))
        d = root / f"person{i:02d}"
        d.mkdir(parents=True)
        for j in range(per_id):
            dy, dx = rng.integers(-3, 4, size=2)
            img = np.roll(big, (dy, dx), axis=(0, 1)) + rng.normal(0, 25, big.shape)
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(d / f"{j}.png")
    return root


def cfg(data: Path, out: Path, **kw) -> EmbeddingConfig:
    base = dict(
        data_dir=str(data),
        arch="tutorial_cnn",
        weights=None,
        loss="softmax+triplet-batch-hard",
        dim=32,
        p=3,
        k=3,
        epochs=2,
        lr=3e-3,
        head_lr_mult=1.0,
        val_fraction=0.34,
        augment="none",
        out=str(out),
        num_workers=0,
        device="cpu",
    )
    base.update(kw)
    return EmbeddingConfig(**base)


@pytest.fixture(scope="module")
def ids_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_identities(tmp_path_factory.mktemp("ids") / "people")


def test_run_folder_is_an_embedding_model_with_calibrated_threshold(ids_data, tmp_path):
    res = train_embedding(cfg(ids_data, tmp_path / "run"), progress=False)
    info = read_run(res.run_dir)
    assert info.task == "embedding"
    assert info.data["validation_identities"] == 2 and info.data["train_identities"] == 4
    model = load_model(res.run_dir)
    assert isinstance(model, EmbeddingModel)
    x = torch.randn(5, 3, 32, 32)
    assert model.embed(x).shape == (5, 32)
    # Prototypes: a training photo is closest to its own identity's prototype.
    from vitrina.data.transforms import eval_transform
    from vitrina.io import read_image

    tf = eval_transform(model.preprocess)
    names = info.classes
    hits = 0
    for name in names:
        img = tf(read_image(next((ids_data / name).iterdir()))).unsqueeze(0)
        hits += int(names[int(model.classify(img).argmax())] == name)
    assert hits >= len(names) - 1
    th = info.thresholds["verification"]
    assert th["far"] == pytest.approx(0.01) and np.isfinite(th["threshold"])
    assert th["measured_on"] == "held-out identities"
    lines = (res.run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    assert "val_mAP" in json.loads(lines[0])
    assert (res.run_dir / "plots" / "roc.png").is_file()


def test_training_separates_unseen_identities(ids_data, tmp_path):
    """Held-out identities retrieve each other better after training than at random init."""
    from vitrina.embed import Embedder

    res = train_embedding(cfg(ids_data, tmp_path / "run", epochs=8), progress=False)
    info = read_run(res.run_dir)
    first = json.loads((res.run_dir / "metrics.jsonl").read_text().splitlines()[0])
    assert res.metrics["val_mAP"] >= first["val_mAP"]
    # The run works with the embedding tools: vectors of the held-out identities.
    held = [n for n in sorted(p.name for p in ids_data.iterdir()) if n not in info.classes]
    paths = [p for n in held for p in sorted((ids_data / n).iterdir())]
    vec = Embedder(str(res.run_dir), backend="eager", device="cpu").embed_paths(paths).vectors
    labels = np.repeat(np.arange(len(held)), 6)
    assert vec.shape == (len(paths), 32)
    assert loo_retrieval(vec, labels)["val_mAP"] > 0.8


def test_resume_gives_the_uninterrupted_run(ids_data, tmp_path):
    from vitrina.training import Callback

    class Interrupt(Callback):
        def on_epoch_end(self, state, record):
            raise KeyboardInterrupt

    a = train_embedding(cfg(ids_data, tmp_path / "a", epochs=2), progress=False)
    with pytest.raises(KeyboardInterrupt):
        train_embedding(
            cfg(ids_data, tmp_path / "b", epochs=2), progress=False, extra_callbacks=[Interrupt()]
        )
    # without --epochs the run goes on to its own planned epochs (not the default's)
    b = train_embedding(cfg(ids_data, tmp_path / "b", epochs=None), resume=True, progress=False)
    assert [r["epoch"] for r in b.history] == [1, 2]
    assert b.history[-1]["train_loss"] == pytest.approx(a.history[-1]["train_loss"], rel=1e-4)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(ids_data, tmp_path, monkeypatch):
    import vitrina.losses as losses

    real = losses.build_criterion

    def poisoned(*args, **kw):
        crit = real(*args, **kw)
        calls = {"n": 0}
        forward = crit.forward

        def fwd(raw, neck, labels):
            calls["n"] += 1
            total, parts = forward(raw, neck, labels)
            # 4 training identities x 6 photos = 2 P×K batches per epoch: poison epoch 2
            return (total * float("nan") if calls["n"] > 2 else total), parts

        crit.forward = fwd
        return crit

    monkeypatch.setattr(losses, "build_criterion", poisoned)
    out = tmp_path / "run"
    with pytest.raises(VitrinaError) as e:
        train_embedding(cfg(ids_data, out, epochs=3), progress=False)
    msg = str(e.value)
    assert "epoch 2, batch 1" in msg and "last good checkpoint (epoch 1)" in msg
    assert "\n" not in msg
    assert read_run(out).metrics["best_epoch"] == 1
    load_model(out)  # the kept checkpoint loads and verifies


def test_cli_bad_inputs_are_one_line(ids_data, tmp_path, capsys):
    code, _, err = run_cli(
        capsys,
        "train-embedding",
        str(ids_data),
        "--arch",
        "tutorial_cnn",
        "--weights",
        "none",
        "--loss",
        "tripplet",
        "--out",
        str(tmp_path / "r1"),
    )
    assert code == 1
    one_line_error(err, "tripplet", "triplet")
    code, _, err = run_cli(
        capsys,
        "train-embedding",
        str(ids_data),
        "--arch",
        "tutorial_cnn",
        "--weights",
        "none",
        "--p",
        "9",
        "--out",
        str(tmp_path / "r2"),
    )
    assert code == 1
    one_line_error(err, "--p")


def test_single_image_identities_are_skipped_and_counted(tmp_path):
    data = make_identities(tmp_path / "people", n_ids=5, per_id=4)
    lonely = data / "zz-lonely"
    lonely.mkdir()
    (data / "person00" / "0.png").rename(lonely / "only.png")
    res = train_embedding(cfg(data, tmp_path / "run", epochs=1, val_fraction=0.0), progress=False)
    assert res.dropped_singletons == 1
    assert read_run(res.run_dir).thresholds["verification"]["measured_on"].startswith("training")


@pytest.fixture(scope="module")
def reid_setup(tmp_path_factory: pytest.TempPathFactory, ids_data: Path) -> tuple[Path, Path]:
    """A Market-style folder made from the generated identities, and a run trained on it."""
    from vitrina.data.identities import to_market

    root = tmp_path_factory.mktemp("reid")
    many = make_identities(root / "people", n_ids=10, per_id=6, seed=1)
    market = root / "market"
    to_market(many, market, train_ids=5, cameras=3, seed=0)
    res = train_embedding(cfg(market, root / "run", epochs=6, val_fraction=0.0), progress=False)
    return market, res.run_dir


def test_evaluate_reid_cli_writes_report_curve_and_sheet(reid_setup, tmp_path, capsys):
    market, run = reid_setup
    out = tmp_path / "eval"
    code, stdout, err = run_cli(
        capsys,
        "evaluate-reid",
        str(run),
        str(market),
        "--rerank",
        "--k1",
        "4",
        "--k2",
        "2",
        "--backend",
        "eager",
        "--out",
        str(out),
    )
    assert code == 0, err
    assert "rank-1" in stdout and "re-ranked" in stdout
    doc = json.loads((out / "report.json").read_text())
    assert set(doc) == {"plain", "re-ranked"}
    plain = doc["plain"]
    # every photo of the query camera is a query: 5 test people x 2 photos on that camera
    assert plain["n_queries"] == len(list((market / "query").iterdir())) == 10
    assert 0 <= plain["mAP"] <= 1
    assert plain["info"]["model"].startswith("tutorial_cnn (run")
    for name in ("cmc.png", "ranked.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Refuses to overwrite what it wrote.
    code, _, err = run_cli(capsys, "evaluate-reid", str(run), str(market), "--out", str(out))
    assert code == 1
    one_line_error(err, "report.json", "exists")


def test_evaluate_reid_needs_market_layout(ids_data, reid_setup, capsys):
    _, run = reid_setup
    code, _, err = run_cli(capsys, "evaluate-reid", str(run), str(ids_data))
    assert code == 1
    one_line_error(err, "to-market")


def test_plot_embeddings_writes_a_map_with_its_map_score(reid_setup, tmp_path, capsys):
    market, run = reid_setup
    out = tmp_path / "map.png"
    code, stdout, err = run_cli(
        capsys, "plot-embeddings", str(market), "--model", str(run), "--out", str(out)
    )
    assert code == 0, err
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The run started from random weights: only the trained panel, with its mAP.
    assert stdout.count("leave-one-out mAP") == 1
    code, _, err = run_cli(
        capsys,
        "plot-embeddings",
        str(market),
        "--model",
        str(run),
        "--method",
        "tnse",
        "--out",
        str(tmp_path / "x.png"),
    )
    assert code == 2  # a projection outside tsne/umap is a usage error, listing both
    usage_error(err, "'tnse' is not one of 'tsne', 'umap'")


def test_layers_of_an_embedding_run_are_named_like_its_backbone(reid_setup):
    from vitrina.embed import Embedder, EmbeddingSpec, list_layers
    from vitrina.models import create

    _, run = reid_setup
    names = list_layers(str(run))
    assert names[:3] == list_layers(create("tutorial_cnn"))[:3]
    emb = Embedder(EmbeddingSpec(str(run), layers=(names[0],)), backend="eager", device="cpu")
    x = emb.embed_images([Image.new("RGB", (40, 40), (200, 30, 30))])
    assert x.shape == (1, emb.dim) and np.isfinite(x).all()


def test_starts_from_a_classifier_run_and_continues_an_embedding_run(ids_data, toy_run, tmp_path):
    from vitrina.runs import load_model as load

    first = train_embedding(
        cfg(ids_data, tmp_path / "a", weights=str(toy_run), epochs=1), progress=False
    )
    start = load(toy_run)
    model = load(first.run_dir)
    # Backbone weights came from the classifier run (one epoch moved them only a little).
    w0 = start.state_dict()["net.features.0.weight"]
    w1 = model.state_dict()["net.net.features.0.weight"]
    assert torch.corrcoef(torch.stack([w0.flatten(), w1.flatten()]))[0, 1] > 0.9
    again = train_embedding(
        cfg(ids_data, tmp_path / "b", weights=str(first.run_dir), epochs=1), progress=False
    )
    assert read_run(again.run_dir).task == "embedding"


@pytest.mark.slow
def test_umap_projection_is_seeded():
    from vitrina.embed.projection import project

    x = np.random.default_rng(0).normal(size=(60, 8)).astype(np.float32)
    a, b = project(x, "umap", seed=1), project(x, "umap", seed=1)
    assert a.shape == (60, 2) and np.allclose(a, b)
