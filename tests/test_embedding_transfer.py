"""Embeddings that generalise: how much of the backbone trains (auto by the data, or chosen),
--val-dir picking the epoch and the recipe, the starting weights' figures beside the trained
ones (and a plain word when training did not beat them), runs from before all this."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import run_cli
from test_train_embedding import cfg, make_identities
from vitrina.models import create
from vitrina.models.embedding import EmbeddingModel
from vitrina.runs import load_model, read_run
from vitrina.training.embedding import EmbeddingConfig, train_embedding
from vitrina.training.trainable import (
    AUTO_RULE,
    backbone_stages,
    choose_trainable,
    plan_trainable,
)


@pytest.fixture(scope="module")
def people(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_identities(tmp_path_factory.mktemp("gen") / "people", n_ids=6, per_id=5)


@pytest.fixture(scope="module")
def other_people(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_identities(tmp_path_factory.mktemp("gen2") / "others", n_ids=4, per_id=4, seed=7)


def test_auto_follows_the_amount_of_data() -> None:
    ((last, ids, imgs),) = AUTO_RULE
    assert last == "last"
    assert choose_trainable(ids - 1, 10 * imgs)[0] == "last"  # few people
    assert choose_trainable(10 * ids, imgs - 1)[0] == "last"  # few photos
    assert choose_trainable(ids, imgs)[0] == "all"
    choice, reason = choose_trainable(24, 240)
    assert choice == "last" and "24 training identities, 240 photos" in reason


@pytest.mark.parametrize("arch", ["tutorial_cnn", "resnet18", "efficientnet_lite0"])
def test_stages_cover_every_backbone_weight_once(arch: str) -> None:
    base = create(arch, weights=None)
    m = EmbeddingModel(base, num_classes=2)
    stages = backbone_stages(m.net)
    names = [n for s in stages for n in s]
    assert sorted(names) == sorted(n for n, _ in m.net.named_parameters())
    assert len(names) == len(set(names)) and len(stages) >= 3
    last = plan_trainable(m.net, "last", identities=10, images=100)
    assert 1 <= last.trained_stages < len(stages)
    assert last.trained_names == set(stages[-last.trained_stages :][0]).union(
        *stages[-last.trained_stages :]
    )
    assert plan_trainable(m.net, "neck", identities=10, images=100).trained_names == set()
    assert plan_trainable(m.net, "all", identities=10, images=100).trained_names == set(names)
    scratch = plan_trainable(m.net, "auto", identities=10, images=100, pretrained=False)
    assert scratch.choice == "all" and "random" in scratch.reason


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("trainable", ["neck", "last", "all"])
def test_what_trains_is_what_the_plan_says(people, toy_run, tmp_path, trainable) -> None:
    """Frozen stages keep every weight and BN statistic; trained ones move."""
    start = load_model(toy_run)
    before = _weights(start)
    res = train_embedding(
        cfg(people, tmp_path / "run", weights=str(toy_run), dim=0, trainable=trainable),
        progress=False,
    )
    after = load_model(res.run_dir)
    assert isinstance(after, EmbeddingModel)
    plan = plan_trainable(after.net, trainable, identities=4, images=20)
    trained_modules = {n.rsplit(".", 1)[0] for n in plan.trained_names}
    moved = {
        k
        for k, v in _weights(after.net).items()
        if k in before and not torch.equal(v, before[k]) and not k.endswith("num_batches_tracked")
    }
    assert {k.rsplit(".", 1)[0] for k in moved} <= trained_modules
    if trainable != "neck":
        assert moved
    assert res.trainable["choice"] == trainable
    assert read_run(res.run_dir).metrics["trainable"]["choice"] == trainable


def test_run_reports_starting_weights_and_says_when_training_lost(
    people, toy_run, tmp_path, capsys, monkeypatch
):
    res = train_embedding(cfg(people, tmp_path / "run", weights=str(toy_run)), progress=False)
    assert set(res.start) >= {"val_mAP", "val_rank1"}
    assert (
        res.trainable["choice"] == "last"
        and "auto: 4 training identities" in res.trainable["reason"]
    )
    assert len(res.verdict) == 1 and "starting weights" in res.verdict[0]
    assert read_run(res.run_dir).metrics["start"] == res.start

    # starting weights that cannot be beaten: the run says so, plainly
    import vitrina.training.embedding as te

    monkeypatch.setattr(te, "_start_figures", lambda *a, **k: {"val_mAP": 1.0, "val_rank1": 1.0})
    code, out, err = run_cli(
        capsys,
        "train-embedding",
        str(people),
        "--arch",
        "tutorial_cnn",
        "--weights",
        str(toy_run),
        "--p",
        "3",
        "--k",
        "3",
        "--epochs",
        "1",
        "--val-fraction",
        "0.34",
        "--workers",
        "0",
        "--device",
        "cpu",
        "--out",
        str(tmp_path / "lost"),
    )
    assert code == 0, err
    assert "did NOT beat the starting weights" in out and "trainable: last" in out
    assert "loss: softmax+triplet-batch-hard (auto: identities that are not face chips" in out
    assert read_run(tmp_path / "lost").metrics["beat_start"] is False


def test_val_dir_picks_the_epoch_and_the_recipe(people, other_people, toy_run, tmp_path) -> None:
    res = train_embedding(
        cfg(people, tmp_path / "run", weights=str(toy_run), val_dir=str(other_people)),
        progress=False,
    )
    assert set(res.recipes) == {"neck", "last", "all"}
    best = max(res.recipes, key=lambda r: res.recipes[r]["valdir_mAP"])
    assert res.metrics["recipe"] == best and best in res.trainable["reason"]
    for r in res.recipes:
        history = [
            json.loads(line)
            for line in (tmp_path / "run" / "recipes" / r / "metrics.jsonl")
            .read_text()
            .splitlines()
        ]
        assert all("valdir_mAP" in h for h in history)
        chosen = max(history, key=lambda h: (h["valdir_mAP"], h["valdir_rank1"]))
        assert res.recipes[r]["best_epoch"] == chosen["epoch"]  # the val-dir picked the epoch
    assert "valdir_mAP" in res.start and len(res.verdict) == 2
    assert isinstance(load_model(res.run_dir), EmbeddingModel)
    assert read_run(res.run_dir).data["val_dir_images"] == 16
    # run again with --resume: every recipe finished, nothing trains again
    again = train_embedding(
        cfg(people, tmp_path / "run", weights=str(toy_run), val_dir=str(other_people)),
        resume=True,
        progress=False,
    )
    assert again.metrics["recipe"] == best


def test_bad_trainable_and_val_dir_are_one_line(people, tmp_path, capsys) -> None:
    with pytest.raises(Exception, match="--trainable 'some'"):
        cfg(people, tmp_path / "a", trainable="some").resolved()
    with pytest.raises(Exception, match="contradicts --trainable all"):
        cfg(people, tmp_path / "a", freeze_backbone=True, trainable="all").resolved()
    assert cfg(people, tmp_path / "a", freeze_backbone=True).resolved().trainable == "neck"
    lonely = tmp_path / "lonely"
    for name in ("a", "b"):
        (lonely / name).mkdir(parents=True)
        (lonely / name / "0.png").write_bytes((people / "person00" / "0.png").read_bytes())
    code, _, err = run_cli(
        capsys,
        "train-embedding",
        str(people),
        "--val-dir",
        str(lonely),
        "--out",
        str(tmp_path / "b"),
    )
    assert code == 1 and "--val-dir" in err and "2 identities with 2 or more" in err
    assert len(err.strip().splitlines()) == 1


def test_runs_from_before_keep_working(people, tmp_path) -> None:
    """A vitrina.json without the new keys loads; its config resumes what it trained."""
    res = train_embedding(cfg(people, tmp_path / "run", trainable="all"), progress=False)
    doc = json.loads((res.run_dir / "vitrina.json").read_text())
    for key in ("trainable", "layer_decay", "val_dir", "local_stripes", "local_dim", "mutual"):
        doc["config"].pop(key)
    doc["config"]["embedding"] = {"dim": 32, "bnneck": True}
    (res.run_dir / "vitrina.json").write_text(json.dumps(doc))
    m = load_model(res.run_dir)
    assert isinstance(m, EmbeddingModel) and m.local is None
    old = EmbeddingConfig.from_dict(doc["config"])
    assert old.trainable == "all" and old.local_stripes == 0 and old.val_dir is None
    frozen = EmbeddingConfig.from_dict({**doc["config"], "freeze_backbone": True})
    assert frozen.trainable == "neck"
    # and it resumes with the same parameter groups
    again = train_embedding(
        EmbeddingConfig(data_dir=str(people), out=str(res.run_dir), epochs=3),
        resume=True,
        progress=False,
    )
    assert again.metrics["epochs_run"] == 3


def test_layer_decay_slows_each_earlier_stage(people, tmp_path) -> None:
    from vitrina.losses import build_criterion
    from vitrina.training.embedding import _param_groups

    m = EmbeddingModel(create("resnet18", weights=None), num_classes=3)
    crit = build_criterion("softmax", num_classes=3, embedding_dim=m.num_features)
    plan = plan_trainable(m.net, "all", identities=3, images=30)
    c = cfg(people, tmp_path / "x", layer_decay=0.5, lr=1e-3, head_lr_mult=10.0)
    groups = _param_groups(m, crit, plan, c)
    n = len(plan.stages)
    assert [g["lr"] for g in groups] == [1e-3 * 0.5 ** (n - 1 - i) for i in range(n)] + [1e-2]
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))  # every parameter in one group
    assert set(ids) >= {id(p) for p in m.net.parameters()}
    plain = _param_groups(m, crit, plan, cfg(people, tmp_path / "x", lr=1e-3, head_lr_mult=10.0))
    assert [g["lr"] for g in plain] == [1e-3, 1e-3 * 10.0]  # one backbone group, as before
    with pytest.raises(Exception, match="--layer-decay"):
        cfg(people, tmp_path / "x", layer_decay=0).resolved()


def test_a_metric_loss_alone_never_freezes_everything(people, toy_run, tmp_path, capsys) -> None:
    """Triplet or contrastive alone, no --dim: the neck has no weight the loss trains. `auto`
    chose "neck" for small sets and training died in backward() ("element 0 of tensors does
    not require grad"); now auto trains the last stages, and an explicit neck is one line."""
    res = train_embedding(
        cfg(people, tmp_path / "run", weights=str(toy_run), dim=0, loss="triplet-batch-hard"),
        progress=False,
    )
    plan = read_run(res.run_dir).metrics["trainable"]
    assert plan["choice"] == "last" and plan["trained_stages"] >= 1
    m = create("tutorial_cnn", weights=None)
    net = EmbeddingModel(m, num_classes=2).net
    assert plan_trainable(net, "neck", identities=10, images=100).choice == "neck"
    code, _, err = run_cli(
        capsys,
        "train-embedding",
        str(people),
        "--weights",
        str(toy_run),
        "--loss",
        "triplet-batch-hard",
        "--trainable",
        "neck",
        "--out",
        str(tmp_path / "b"),
    )
    assert code == 1 and "nothing would train" in err and len(err.strip().splitlines()) == 1


def test_auto_loss_is_arcface_for_face_chips_and_the_reid_recipe_otherwise(
    people, tmp_path
) -> None:
    """``--loss auto`` (the default): a folder written by ``vitrina faces chips`` (its
    manifest) trains with ArcFace, any other with softmax + batch-hard triplet; the run
    records which and why; a loss given by name is kept."""
    import shutil

    from vitrina.data.identities import FACE_CHIPS_FORMAT, FACE_CHIPS_MANIFEST

    chips = tmp_path / "chips"
    shutil.copytree(people, chips)
    manifest = chips / FACE_CHIPS_MANIFEST
    manifest.write_text(json.dumps({"format": FACE_CHIPS_FORMAT, "chips": {}}))
    plain = cfg(people, tmp_path / "a", loss="auto").chosen_loss()
    assert plain[0] == "softmax+triplet-batch-hard" and "not face chips" in plain[1]
    faces = cfg(chips, tmp_path / "b", loss="auto").chosen_loss()
    assert faces[0] == "arcface" and "face chips" in faces[1]
    named = EmbeddingConfig(data_dir=str(chips), arch="tutorial_cnn", weights=None).resolved()
    assert Path(named.out or "").name == "chips-tutorial_cnn-arcface"  # named by its loss
    assert cfg(chips, tmp_path / "c", loss="triplet").chosen_loss() == ("triplet", "--loss triplet")
    assert EmbeddingConfig(data_dir=str(chips)).loss == "auto"  # the default
    # how long follows the loss: ArcFace (here chosen for the chips) learns slowly
    from vitrina.training.loss_choice import ARCFACE_EPOCHS, DEFAULT_EPOCHS

    assert ARCFACE_EPOCHS > DEFAULT_EPOCHS
    assert named.epochs == ARCFACE_EPOCHS
    for data, loss, epochs in (
        (people, "auto", DEFAULT_EPOCHS),
        (people, "arcface", ARCFACE_EPOCHS),
        (people, "0.5*arcface+triplet-batch-hard", ARCFACE_EPOCHS),
        (chips, "softmax+triplet-batch-hard", DEFAULT_EPOCHS),
    ):
        c = cfg(data, tmp_path / "e", loss=loss, epochs=None).resolved()
        assert c.epochs == epochs, (data.name, loss)
    assert cfg(chips, tmp_path / "e", loss="auto", epochs=3).resolved().epochs == 3  # given: kept
    # a manifest that is not one (another tool's chips.json, or a damaged one) is not trusted
    for text in ('{"format": "something-else"}', "{not json", "[]"):
        manifest.write_text(text)
        assert cfg(chips, tmp_path / "d", loss="auto").chosen_loss()[0].startswith("softmax")
    manifest.write_text(json.dumps({"format": FACE_CHIPS_FORMAT, "chips": {}}))
    res = train_embedding(cfg(chips, tmp_path / "run", loss="auto", epochs=1), progress=False)
    recorded = read_run(res.run_dir)
    assert recorded.config["loss"] == "auto"  # a resumed run chooses again
    assert recorded.metrics["loss"]["choice"] == "arcface"
    assert "face chips" in recorded.metrics["loss"]["reason"]
