"""Verification metrics (ROC, AUC, EER, TAR@FAR) against counting loops and scikit-learn."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score, roc_curve

from vitrina.errors import DataError
from vitrina.evaluate import VerificationReport, pair_distances, verification_report
from vitrina.evaluate import verification as verification_module


def naive_roc(d, same):
    """For every distinct distance t: accept d <= t, count genuine and impostor accepts."""
    gen = [x for x, s in zip(d, same, strict=True) if s]
    imp = [x for x, s in zip(d, same, strict=True) if not s]
    rows = []
    for t in sorted(set(d)):
        rows.append((t, sum(x <= t for x in imp) / len(imp), sum(x <= t for x in gen) / len(gen)))
    return rows


def naive_eer(rows):
    """Walk the ROC from (FAR 0, FRR 1); interpolate where FRR - FAR first reaches <= 0."""
    prev_far, prev_gap = 0.0, 1.0
    for t, far, tar in rows:
        gap = (1 - tar) - far
        if gap <= 0:
            a = prev_gap / (prev_gap - gap)
            return prev_far + a * (far - prev_far), t
        prev_far, prev_gap = far, gap
    raise AssertionError("the ROC always ends at FAR 1, FRR 0")


def naive_threshold_at_far(rows, target):
    ok = [(t, tar) for t, far, tar in rows if far <= target]
    return ok[-1] if ok else (None, 0.0)


def random_pairs(seed, n_gen=60, n_imp=400, ties=False):
    rng = np.random.default_rng(seed)
    d = np.r_[rng.normal(0.4, 0.15, n_gen), rng.normal(0.8, 0.15, n_imp)]
    if ties:
        d = np.round(d, 1)
    same = np.r_[np.ones(n_gen, bool), np.zeros(n_imp, bool)]
    perm = rng.permutation(len(d))
    return d[perm], same[perm]


@pytest.mark.parametrize("seed,ties", [(0, False), (1, False), (2, True), (3, True)])
def test_report_matches_counting_loops(seed, ties):
    d, same = random_pairs(seed, ties=ties)
    fars = (1e-2, 1e-3, 0.05, 0.3)
    rep = verification_report(d, same, fars=fars)
    rows = naive_roc(d.tolist(), same.tolist())
    assert rep.thresholds.tolist() == [r[0] for r in rows]
    np.testing.assert_allclose(rep.far, [r[1] for r in rows])
    np.testing.assert_allclose(rep.tar, [r[2] for r in rows])
    eer, eer_t = naive_eer(rows)
    assert rep.eer == pytest.approx(eer) and rep.eer_threshold == eer_t
    for f in fars:
        t, tar = naive_threshold_at_far(rows, f)
        p = rep.operating_point(f)
        assert p.tar == pytest.approx(tar)
        if t is None:
            assert p.threshold < d.min()
        else:
            assert p.threshold == t and p.far <= f
        assert rep.tar_at_far[f] == p.tar and rep.threshold_at_far(f) == p.threshold
    assert rep.n_genuine == 60 and rep.n_impostor == 400


@pytest.mark.parametrize("seed,ties", [(4, False), (5, True)])
def test_curve_and_auc_agree_with_sklearn(seed, ties):
    d, same = random_pairs(seed, ties=ties)
    rep = verification_report(d, same)
    fpr, tpr, _ = roc_curve(same, -d, drop_intermediate=False)
    np.testing.assert_allclose(rep.far, fpr[1:])
    np.testing.assert_allclose(rep.tar, tpr[1:])
    assert rep.auc == pytest.approx(roc_auc_score(same, -d))


def test_hand_checked_eer_and_operating_points():
    d = np.array([0.1, 0.2, 0.3, 0.4, 0.35, 0.5, 0.6, 0.7])
    same = np.array([1, 1, 1, 1, 0, 0, 0, 0], bool)
    rep = verification_report(d, same, fars=(0.25, 0.1))
    # At 0.35: 3 of 4 genuine and 1 of 4 impostors accepted: FAR = FRR = 0.25.
    assert rep.eer == pytest.approx(0.25) and rep.eer_threshold == 0.35
    assert rep.threshold_at_far(0.25) == 0.4 and rep.tar_at_far[0.25] == 1.0
    # FAR 0.1 allows no impostor: the largest threshold below 0.35 is 0.3.
    p = rep.operating_point(0.1)
    assert (p.threshold, p.far, p.tar, p.measurable) == (0.3, 0.0, 0.75, False)
    assert rep.auc == pytest.approx(15 / 16)


def test_threshold_is_the_largest_with_far_at_most_target():
    d, same = random_pairs(6, n_imp=2000)
    rep = verification_report(d, same)
    imp = np.sort(d[~same])
    for f in (1e-3, 1e-2, 0.1):
        t = rep.threshold_at_far(f)
        assert (imp <= t).mean() <= f
        bigger = d[d > t]
        if len(bigger):  # any larger measured threshold accepts too many impostors
            assert (imp <= bigger.min()).mean() > f


def test_far_resolution_flags_targets_the_impostors_cannot_measure():
    d, same = random_pairs(7, n_imp=50)
    rep = verification_report(d, same, fars=(1e-3, 1e-2, 0.1))
    assert rep.far_resolution == pytest.approx(0.02)
    flags = {p.target_far: p.measurable for p in rep.operating_points}
    assert flags == {1e-3: False, 1e-2: False, 0.1: True}
    assert rep.thresholds_dict(1e-3)["measurable"] is False


def test_impostor_nearest_of_all_gives_a_threshold_that_accepts_nothing():
    d = np.array([0.05, 0.2, 0.3, 0.6])
    same = np.array([0, 1, 1, 0], bool)
    p = verification_report(d, same).operating_point(0.01)
    assert p.threshold < 0.05 and p.tar == 0.0 and p.far == 0.0


def test_to_dict_is_compact_json_and_round_trips():
    d, same = random_pairs(8, n_gen=500, n_imp=5000)
    rep = verification_report(d, same, fars=(1e-3, 1e-2, 0.2), metric="cosine")
    data = json.loads(json.dumps(rep.to_dict()))
    assert len(data["curve"]["far"]) <= 200 < len(rep.far)
    back = VerificationReport.from_dict(data)
    assert (back.auc, back.eer, back.eer_threshold) == (rep.auc, rep.eer, rep.eer_threshold)
    assert back.operating_points == rep.operating_points
    assert back.n_impostor == 5000 and back.metric == "cosine"
    for f in (1e-3, 1e-2, 0.2):  # listed operating points stay exact
        assert back.threshold_at_far(f) == rep.threshold_at_far(f)
    for f in (3e-3, 0.05, 0.5):  # others stay conservative: never a larger threshold
        assert back.threshold_at_far(f) <= rep.threshold_at_far(f)
    assert np.all(np.diff(back.thresholds) > 0) and np.all(np.diff(back.far) >= 0)


def test_thresholds_dict_for_a_gallery():
    d, same = random_pairs(9)
    rep = verification_report(d, same, metric="cosine")
    th = json.loads(json.dumps(rep.thresholds_dict(far=1e-2)))
    assert th["metric"] == "cosine" and th["far"] == 1e-2
    assert th["threshold"] == rep.threshold_at_far(1e-2) and th["tar"] == rep.tar_at_far[1e-2]
    assert th["far_measured"] <= 1e-2 and th["eer"] == rep.eer
    assert th["n_genuine"] == 60 and th["n_impostor"] == 400


def test_report_rejects_one_sided_or_bad_input():
    with pytest.raises(DataError, match="genuine and impostor"):
        verification_report(np.array([0.1, 0.2]), np.array([True, True]))
    with pytest.raises(ValueError, match="NaN"):
        verification_report(np.array([0.1, np.nan]), np.array([True, False]))
    with pytest.raises(ValueError, match="same length"):
        verification_report(np.array([0.1, 0.2]), np.array([True]))


# ---------------------------------------------------------------- pairs from embeddings


def embeddings(seed=0, n=30):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 5, n)
    return rng.normal(size=(n, 4)) + 2 * np.eye(5, 4)[labels], labels


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_pair_distances_all_pairs_match_loops(metric):
    x, y = embeddings()
    d, same = pair_distances(x, y, metric)
    want_gen, want_imp = [], []
    for i, j in itertools.combinations(range(len(x)), 2):
        a, b = x[i], x[j]
        if metric == "cosine":
            v = 1 - a @ b / np.linalg.norm(a) / np.linalg.norm(b)
        else:
            v = np.linalg.norm(a - b)
        (want_gen if y[i] == y[j] else want_imp).append(v)
    np.testing.assert_allclose(d, want_gen + want_imp, atol=1e-12)
    assert same.tolist() == [True] * len(want_gen) + [False] * len(want_imp)


def test_pair_distances_sampled_impostors(monkeypatch):
    x, y = embeddings(1, n=60)
    d_all, s_all = pair_distances(x, y, "euclidean")
    n_gen = int(s_all.sum())
    for threshold in (verification_module.MAX_ALL_PAIRS, 10):  # enumerate, then rejection
        monkeypatch.setattr(verification_module, "MAX_ALL_PAIRS", threshold)
        for k in (100, 900):
            d, same = pair_distances(x, y, "euclidean", max_pairs=k, seed=3)
            assert same.sum() == n_gen and (~same).sum() == k
            np.testing.assert_allclose(d[same], d_all[s_all])
            # Every sampled impostor is a real, distinct impostor pair.
            imp = d[~same]
            assert len(np.unique(imp)) == k
            assert np.abs(imp[:, None] - d_all[~s_all][None, :]).min(1).max() < 1e-9
            again, _ = pair_distances(x, y, "euclidean", max_pairs=k, seed=3)
            other, _ = pair_distances(x, y, "euclidean", max_pairs=k, seed=4)
            assert np.array_equal(d, again) and not np.array_equal(d, other)


def test_pair_distances_refuses_too_many_pairs(monkeypatch):
    monkeypatch.setattr(verification_module, "MAX_ALL_PAIRS", 100)
    x, y = embeddings(2)
    with pytest.raises(DataError, match="max_pairs"):
        pair_distances(x, y)
    assert len(pair_distances(x, y, max_pairs=50)[0]) > 50  # genuine ones plus 50


def test_plot_roc_writes_a_png(tmp_path):
    from vitrina.report.plots import plot_roc

    d, same = random_pairs(10)
    rep = verification_report(d, same)
    out = plot_roc({"model": rep, "baseline": (rep.far, rep.tar**2)}, tmp_path / "r.png", "ROC")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
