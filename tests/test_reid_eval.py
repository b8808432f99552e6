"""ReID evaluation and k-reciprocal re-ranking against naive loop references."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import one_line_error
from vitrina.errors import VitrinaError
from vitrina.evaluate import (
    k_reciprocal_neighbours,
    reid_distances,
    reid_report,
    rerank_k_reciprocal,
)
from vitrina.evaluate import rerank as rerank_module

# ---------------------------------------------------------------- ReID protocol


def naive_reid(dist, q_pids, g_pids, q_cams, g_cams, k=10):
    """One query at a time: drop same pid + same camera and junk (-1), rank by (distance,
    gallery index), AP over the ranking, first-hit rank, INP from the last hit."""
    out = []
    for q in range(len(dist)):
        keep = [
            g
            for g in range(len(g_pids))
            if g_pids[g] != -1 and not (g_pids[g] == q_pids[q] and g_cams[g] == q_cams[q])
        ]
        ranked = sorted(keep, key=lambda g: (float(dist[q][g]), g))
        hits = [g_pids[g] == q_pids[q] for g in ranked]
        top = ranked[:k] + [-1] * (k - len(ranked[:k]))
        if not any(hits):
            out.append(None)
            continue
        found, precs = 0, []
        for i, h in enumerate(hits):
            if h:
                found += 1
                precs.append(found / (i + 1))
        last = max(i for i, h in enumerate(hits) if h) + 1
        out.append(
            {
                "ap": sum(precs) / found,
                "first": hits.index(True) + 1,
                "inp": found / last,
                "top": top,
                "top_match": hits[:k] + [False] * (k - len(hits[:k])),
            }
        )
    return out


def random_reid(seed, q_n=25, g_n=70, quantize=False):
    """Several cameras, junk (-1), distractors (0), a query identity absent from the gallery."""
    rng = np.random.default_rng(seed)
    q_pids = rng.integers(1, 8, q_n)
    q_pids[0] = 99  # no gallery image: not scored
    g_pids = rng.integers(1, 8, g_n)
    g_pids[rng.random(g_n) < 0.15] = -1
    g_pids[rng.random(g_n) < 0.15] = 0
    q_cams, g_cams = rng.integers(0, 4, q_n), rng.integers(0, 4, g_n)
    dist = rng.random((q_n, g_n))
    if quantize:  # many ties, broken by gallery index
        dist = np.round(dist * 4) / 4
    return dist, q_pids, g_pids, q_cams, g_cams


@pytest.mark.parametrize("seed,quantize", [(0, False), (1, False), (2, True), (3, True)])
def test_reid_report_matches_naive_loops(seed, quantize):
    dist, qp, gp, qc, gc = random_reid(seed, quantize=quantize)
    rep = reid_report(dist, qp, gp, qc, gc, block=7)
    ref = naive_reid(dist, qp, gp, qc, gc)
    scored = [r for r in ref if r is not None]
    assert rep.n_queries == len(scored) and rep.no_match == len(ref) - len(scored) >= 1
    assert rep.mAP == pytest.approx(np.mean([r["ap"] for r in scored]), abs=1e-12)
    assert rep.mINP == pytest.approx(np.mean([r["inp"] for r in scored]), abs=1e-12)
    for k in (1, 5, 10):
        assert rep.cmc[k] == pytest.approx(np.mean([r["first"] <= k for r in scored]))
    for k, v in enumerate(rep.cmc_curve, start=1):
        assert v == pytest.approx(np.mean([r["first"] <= k for r in scored]))
    assert rep.rank1 == rep.cmc[1]
    for q, r in enumerate(ref):
        assert rep.top_k[q].tolist() == (r["top"] if r else rep.top_k[q].tolist())
        if r is None:
            assert np.isnan(rep.ap[q]) and np.isnan(rep.inp[q])
        else:
            assert rep.ap[q] == pytest.approx(r["ap"], abs=1e-12)
            assert rep.inp[q] == pytest.approx(r["inp"], abs=1e-12)
            assert rep.top_k_match[q].tolist() == r["top_match"]


def test_reid_protocol_by_hand():
    # Gallery: 0 same pid+camera (removed), 1 junk (removed), 2 distractor, 3 true match.
    dist = np.array([[0.1, 0.2, 0.3, 0.4]])
    rep = reid_report(dist, [5], [5, -1, 0, 5], [1], [1, 2, 2, 3], top_k=4)
    assert rep.top_k.tolist() == [[2, 3, -1, -1]]  # junk and same-camera gone, padded
    assert rep.top_k_match.tolist() == [[False, True, False, False]]
    assert rep.cmc[1] == 0.0 and rep.cmc[5] == 1.0
    assert rep.mAP == pytest.approx(0.5) and rep.ap[0] == pytest.approx(0.5)
    assert rep.gallery_size == 2
    # The same-camera image of the right person alone: nothing to score.
    rep = reid_report(dist[:, :1], [5], [5], [1], [1])
    assert rep.n_queries == 0 and rep.no_match == 1 and np.isnan(rep.mAP)


def test_reid_report_to_dict_is_json_and_checks_inputs():
    dist, qp, gp, qc, gc = random_reid(4)
    d = json.loads(json.dumps(reid_report(dist, qp, gp, qc, gc, top_k=3).to_dict()))
    assert d["ap"][0] is None and len(d["top_k"]) == len(dist) and len(d["top_k"][0]) == 3
    assert set(d["cmc"]) == {"1", "5", "10"} and len(d["cmc_curve"]) == 50
    with pytest.raises(ValueError, match="does not match"):
        reid_report(dist, qp[:-1], gp, qc, gc)
    bad = dist.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        reid_report(bad, qp, gp, qc, gc)


@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean", "cosine"])
def test_reid_distances_match_naive(metric):
    rng = np.random.default_rng(0)
    qf = rng.normal(size=(9, 5)).astype(np.float32)
    gf = rng.normal(size=(13, 5)).astype(np.float32)
    got = reid_distances(qf, gf, metric, block=4)
    assert got.dtype == np.float32 and got.shape == (9, 13)
    for i in range(9):
        for j in range(13):
            a, b = qf[i].astype(float), gf[j].astype(float)
            if metric == "cosine":
                want = 1 - a @ b / np.linalg.norm(a) / np.linalg.norm(b)
            else:
                want = ((a - b) ** 2).sum() ** (0.5 if metric == "euclidean" else 1)
            assert got[i, j] == pytest.approx(want, abs=1e-5)
    with pytest.raises(ValueError, match="metric"):
        reid_distances(qf, gf, "manhattan")


# ---------------------------------------------------------------- k-reciprocal re-ranking


def distances(q, g):
    return (
        reid_distances(q, g).astype(np.float64),
        reid_distances(q, q).astype(np.float64),
        reid_distances(g, g).astype(np.float64),
    )


def clustered(seed, n=40, q_n=10, dim=6):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(6, dim))
    x = centres[rng.integers(0, 6, n)] + 0.6 * rng.normal(size=(n, dim))
    return x[:q_n], x[q_n:]


def naive_rerank(q_g, q_q, g_g, k1, k2, lam):
    """The paper's steps as plain loops over images (ties by index, each image first in its
    own ranking): squared, row-normalised distances; R(p, k1) grown by the 2/3 rule; Gaussian
    weights; mean over the k2 nearest; Jaccard with sum-min / sum-max."""
    q = len(q_g)
    full = np.block([[q_q, q_g], [q_g.T, g_g]]) ** 2
    n = len(full)
    full = full / full.max(axis=1, keepdims=True)
    rank = []
    for p in range(n):
        rank.append(sorted(range(n), key=lambda x, p=p: (x != p, full[p, x], x)))

    def recip(p, k):
        return [c for c in rank[p][: k + 1] if p in rank[c][: k + 1]]

    v = np.zeros((n, n))
    for p in range(n):
        r = recip(p, k1)
        grown = set(r)
        for c in r:
            rc = recip(c, round(k1 / 2))
            if len(set(rc) & set(r)) > 2 / 3 * len(rc):
                grown |= set(rc)
        for x in grown:
            v[p, x] = np.exp(-full[p, x])
        v[p] /= v[p].sum()
    if k2 > 1:
        v = np.array([sum(v[x] for x in rank[p][:k2]) / k2 for p in range(n)])
    out = np.zeros((q, n - q))
    for p in range(q):
        for x in range(q, n):
            jac = 1 - np.minimum(v[p], v[x]).sum() / np.maximum(v[p], v[x]).sum()
            out[p, x - q] = (1 - lam) * jac + lam * full[p, x]
    return out


@pytest.mark.parametrize("seed,k1,k2", [(0, 20, 6), (1, 5, 3), (2, 7, 1), (3, 3, 2)])
def test_rerank_matches_naive_loops(seed, k1, k2, monkeypatch):
    # Tiny blocks and pair budget so that every blocked path crosses its boundaries.
    monkeypatch.setattr(rerank_module, "_BLOCK", 7)
    monkeypatch.setattr(rerank_module, "_PAIR_BUDGET", 50)
    d = distances(*clustered(seed))
    got = rerank_k_reciprocal(*d, k1=k1, k2=k2, lambda_value=0.3)
    assert got.shape == (10, 30) and got.dtype == np.float32 and np.isfinite(got).all()
    np.testing.assert_allclose(got, naive_rerank(*d, k1, k2, 0.3), atol=1e-6)


def test_k_reciprocal_sets_match_naive():
    q, g = clustered(5, n=25, q_n=5)
    q[1] = g[0] = g[1] = q[0]  # four identical images: each must still rank itself first
    q_g, q_q, g_g = distances(q, g)
    full = np.block([[q_q, q_g], [q_g.T, g_g]])
    n = len(full)
    for k in (1, 3, 6):
        nearest = [sorted(range(n), key=lambda x, p=p: (x != p, full[p, x], x)) for p in range(n)]
        want = [
            sorted(c for c in nearest[p][: k + 1] if p in nearest[c][: k + 1]) for p in range(n)
        ]
        got = k_reciprocal_neighbours(q_g, q_q, g_g, k)
        assert [s.tolist() for s in got] == want
        assert all(p in s for p, s in enumerate(got))  # each image is its own neighbour


def test_rerank_lambda_one_is_the_normalised_original():
    q_g, q_q, g_g = distances(*clustered(6))
    got = rerank_k_reciprocal(q_g, q_q, g_g, lambda_value=1.0)
    row_max = np.maximum(q_q.max(1), q_g.max(1)) ** 2
    np.testing.assert_allclose(got, q_g**2 / row_max[:, None], rtol=1e-6)
    assert (np.argsort(got, 1, kind="stable") == np.argsort(q_g, 1, kind="stable")).all()
    # Squared-euclidean inputs, not squared again, give the same normalised distance.
    sq = rerank_k_reciprocal(q_g**2, q_q**2, g_g**2, lambda_value=1.0, square=False)
    np.testing.assert_allclose(sq, got, rtol=1e-6)


def lift_scene(seed):
    """A query q at the origin; its identity's 9 gallery images on a half circle of radius
    ~1 (the closest, T, is gallery 1); an impostor X (gallery 0) at distance 0.9 on the other
    side, in a tight ring of 12 images of another identity. X is nearer to q than T, but q is
    not among X's nearest while it is among T's: T is k-reciprocal, X is not."""
    rng = np.random.default_rng(seed)
    ang = np.deg2rad(np.arange(90, 271, 22.5))
    same = np.c_[np.cos(ang), np.sin(ang)] * np.linspace(0.95, 1.1, len(ang))[:, None]
    ring = np.deg2rad(np.arange(0, 360, 30))
    other = np.array([1.5, 0.0]) + 0.3 * np.c_[np.cos(ring), np.sin(ring)]
    g = np.r_[[[0.9, 0.0]], same, other] + rng.normal(0, 0.01, (22, 2))
    q = rng.normal(0, 0.01, (1, 2))
    return q, g


@pytest.mark.parametrize("seed", range(4))
def test_rerank_lifts_a_k_reciprocal_match_to_rank_one(seed):
    q_g, q_q, g_g = distances(*lift_scene(seed))
    assert np.argsort(q_g[0])[:2].tolist() == [0, 1]  # raw: impostor first, true match second
    got = rerank_k_reciprocal(q_g, q_q, g_g, k1=6, k2=3, lambda_value=0.3)
    assert np.argsort(got[0])[0] == 1
    assert 0 not in np.argsort(got[0])[:5]


def test_rerank_checks_inputs_and_size_limit():
    q_g, q_q, g_g = distances(*clustered(7))
    with pytest.raises(VitrinaError) as err:
        rerank_k_reciprocal(q_g, q_q, g_g, max_n=20)
    one_line_error(str(err.value), "40", "max_n=20", "GiB")
    with pytest.raises(ValueError, match="must be"):
        rerank_k_reciprocal(q_g, q_q[:3, :3], g_g)
    with pytest.raises(ValueError, match="lambda_value"):
        rerank_k_reciprocal(q_g, q_q, g_g, lambda_value=1.5)
    # k1 larger than the number of images: every image is everyone's neighbour, still finite.
    assert np.isfinite(rerank_k_reciprocal(q_g[:2, :3], q_q[:2, :2], g_g[:3, :3])).all()


# ---------------------------------------------------------------- plot


def test_plot_cmc_writes_a_png(tmp_path):
    from vitrina.report.plots import plot_cmc

    dist, qp, gp, qc, gc = random_reid(8)
    curve = reid_report(dist, qp, gp, qc, gc).cmc_curve
    out = plot_cmc(
        {"raw": curve, "re-ranked": [min(1.0, v + 0.1) for v in curve]}, tmp_path / "c.png", "CMC"
    )
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
