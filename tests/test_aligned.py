"""AlignedReID: the shortest-path local distance (against a brute force over every path), the
local loss's mining, the local branch of the embedding model, the engine task that computes
global and local features in one pass, and train-embedding / evaluate-reid with stripes."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import run_cli
from vitrina.evaluate.aligned import combined_distances, local_distances, shortest_path
from vitrina.losses.aligned import (
    AlignedLocalLoss,
    local_distance_matrix,
    mutual_metric_loss,
    mutual_probability_loss,
    stripe_costs,
)
from vitrina.losses.aligned import shortest_path as torch_shortest_path


def brute_force_path(cost: np.ndarray) -> float:
    """Cheapest path from (0, 0) to (S-1, T-1) by down/right steps: every path enumerated."""
    s, t = cost.shape
    best = np.inf
    for downs in itertools.combinations(range(s + t - 2), s - 1):
        i = j = 0
        total = cost[0, 0]
        for step in range(s + t - 2):
            if step in downs:
                i += 1
            else:
                j += 1
            total += cost[i, j]
        best = min(best, total)
    return float(best)


def unit(rng: np.random.Generator, *shape: int) -> np.ndarray:
    x = rng.normal(size=shape).astype(np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.mark.parametrize("seed", range(6))
def test_shortest_path_equals_the_brute_force_over_every_path(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for s, t in [(1, 1), (1, 4), (4, 1), (2, 3), (3, 3), (4, 5), (5, 5)]:
        cost = rng.random((3, s, t))
        want = [brute_force_path(c) for c in cost]
        np.testing.assert_allclose(shortest_path(cost), want, rtol=1e-12)
        got = torch_shortest_path(torch.from_numpy(cost))
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-12)


def test_local_distances_numpy_equal_torch_and_the_definition() -> None:
    rng = np.random.default_rng(0)
    q, g = unit(rng, 5, 4, 8), unit(rng, 7, 4, 8)
    got = local_distances(q, g, block=2)  # several blocks
    want = local_distance_matrix(torch.from_numpy(q), torch.from_numpy(g)).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)
    # by the definition: tanh(||a_i - b_j|| / 2) cells, shortest path, divided by S
    for a in range(5):
        for b in range(7):
            cells = np.tanh(np.linalg.norm(q[a][:, None] - g[b][None], axis=-1) / 2)
            assert got[a, b] == pytest.approx(brute_force_path(cells) / 4, abs=1e-5)
    # down/right steps only: even an image and itself cross S - 1 off-diagonal cells
    assert (local_distances(q, q).diagonal() > 0).all()


def test_a_shifted_crop_matches_its_original_better_aligned_than_stripe_by_stripe() -> None:
    """Stripes that change smoothly down the body, and the same body 2 stripes lower: the
    shortest path pairs each stripe with its counterpart, stripe-by-stripe does not."""
    rng = np.random.default_rng(1)
    u, v = unit(rng, 2, 16)
    v = v - (v @ u) * u
    v /= np.linalg.norm(v)

    def body(start: float) -> np.ndarray:  # 8 stripes, 0.3 rad apart on a great circle
        theta = start + 0.3 * np.arange(8)
        return (np.cos(theta)[:, None] * u + np.sin(theta)[:, None] * v)[None].astype(np.float32)

    a, shifted = body(0.0), body(-0.6)
    straight = np.tanh(np.linalg.norm(a - shifted, axis=-1) / 2).mean()
    aligned = local_distances(a, shifted)[0, 0]
    assert aligned < 0.75 * straight
    other = unit(rng, 1, 8, 16)
    assert aligned < local_distances(a, other)[0, 0]


def test_local_distance_has_gradients() -> None:
    a = torch.nn.functional.normalize(torch.randn(4, 3, 5), dim=-1).requires_grad_()
    d = local_distance_matrix(a)
    d.sum().backward()
    assert a.grad is not None and torch.isfinite(a.grad).all() and a.grad.abs().sum() > 0
    assert stripe_costs(a, a).shape == (4, 4, 3, 3)


def test_combined_distance_checks_its_inputs() -> None:
    g, loc = np.ones((2, 3)), np.full((2, 3), 0.5)
    np.testing.assert_allclose(combined_distances(g, loc, 2.0), 2.0)
    with pytest.raises(ValueError, match="shape"):
        combined_distances(g, loc[:, :2])
    with pytest.raises(ValueError, match="weight"):
        combined_distances(g, loc, -1)
    with pytest.raises(ValueError, match="stripes"):
        local_distances(np.zeros((2, 3)), np.zeros((2, 3)))


def test_local_loss_uses_the_triplets_the_global_distance_mines() -> None:
    torch.manual_seed(0)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    glob = torch.randn(6, 4)
    stripes = torch.nn.functional.normalize(torch.randn(6, 3, 5), dim=-1)
    loss = AlignedLocalLoss(margin=0.3)(glob, stripes, labels)
    gd = torch.cdist(glob, glob)
    ld = local_distance_matrix(stripes)
    want = []
    for a in range(6):
        pos = [j for j in range(6) if labels[j] == labels[a] and j != a]
        neg = [j for j in range(6) if labels[j] != labels[a]]
        p = max(pos, key=lambda j: gd[a, j])
        n = min(neg, key=lambda j: gd[a, j])
        want.append(max(0.0, float(ld[a, p] - ld[a, n]) + 0.3))
    assert float(loss) == pytest.approx(np.mean(want), abs=1e-6)
    # no anchor with a positive: nothing to learn, and no NaN
    single = AlignedLocalLoss()(glob[:3], stripes[:3], torch.tensor([0, 1, 2]))
    assert float(single) == 0.0


def test_mutual_losses_pull_towards_the_detached_peer() -> None:
    a = torch.randn(4, 5, requires_grad=True)
    b = torch.randn(4, 5)
    kl = mutual_probability_loss(a, b)
    assert float(kl.detach()) > 0 and float(mutual_probability_loss(b, b)) == pytest.approx(
        0, abs=1e-6
    )
    m = mutual_metric_loss(a, b)
    (kl + m).backward()
    assert a.grad is not None
    assert float(mutual_metric_loss(b, b)) == 0.0


# ------------------------------------------------------------------ the model


def stripe_model(stripes: int = 4):
    from vitrina.models import create
    from vitrina.models.embedding import EmbeddingModel

    torch.manual_seed(0)
    return EmbeddingModel(
        create("tutorial_cnn", weights=None), dim=16, num_classes=3, local_stripes=stripes
    ).eval()


def test_local_branch_gives_unit_stripes_and_one_aligned_tensor() -> None:
    m = stripe_model(4)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        stripes = m.local_features(x)
        both = m.aligned_features(x)
        _, neck, _ = m.train_features(x)
    assert stripes.shape == (3, 4, 128)
    np.testing.assert_allclose(stripes.norm(dim=-1).numpy(), 1, atol=1e-5)
    torch.testing.assert_close(both[:, :16], m.embed(x))
    torch.testing.assert_close(both[:, 16:].reshape(3, 4, 128), stripes)
    torch.testing.assert_close(neck, m.embed(x))
    assert m.embedding_config() == {"dim": 16, "bnneck": True, "local_stripes": 4, "local_dim": 128}
    plain = stripe_model(0)
    assert plain.local is None and plain.train_features(x)[2] is None
    assert plain.embedding_config() == {"dim": 16, "bnneck": True}


@pytest.mark.parametrize(
    "arch", ["tutorial_cnn", "resnet18", "timm/vit_tiny_patch16_224", "squeezenet1_0"]
)
def test_any_backbone_gives_its_last_feature_map(arch: str) -> None:
    """The global vector from the same pass as the map, on CNNs, timm and a ViT's tokens."""
    from vitrina.models import create

    m = create(arch, weights=None).eval()
    h, w = m.preprocess.input_size if arch.startswith("timm/vit") else (64, 64)
    if arch == "tutorial_cnn":
        h = w = 32
    x = torch.randn(2, 3, h, w)
    with torch.no_grad():
        pooled, fmap = m.embed_and_map(x)
        torch.testing.assert_close(pooled, m.embed(x))
    assert fmap.dim() == 4 and fmap.shape[0] == 2 and fmap.shape[-2:].numel() > 1


