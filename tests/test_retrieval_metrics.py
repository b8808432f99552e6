"""Retrieval metrics against a naive pure-Python reference and hand-checked cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vitrina.evaluate.retrieval import (
    pairwise_scores,
    relevance,
    retrieval_metrics,
    retrieval_report,
)


def naive(scores, relevant, exclude, ks, higher_is_better=True):
    """One query at a time, plain Python: rank by score, ties by gallery index."""
    q_n, g_n = len(scores), len(scores[0])
    aps, prec, rec, cmc, skipped = (
        [],
        {k: [] for k in ks},
        {k: [] for k in ks},
        {k: [] for k in ks},
        0,
    )
    for q in range(q_n):
        items = [g for g in range(g_n) if not (exclude is not None and exclude[q][g])]
        sign = -1.0 if higher_is_better else 1.0
        ranked = sorted(items, key=lambda g: (sign * float(scores[q][g]), g))
        hits = [bool(relevant[q][g]) for g in ranked]
        total = sum(hits)
        if total == 0:
            skipped += 1
            continue
        found, precs = 0, []
        for i, h in enumerate(hits):
            if h:
                found += 1
                precs.append(found / (i + 1))
        aps.append(sum(precs) / total)
        for k in ks:
            top = sum(hits[:k])
            prec[k].append(top / k)
            rec[k].append(top / total)
            cmc[k].append(1.0 if top > 0 else 0.0)
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    return {
        "mAP": mean(aps),
        "precision": {k: mean(v) for k, v in prec.items()},
        "recall": {k: mean(v) for k, v in rec.items()},
        "cmc": {k: mean(v) for k, v in cmc.items()},
        "n": len(aps),
        "skipped": skipped,
    }


def check(rep, ref):
    assert rep.n_queries == ref["n"] and rep.no_relevant == ref["skipped"]
    assert rep.mAP == pytest.approx(ref["mAP"], abs=1e-12)
    for name in ("precision", "recall", "cmc"):
        got = getattr(rep, name)
        for k, v in ref[name].items():
            assert got[k] == pytest.approx(v, abs=1e-12), (name, k)


@pytest.mark.parametrize("seed", range(6))
def test_matches_naive_reference_with_ties_and_exclusions(seed: int) -> None:
    rng = np.random.default_rng(seed)
    q_n, g_n = int(rng.integers(3, 25)), int(rng.integers(4, 40))
    # Scores from a few levels: many ties, so tie-breaking is exercised.
    scores = rng.integers(0, 5, size=(q_n, g_n)).astype(float) / 4
    labels_q = rng.integers(0, 4, q_n)
    labels_g = rng.integers(0, 4, g_n)
    relevant = relevance(labels_q, labels_g)
    exclude = rng.random((q_n, g_n)) < 0.2
    relevant[0] = False  # at least one query with nothing to find
    ks = (1, 3, 5, 10, 100)
    for hib in (True, False):
        rep = retrieval_metrics(
            scores, relevant, higher_is_better=hib, ks=ks, exclude=exclude, block=4
        )
        check(rep, naive(scores, relevant, exclude, ks, hib))
    rep = retrieval_metrics(scores, relevant, ks=ks)
    check(rep, naive(scores, relevant, None, ks))
    assert rep.precision_curve[0] == pytest.approx(rep.precision[1])
    assert rep.cmc_curve[4] == pytest.approx(rep.cmc[5])
    assert len(rep.cmc_curve) == len(rep.precision_curve) == min(g_n, 50) == rep.gallery_size


def test_hand_checked_ranking() -> None:
    # Ranking: R N R N -> AP = (1/1 + 2/3) / 2
    s = np.array([[0.9, 0.8, 0.7, 0.6]])
    r = np.array([[True, False, True, False]])
    rep = retrieval_metrics(s, r, ks=(1, 2, 3, 5))
    assert rep.mAP == pytest.approx((1 + 2 / 3) / 2)
    assert rep.precision == pytest.approx({1: 1.0, 2: 0.5, 3: 2 / 3, 5: 0.4})
    assert rep.recall == pytest.approx({1: 0.5, 2: 0.5, 3: 1.0, 5: 1.0})
    assert rep.cmc == {1: 1.0, 2: 1.0, 3: 1.0, 5: 1.0}
    # Distances: the same ranking reversed.
    d = retrieval_metrics(1 - s, r, higher_is_better=False, ks=(1, 2))
    assert d.mAP == pytest.approx(rep.mAP)
    # A tie between a relevant and an irrelevant item: the lower gallery index wins.
    tie = retrieval_metrics(np.array([[0.5, 0.5]]), np.array([[False, True]]), ks=(1,))
    assert tie.mAP == pytest.approx(0.5) and tie.cmc[1] == 0.0
    tie2 = retrieval_metrics(np.array([[0.5, 0.5]]), np.array([[True, False]]), ks=(1,))
    assert tie2.mAP == 1.0 and tie2.cmc[1] == 1.0


def test_exclude_mask_removes_items() -> None:
    s = np.array([[0.9, 0.8, 0.7]])
    r = np.array([[False, True, True]])
    ex = np.array([[True, False, False]])  # the irrelevant top item is ignored
    rep = retrieval_metrics(s, r, ks=(1, 2), exclude=ex)
    assert rep.mAP == 1.0 and rep.precision[1] == 1.0 and rep.precision[2] == 1.0
    # Excluding the only relevant item leaves the query unscored.
    rep = retrieval_metrics(s, np.array([[True, False, False]]), ks=(1,), exclude=ex)
    assert rep.n_queries == 0 and rep.no_relevant == 1 and math.isnan(rep.mAP)


def test_retrieval_report_each_queries_the_rest() -> None:
    # Two tight clusters: every query's neighbours are its own class -> perfect scores.
    v = np.array([[1, 0], [0.99, 0.05], [0.98, -0.04], [0, 1], [0.03, 0.97], [-0.02, 1.01]])
    labels = ["a", "a", "a", "b", "b", "b"]
    for metric in ("cosine", "euclidean"):
        rep = retrieval_report(v, labels, metric=metric, ks=(1, 2, 5))
        assert rep.n_queries == 6 and rep.no_relevant == 0 and rep.gallery_size == 5
        assert rep.mAP == pytest.approx(1.0)
        assert rep.precision[2] == pytest.approx(1.0)
        assert rep.precision[5] == pytest.approx(2 / 5)  # 2 relevant among the 5 others
        assert rep.recall[2] == pytest.approx(1.0) and rep.cmc[1] == 1.0
    # A singleton class has nothing to find: excluded and counted.
    rep = retrieval_report(np.vstack([v, [[5, 5]]]), [*labels, "c"], ks=(1,))
    assert rep.n_queries == 6 and rep.no_relevant == 1
    d = rep.to_dict()
    assert d["mAP"] == pytest.approx(1.0) and d["precision"]["1"] == 1.0


def test_report_vs_naive_on_random_vectors() -> None:
    rng = np.random.default_rng(7)
    v = rng.normal(size=(30, 8))
    labels = rng.integers(0, 3, 30)
    rep = retrieval_report(v, labels, metric="euclidean", ks=(1, 5, 10))
    d = pairwise_scores(v, v, "euclidean")
    ref_d = np.sqrt(((v[:, None, :] - v[None, :, :]) ** 2).sum(-1))
    np.testing.assert_allclose(d, ref_d, atol=1e-6)
    check(rep, naive(d, relevance(labels, labels), np.eye(30, dtype=bool), (1, 5, 10), False))


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="same"):
        retrieval_metrics(np.zeros((2, 3)), np.zeros((2, 2), bool))
    with pytest.raises(ValueError, match="metric"):
        pairwise_scores(np.zeros((2, 3)), np.zeros((2, 3)), "manhattan")
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics(np.full((1, 2), np.nan), np.ones((1, 2), bool))
