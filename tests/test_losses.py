"""vitrina.losses: every loss and miner by name, the spec grammar, and the two losses we wrote
(quadruplet, center) against plain Python loops."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from vitrina.errors import UnknownNameError, VitrinaError
from vitrina.losses import (
    LOSS_HELP,
    LOSSES,
    CenterLoss,
    QuadrupletLoss,
    build_criterion,
    loss_names,
    miner_names,
    parse_loss_spec,
)

N_IDS, K, DIM = 4, 4, 8


def pk_batch(seed: int = 0, n_ids: int = N_IDS, k: int = K, dim: int = DIM):
    """A P×K batch: random embeddings, identities 0..P-1 each K times."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_ids * k, dim, generator=g)
    return x, torch.arange(n_ids).repeat_interleave(k)


def clusters(separated: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Four tight clusters 10 apart; labels follow the clusters, or are shuffled across them."""
    g = torch.Generator().manual_seed(1)
    centers = 10 * torch.eye(N_IDS, DIM)
    x = centers.repeat_interleave(K, dim=0) + 0.01 * torch.randn(N_IDS * K, DIM, generator=g)
    labels = torch.arange(N_IDS).repeat_interleave(K)
    if not separated:  # each identity now has one image in each cluster
        labels = torch.arange(N_IDS).repeat(K)
    return x, labels


def assert_close(got: torch.Tensor, expected: torch.Tensor) -> None:
    # torch.testing.assert_close would import torch.distributed (seconds) on first use
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-6), (got, expected)


def crit_for(spec: str, **kw):
    return build_criterion(spec, num_classes=N_IDS, embedding_dim=DIM, **kw)


# ------------------------------------------------------------------ contract over the registry
@pytest.mark.parametrize("name", loss_names())
def test_every_loss_gives_a_finite_scalar_with_gradient_on_the_right_input(name):
    metric, labels = pk_batch()
    metric.requires_grad_(True)
    klass = pk_batch(seed=1)[0].requires_grad_(True)
    crit = crit_for(name)
    total, parts = crit(metric, klass, labels)
    assert total.ndim == 0 and torch.isfinite(total)
    assert list(parts) == [name]
    total.backward()
    used, unused = (klass, metric) if LOSSES.get(name).input == "class" else (metric, klass)
    assert used.grad is not None and torch.isfinite(used.grad).all() and used.grad.abs().sum() > 0
    assert unused.grad is None
    assert LOSS_HELP.get(name)
    assert "\n" not in crit.describe()


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
@pytest.mark.parametrize("miner", miner_names())
def test_every_miner_works_with_triplet_and_contrastive(miner, distance):
    x, labels = pk_batch(seed=2)
    x.requires_grad_(True)
    crit = crit_for("triplet+contrastive", miner=miner, distance=distance)
    total, parts = crit(x, x, labels)
    assert torch.isfinite(total) and set(parts) == {"triplet", "contrastive"}
    total.backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("spec", ["triplet-batch-hard", "triplet-batch-all", "quadruplet"])
def test_metric_losses_are_zero_for_separated_clusters_and_positive_when_labels_mix(spec):
    x, labels = clusters(separated=True)
    total_sep, _ = crit_for(spec)(x, x, labels)
    x, mixed = clusters(separated=False)
    total_mixed, _ = crit_for(spec)(x, x, mixed)
    assert total_sep.item() == 0
    assert total_mixed.item() > 1


def test_batch_hard_triplet_matches_a_loop_on_raw_euclidean_distances():
    x, labels = pk_batch(seed=3)
    # large norms (a normalised distance would differ); some anchors satisfy the margin
    x = 3 * x + 10 * F.one_hot(labels, DIM).float()
    ref = []
    for a in range(len(x)):
        ap = max(torch.dist(x[a], x[p]) for p in range(len(x)) if p != a and labels[p] == labels[a])
        an = min(torch.dist(x[a], x[n]) for n in range(len(x)) if labels[n] != labels[a])
        ref.append(torch.relu(ap - an + 0.3))
    assert 0 < sum(r.item() > 0 for r in ref) < len(ref)
    expected = torch.stack(ref).mean()  # mean over all anchors, zeros included
    shortcut, _ = crit_for("triplet-batch-hard")(x, x, labels)
    explicit, _ = crit_for("triplet", miner="batch-hard")(x, x, labels)
    assert_close(shortcut, expected)
    assert_close(explicit, expected)


# ------------------------------------------------------------------ quadruplet vs a plain loop
def quadruplet_loop(x, labels, a1, a2, cosine=False):
    """Batch-hard quadruplet loss, one anchor at a time with scalar torch ops."""

    def d(i, j):  # larger = farther
        if cosine:
            return -F.cosine_similarity(x[i], x[j], dim=0)
        return torch.dist(x[i], x[j])

    idx = range(len(x))
    losses = []
    for a in idx:
        positives = [p for p in idx if p != a and labels[p] == labels[a]]
        negatives = [n for n in idx if labels[n] != labels[a]]
        pairs = [
            (i, j) for i, j in itertools.product(negatives, negatives) if labels[i] != labels[j]
        ]
        if not positives or not pairs:
            continue
        ap = max(d(a, p) for p in positives)
        an = min(d(a, n) for n in negatives)
        nn_ = min(d(i, j) for i, j in pairs)
        losses.append(torch.relu(ap - an + a1) + torch.relu(ap - nn_ + a2))
    return torch.stack(losses).mean()


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_quadruplet_value_and_gradient_match_a_loop(distance):
    x, labels = pk_batch(seed=4, n_ids=5, k=3)
    x = x + 0.8 * F.one_hot(labels, DIM).float()  # some quadruplets satisfied, some not
    labels = torch.cat([labels, torch.tensor([5])])  # an identity with one image: no positive
    x = torch.cat([x, torch.randn(1, DIM)])
    crit = crit_for("quadruplet", distance=distance, margin=0.4)
    assert "margins 0.4/0.2" in crit.describe()

    x1 = x.clone().requires_grad_(True)
    got, _ = crit(x1, x1, labels)
    got.backward()
    x2 = x.clone().requires_grad_(True)
    expected = quadruplet_loop(x2, labels, 0.4, 0.2, cosine=distance == "cosine")
    expected.backward()
    assert expected.item() > 0
    assert_close(got, expected)
    assert_close(x1.grad, x2.grad)


def test_quadruplet_with_two_identities_has_no_quadruplet_and_gives_zero():
    x, labels = pk_batch(seed=5, n_ids=2)
    x.requires_grad_(True)
    loss = QuadrupletLoss(margin=0.3)(x, labels)
    loss.backward()
    assert loss.item() == 0 and torch.equal(x.grad, torch.zeros_like(x))


def test_quadruplet_refuses_a_miner():
    x, labels = pk_batch()
    triplets = (torch.tensor([0]), torch.tensor([1]), torch.tensor([4]))
    with pytest.raises(ValueError, match="no miner"):
        QuadrupletLoss()(x, labels, triplets)


# ------------------------------------------------------------------ center loss vs a plain loop
def test_center_loss_value_and_gradients_match_a_loop():
    x, labels = pk_batch(seed=6)
    crit = crit_for("center")
    centers = crit.center_parameters()
    assert len(centers) == 1 and centers[0].shape == (N_IDS, DIM)
    (c,) = centers

    x1 = x.clone().requires_grad_(True)
    got, _ = crit(x1, x1, labels)
    got.backward()
    x2 = x.clone().requires_grad_(True)
    c2 = c.detach().clone().requires_grad_(True)
    expected = sum(0.5 * ((x2[i] - c2[labels[i]]) ** 2).sum() for i in range(len(x))) / len(x)
    expected.backward()
    assert_close(got, expected)
    assert_close(x1.grad, x2.grad)
    assert_close(c.grad, c2.grad)


def test_center_loss_is_a_pml_loss_with_its_own_parameters():
    from pytorch_metric_learning.losses import BaseMetricLossFunction

    loss = CenterLoss(num_classes=3, embedding_size=2)
    assert isinstance(loss, BaseMetricLossFunction)
    assert loss.center_parameters() == [loss.centers]
    with torch.no_grad():
        loss.centers.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]]))
    x = torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    assert loss(x, torch.tensor([0, 1, 2])).item() == pytest.approx((0 + 0.5 + 2) / 3)


# ------------------------------------------------------------------ spec grammar
def test_spec_weights_and_total_is_the_weighted_sum_of_parts():
    assert [(t.name, t.weight) for t in parse_loss_spec(" triplet + 0.5 * center")] == [
        ("triplet", 1.0),
        ("center", 0.5),
    ]
    assert [t.name for t in parse_loss_spec("Softmax+Triplet_Batch_Hard")] == [
        "softmax",
        "triplet-batch-hard",
    ]
    x, labels = pk_batch(seed=7)
    crit = crit_for("2*softmax+triplet-batch-hard+0.5*center")
    total, parts = crit(x, x, labels)
    assert list(parts) == ["softmax", "triplet-batch-hard", "center"]
    expected = 2 * parts["softmax"] + parts["triplet-batch-hard"] + 0.5 * parts["center"]
    assert_close(total, expected)
    assert crit.describe() == (
        "2 × softmax (label smoothing 0.1) + triplet (batch-hard miner, margin 0.3, euclidean)"
        " + 0.5 × center (squared euclidean)"
    )


def test_unknown_loss_suggests_the_closest_name_and_shows_the_spec():
    with pytest.raises(UnknownNameError) as e:
        parse_loss_spec("tripplet+center")
    msg = str(e.value)
    assert "tripplet+center" in msg and "did you mean: triplet" in msg and "\n" not in msg


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("", "empty term"),
        ("triplet++center", "empty term"),
        ("0*center", "must be > 0"),
        ("-1*center", "must be > 0"),
        ("abc*center", "bad weight"),
        ("nan*center", "must be > 0"),
        ("center*0.5", "expected W*NAME"),
        ("triplet+0.5*triplet", "twice"),
        ("triplet center", "bad term"),
    ],
)
def test_bad_specs_raise_one_line_errors_showing_the_spec(spec, needle):
    with pytest.raises(VitrinaError) as e:
        build_criterion(spec, num_classes=N_IDS, embedding_dim=DIM)
    msg = str(e.value)
    assert needle in msg and repr(spec) in msg and "\n" not in msg


# ------------------------------------------------------------------ miners, distance, margin
def test_explicit_miner_with_a_shortcut_conflicts():
    with pytest.raises(VitrinaError, match="conflicts with 'triplet-batch-hard'"):
        crit_for("triplet-batch-hard+center", miner="semi-hard")


def test_miner_without_a_loss_it_applies_to_is_an_error():
    with pytest.raises(VitrinaError, match="no effect"):
        crit_for("softmax+center", miner="batch-hard")


def test_unknown_miner_and_distance_suggest_names():
    with pytest.raises(UnknownNameError, match="did you mean: batch-hard"):
        crit_for("triplet", miner="batch_hard")
    with pytest.raises(UnknownNameError, match="did you mean: cosine"):
        crit_for("triplet", distance="cosin")


def test_margin_defaults_per_distance_and_override():
    assert "margin 0.3, euclidean" in crit_for("triplet").describe()
    assert "margin 0.2, cosine" in crit_for("triplet", distance="cosine").describe()
    assert "margin 0.5," in crit_for("triplet-semi-hard", margin=0.5).describe()
    assert "neg margin 2," in crit_for("contrastive", margin=2).describe()
    with pytest.raises(VitrinaError, match="margin"):
        crit_for("triplet", margin=-0.1)


def test_semi_hard_miner_uses_the_loss_margin():
    x, labels = pk_batch(seed=8)
    t_small = crit_for("triplet-semi-hard", margin=0.01).terms[0].miner(x, labels)
    t_large = crit_for("triplet-semi-hard", margin=5.0).terms[0].miner(x, labels)
    assert t_small[0].numel() < t_large[0].numel()


def test_criterion_parameters_include_classifier_arcface_weights_and_centers():
    x, labels = pk_batch(seed=9)
    crit = crit_for("softmax+arcface+cosface+center")
    shapes = sorted(tuple(p.shape) for p in crit.parameters())
    assert shapes == sorted([(N_IDS, DIM), (DIM, N_IDS), (DIM, N_IDS), (N_IDS, DIM)])
    total, _ = crit(x, x, labels)
    total.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in crit.parameters())
    assert [tuple(p.shape) for p in crit.center_parameters()] == [(N_IDS, DIM)]
    assert crit_for("triplet").center_parameters() == []
    assert list(crit_for("triplet").parameters()) == []