def test_engine_task_equals_the_model_on_the_same_inputs(tmp_path: Path) -> None:
    """AlignedFeatures through the engine (decode, batch, split) == a plain loop."""
    from PIL import Image

    from vitrina.data.transforms import eval_transform
    from vitrina.embed.aligned import AlignedFeatures
    from vitrina.engine import Engine
    from vitrina.io import read_image

    m = stripe_model(3)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(5):
        p = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (40, 36, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    (tmp_path / "bad.png").write_bytes(b"not a png")
    task = AlignedFeatures(16, 3, 128)
    results = list(
        Engine(m, backend="eager", batch_size=2).run(task, [*paths, tmp_path / "bad.png"])
    )
    assert [r.ok for r in results] == [True] * 5 + [False]
    tf = eval_transform(m.preprocess)
    for p, r in zip(paths, results, strict=False):
        with torch.no_grad():
            x = tf(read_image(p)).unsqueeze(0)
            g = torch.nn.functional.normalize(m.embed(x), dim=1)[0].numpy()
            s = m.local_features(x)[0].numpy()
        np.testing.assert_allclose(r.value[0], g, atol=1e-5)
        np.testing.assert_allclose(r.value[1], s, atol=1e-5)


# ------------------------------------------------------------------ training and evaluation


@pytest.fixture(scope="module")
def aligned_run(tmp_path_factory: pytest.TempPathFactory):
    from test_train_embedding import cfg, make_identities
    from vitrina.data.identities import to_market
    from vitrina.training.embedding import train_embedding

    root = tmp_path_factory.mktemp("aligned")
    people = make_identities(root / "people", n_ids=8, per_id=5)
    market = root / "market"
    to_market(people, market, train_ids=5, cameras=3, seed=0)
    res = train_embedding(
        cfg(market, root / "run", local_stripes=3, local_dim=8, epochs=2, val_fraction=0.4),
        progress=False,
    )
    return res, market


def test_training_with_stripes_reports_global_local_and_combined(aligned_run) -> None:
    from vitrina.models.embedding import EmbeddingModel
    from vitrina.runs import load_model, read_run

    res, _ = aligned_run
    m = load_model(res.run_dir)
    assert isinstance(m, EmbeddingModel) and m.local_stripes == 3 and m.local_dim == 8
    assert read_run(res.run_dir).config["embedding"]["local_stripes"] == 3
    for key in ("val_mAP", "val_mAP_local", "val_mAP_combined"):
        assert 0 <= res.metrics[key] <= 1
    assert all("val_mAP_combined" in r for r in res.history)


def test_evaluate_reid_scores_global_local_and_combined(aligned_run, capsys) -> None:
    from vitrina.data.identities import scan_identities
    from vitrina.embed.reid import evaluate_reid
    from vitrina.evaluate.reid import reid_distances, reid_report

    res, market = aligned_run
    ev = evaluate_reid(market, str(res.run_dir), backend="eager", local_weight=0.5)
    assert list(ev.reports) == ["global", "local", "combined"]
    assert ev.report is ev.parts["combined"]
    assert set(ev.ms_per_query) == {"global", "local", "combined"}
    assert ev.ms_per_query["combined"] >= ev.ms_per_query["local"]
    # the combined report is global + 0.5 x local of the same vectors, scored as usual
    from vitrina.embed import Embedder
    from vitrina.embed.aligned import embed_aligned

    ids = scan_identities(market)
    emb = embed_aligned(
        Embedder(str(res.run_dir), backend="eager"), [im.path for im in ids.query + ids.gallery]
    )
    nq = len(ids.query)
    d = reid_distances(emb.vectors[:nq], emb.vectors[nq:]) + 0.5 * local_distances(
        emb.stripes[:nq], emb.stripes[nq:]
    )
    want = reid_report(
        d,
        [im.pid for im in ids.query],
        [im.pid for im in ids.gallery],
        [im.camid for im in ids.query],
        [im.camid for im in ids.gallery],
    )
    assert ev.report.mAP == pytest.approx(want.mAP, abs=1e-6)
    # re-ranking re-ranks the combined distance
    rr = evaluate_reid(market, str(res.run_dir), backend="eager", rerank=True, k1=4, k2=2)
    assert list(rr.reports) == ["global", "local", "combined", "combined re-ranked"]
    code, out, err = run_cli(
        capsys, "evaluate-reid", str(res.run_dir), str(market), "--backend", "eager"
    )
    assert code == 0, err
    assert "combined" in out and "local" in out and "ms / query" in out
    code, out, _ = run_cli(capsys, "evaluate-reid", str(res.run_dir), str(market), "--json")
    assert set(json.loads(out)) == {"global", "local", "combined"}
    code, _, err = run_cli(
        capsys, "evaluate-reid", str(res.run_dir), str(market), "--local-weight", "-1"
    )
    assert code == 1 and "--local-weight" in err


def test_mutual_learning_trains_two_networks_and_keeps_one(tmp_path) -> None:
    from test_train_embedding import cfg, make_identities
    from vitrina.runs import load_model
    from vitrina.training.embedding import train_embedding

    people = make_identities(tmp_path / "people", n_ids=6, per_id=4)
    seen: list[dict] = []

    from vitrina.training.loop import Callback

    class Parts(Callback):
        def on_batch_end(self, state) -> None:
            seen.append(dict(task.last_parts))

    import vitrina.training.embedding as te

    original = te.EmbeddingTask.__init__
    task = None

    def spy(self, *a, **kw):  # type: ignore[no-untyped-def]
        nonlocal task
        original(self, *a, **kw)
        task = self

    te.EmbeddingTask.__init__ = spy  # type: ignore[method-assign]
    try:
        res = train_embedding(
            cfg(people, tmp_path / "run", mutual=True, local_stripes=2, local_dim=4),
            progress=False,
            extra_callbacks=[Parts()],
        )
    finally:
        te.EmbeddingTask.__init__ = original  # type: ignore[method-assign]
    assert seen and {"mutual", "local", "peer_local"} <= set(seen[-1])
    m = load_model(res.run_dir)
    assert m.local_stripes == 2  # the first network, a plain embedding run
