from __future__ import annotations

import numpy as np

from vitrina.evaluate import classification_report


def naive(y, p, c):
    pred = [max(range(c), key=lambda j: row[j]) for row in p]
    conf = [
        [sum(1 for t, q in zip(y, pred, strict=True) if t == i and q == j) for j in range(c)]
        for i in range(c)
    ]
    prec, rec = [], []
    for k in range(c):
        tp = conf[k][k]
        col = sum(conf[i][k] for i in range(c))
        row = sum(conf[k])
        prec.append(tp / col if col else 0.0)
        rec.append(tp / row if row else 0.0)
    top2 = sum(
        1 for t, row in zip(y, p, strict=True) if t in sorted(range(c), key=lambda j: -row[j])[:2]
    ) / len(y)
    return conf, prec, rec, top2


def test_report_matches_naive_reference() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 200)
    p = rng.random((200, 4))
    p[np.arange(200), y] += 0.3  # better than chance
    rep = classification_report(y, p, ["a", "b", "c", "d"], ks=(1, 2))
    conf, prec, rec, top2 = naive(y.tolist(), p.tolist(), 4)
    assert rep.confusion.tolist() == conf
    np.testing.assert_allclose(rep.precision, prec)
    np.testing.assert_allclose(rep.recall, rec)
    assert rep.top_k[2] == top2
    assert rep.accuracy == np.trace(np.array(conf)) / 200
    f1 = [2 * a * b / (a + b) if a + b else 0 for a, b in zip(prec, rec, strict=True)]
    np.testing.assert_allclose(rep.f1, f1)
