"""Calibration that knows how little it saw: a margin/spread term is kept only when it names
more known probes on bootstrap resamples of the identities, and the report states the
uncertainty of its FAR and naming figures, warning when the set cannot promise the FAR asked.
Synthetic 128-d vectors at dlib's scale (people ~0.9 apart, photos of one person ~0.4)."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from vitrina.evaluate.verification import pair_distances, verification_report
from vitrina.faces.decision import KEEP_SHARE, calibrate_rule
from vitrina.faces.gallery import Gallery

D = 128


def triplets(groups: int, per: int, seed: int, delta: float = 0.025):
    """Groups of three look-alikes (as in test_faces_gallery): the margin term's home."""
    rng = np.random.default_rng(seed)
    g = rng.standard_normal((groups, D)) * 0.06
    c = np.repeat(g, 3, 0) + rng.standard_normal((groups * 3, D)) * delta
    s = rng.uniform(0.01, 0.035, (groups * 3 * per, 1))
    x = np.repeat(c, per, 0) + rng.standard_normal((groups * 3 * per, D)) * s
    return x, np.repeat([f"p{i:03d}" for i in range(groups * 3)], per)


def separated(people: int, per: int, seed: int):
    """Well-separated people: centres ~0.9 apart, photos ~0.4 apart."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((people, D)) * 0.055
    x = np.repeat(c, per, 0) + rng.standard_normal((people * per, D)) * 0.025
    return x, np.repeat([f"p{i:03d}" for i in range(people)], per)


def calibrate(x, labels, far=0.01, **kw):
    d, same = pair_distances(x, list(labels), metric="euclidean")
    th = verification_report(d, same, fars=(far,), metric="euclidean").thresholds_dict(far)
    scale = float(np.median(d[~same]))
    return calibrate_rule(x, labels, far=far, cap=float(th["threshold"]), scale=scale, **kw)


def test_a_term_the_identities_do_not_back_is_not_kept():
    """9 people with 2 photos: on the one split a margin names more known probes, but on
    resamples of the people it mostly does not, so the plain threshold is kept."""
    x, labels = triplets(3, 2, seed=0)
    one_split = calibrate(x, labels, rounds=0)
    assert one_split.rule.margin > 0  # the premise: the single simulation picks a margin
    cal = calibrate(x, labels)
    u = cal.uncertainty
    assert u is not None and u.term_support is not None and u.term_support < KEEP_SHARE
    assert not u.term_kept
    assert cal.rule.margin == 0 and cal.rule.spread_weight == 0
    assert cal.chosen.named == pytest.approx(cal.plain.named)


def test_a_term_that_helps_on_resamples_is_kept():
    x, labels = triplets(8, 3, seed=1)
    cal = calibrate(x, labels)
    assert cal.rule.margin > 0 and cal.uncertainty.term_kept
    assert cal.uncertainty.term_support >= KEEP_SHARE
    assert cal.chosen.named > cal.plain.named + 0.1


def test_a_small_set_says_it_cannot_promise_the_far():
    x, labels = separated(11, 3, seed=3)  # the gallery: 11 people, 3 photos
    u = calibrate(x, labels).uncertainty
    assert not u.promised and "too small to promise FAR 0.01" in u.warning
    assert "33 stranger trials from 11 people" in u.warning
    for lo, mid, hi in ((u.far[1], u.far[0], u.far[2]), (u.named[1], u.named[0], u.named[2])):
        assert 0.0 <= lo <= mid <= hi <= 1.0
    assert u.rounds == 200 and u.n_people == 11 and u.n_unknown == 33


def test_a_large_well_separated_set_promises_it():
    x, labels = separated(120, 3, seed=4)  # 360 stranger trials: 3 / 360 < 1%
    cal = calibrate(x, labels)
    u = cal.uncertainty
    assert u.promised and u.warning is None
    assert u.far[0] <= 0.01 < u.far[2] < 0.05 and u.named[0] > 0.95


def test_out_of_bag_far_shows_an_overfitted_threshold():
    """A stranger that sits closer than usual to someone: measured on all people the
    threshold is solved below them, but on resamples that leave them out the threshold grows
    and accepts them, so the out-of-bag interval reaches above the FAR asked."""
    rng = np.random.default_rng(7)
    x, labels = separated(12, 3, seed=7)
    x[-3:] = x[:3] + rng.standard_normal((3, D)) * 0.035  # p011 looks like p000
    u = calibrate(x, labels).uncertainty
    assert u.far[2] > 0.01 and not u.promised


def test_calibration_is_repeatable():
    x, labels = triplets(4, 3, seed=2)
    a, b = calibrate(x, labels), calibrate(x, labels)
    assert a.rule == b.rule and a.uncertainty == b.uncertainty


def test_the_gallery_stores_the_uncertainty_and_every_answer_warns(tmp_path):
    x, labels = separated(11, 3, seed=5)
    g = Gallery.create(tmp_path / "g", dim=D, fingerprint=None, embedder_label="synthetic")
    rep = g.calibrate({p: list(x[labels == p]) for p in sorted(set(labels))}, far=0.01)
    assert rep.warning and any(line.startswith("WARNING: too small") for line in rep.lines())
    assert any("on people left out" in line for line in rep.lines())
    stored = json.loads((g.path / "gallery.json").read_text())["calibration"]
    assert stored["uncertainty"]["promised"] is False
    assert len(stored["uncertainty"]["far"]) == 3
    assert "too few to promise" in Gallery(g.path).threshold_source
    # a calibration stored before the uncertainty was measured still reads
    meta = json.loads((g.path / "gallery.json").read_text())
    del meta["calibration"]["uncertainty"]
    (g.path / "gallery.json").write_text(json.dumps(meta))
    assert Gallery(g.path).threshold_source.endswith("on 33 faces of 11 people")


def test_a_rule_that_names_no_one_says_so(tmp_path):
    """Three people, two of them look-alikes: keeping the look-alike out as a stranger takes a
    threshold below every genuine distance (below 0 here). The rule and the report say it
    names no one, instead of leaving a negative distance to be puzzled over."""
    x, labels = separated(3, 3, seed=5)
    x[3:6] = x[0:3] + 0.02 + np.random.default_rng(1).standard_normal((3, D)) * 0.01
    g = Gallery.create(tmp_path / "g", dim=D, fingerprint="fp", embedder_label="synthetic")
    report = g.calibrate({p: list(x[labels == p]) for p in sorted(set(labels))}, far=0.01)
    assert report.openset.named == 0 and report.rule.threshold < 0
    assert "(below 0: names no one)" in report.rule.describe()
    text = "\n".join(report.lines())
    assert "WARNING: the chosen rule names none of the" in text
    assert "on 9 faces of 3 people" in text and "Calibrate on photos of more people" in text
    # a rule that names people does not carry the warning
    ok = Gallery.create(tmp_path / "ok", dim=D, fingerprint="fp", embedder_label="synthetic")
    x2, labels2 = separated(6, 3, seed=4)
    good = ok.calibrate({p: list(x2[labels2 == p]) for p in sorted(set(labels2))}, far=0.05)
    assert good.openset.named > 0 and "names none" not in "\n".join(good.lines())
    assert "names no one" not in good.rule.describe()


def test_the_margin_pass_rate_is_taken_at_its_upper_bound():
    """The tail bound's share of strangers passing the margin: a few dozen trials say little,
    so its 95% upper bound counts (0 of 22: 0.127, where add-one smoothing said 0.042)."""
    from vitrina.faces.decision import pass_rate_bound

    assert pass_rate_bound(0, 22) == pytest.approx(1 - 0.05 ** (1 / 22))
    assert pass_rate_bound(0, 22) > 1 / 24
    bounds = [pass_rate_bound(k, 40) for k in range(41)]
    assert all(a < b for a, b in itertools.pairwise(bounds))
    assert pass_rate_bound(3, 40) > 3 / 40
    assert pass_rate_bound(0, 2000) < 0.002  # many trials: near the rate seen
    assert pass_rate_bound(5, 5) == pass_rate_bound(0, 0) == 1.0
