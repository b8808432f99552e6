"""Open-set decisions: name the nearest person of a face gallery, or say ``"unknown"``.

**Distances.** Euclidean between face vectors (dlib's metric: the same person is typically
below 0.6). The distance from a face to a *person* is the distance to that person's nearest
template. For one face:

* ``d1`` -- distance to the best person ``B``; ``d2`` -- distance to the runner-up, the best
  *other person* (``inf`` when the gallery has one person);
* ``spread_B`` -- mean pairwise distance between ``B``'s templates (``spread_ref`` when ``B``
  has fewer than two).

**The rule** (:class:`DecisionRule`)::

    t_B    = min(cap, threshold + spread_weight * (spread_B - spread_ref))
    accept B   iff   d1 <= t_B   and   d2 - d1 >= margin        otherwise "unknown"

Why each term. A single global threshold (``margin = 0, spread_weight = 0``, dlib's 0.6 by
default) lets through an unknown face that happens to lie near *some* gallery person -- and the
more people the gallery holds, or the more lighting/pose/expression differ from the enrolled
photos, the likelier that is. A face of an enrolled person is usually much nearer its own
person than the second-best one, while an unknown face sits at similar distances from several
look-alikes: the **margin** test rejects those ambiguous matches, which lets the threshold
itself be looser and name more of the enrolled people. **spread_weight** adapts the threshold
to each person: one enrolled from varied photos (large spread) has genuine probes farther
away than one enrolled from near-identical shots. ``cap`` bounds every per-person threshold by
the pairwise verification threshold at the target FAR, so no adaptation can accept a pair
that 1:1 verification would call two people.

**Calibration** (:func:`calibrate_rule`), from labelled vectors only (never from a later
benchmark's unknowns): a leave-one-identity-out simulation. Each person in turn plays the
unknown -- removed from a temporary gallery of everyone else, all their faces probe it; every
face of the other people is a known probe against that gallery with the face itself held out
of its own person's templates. For each ``(margin, spread_weight)`` of a grid the largest
``threshold`` whose false-accept rate on the unknown probes is ``<= far`` is solved exactly
(midway between the first unknown that must be refused and the probe just below it). With
fewer than ``10 / far`` unknown trials the measured rate cannot resolve ``far`` (the rule of
:mod:`vitrina.evaluate.verification`), so the threshold is also kept below the tail
extrapolated from a normal fit to the unknowns' distances, ``mean + sd * z(far / p)``, ``p``
being the share passing the margin test among the nearest quarter of the unknowns, at its
95% upper confidence bound (:func:`pass_rate_bound`). The grid point naming the most known
probes correctly wins (ties: fewer misnamed, then the smaller margin and weight), but a
margin or spread term is kept only when it names at least 2% more known probes than the
plain threshold calibrated the same way; the report gives both, and dlib's 0.6, on the same
simulation.

**How little it saw** (:class:`Uncertainty`). One leave-one-identity-out split of a small
gallery (11 people with 3 photos: 33 stranger trials) cannot resolve a 1% false-accept rate,
and a margin term that names 3 more of its 66 known probes may be luck of who was enrolled.
So the identities are resampled with replacement (:data:`BOOTSTRAP_ROUNDS`, seeded, so a
calibration is repeatable): on each resample both thresholds (the term's and the plain one)
are solved again on the people drawn, and the term is kept only when it names more known
probes than the plain threshold on at least :data:`KEEP_SHARE` of the resamples, not only on
the one split. The chosen rule's threshold is also solved on each resample and applied to the
people left out of it (out of bag), which gives the 90% intervals of its false-accept and
naming rates for people it was not calibrated on. The report warns, plainly, that the FAR
asked cannot be promised when fewer than ``3 / far`` stranger trials measured it (with none
accepted, the 95% upper bound on the rate is ``3 / trials``) or when the median out-of-bag
rate exceeds it (the interval's upper end is reported: a threshold solved at exactly ``far``
scatters around it on new people).

**Measured** (held-out probes; calibrated on the enrolled faces only, ``far = 0.01``):

* ORL faces, dlib ResNet vectors, 30 people enrolled with 3 photos, their other 210 photos
  as known probes, 100 photos of 10 other people as unknowns, mean of 10 random splits:
  dlib's 0.6 names 99.95% but accepts 62% of the unknowns (worst split 76%). The plain
  threshold at the measured midpoint alone: 0.9% unknowns accepted (worst 5%), 99.3% named;
  with the tail bound 0.2% (worst 1%), 99.2% named. Margin/spread terms chosen at smaller
  gains than 2% named no more and accepted more (0.6-1.0%), hence the 2% rule; with it the
  chosen rule gives 0.3% (worst 1%), 99.2% named. On ORL the calibrated threshold is what
  matters; the margin finds nothing more to separate.
* Synthetic look-alikes (groups of three people ~0.5 apart, a third of the groups with one
  member unknown, 5 seeds): chosen rule (margin ~0.05) 0% unknowns accepted, 69.5% named;
  the plain threshold at the same FAR 0.3%, 62.8% named.

The ORL figures steered two choices (the tail bound, the 2% rule) and are on the dataset of
the faces benchmark, so they are not an independent check of it.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from statistics import NormalDist
from typing import Any

import numpy as np

from vitrina.errors import DataError

__all__ = [
    "DEFAULT_THRESHOLD",
    "DecisionRule",
    "OpenSetCalibration",
    "OpenSetFigures",
    "OpenSetTrials",
    "Uncertainty",
    "calibrate_rule",
    "euclidean",
    "evaluate_rule",
    "person_distances",
    "simulate_open_set",
    "template_spread",
    "top_two",
    "verify_distance",
]

DEFAULT_THRESHOLD = 0.6  # dlib's documented same-person threshold for its ResNet face model
MARGIN_GRID = tuple(round(0.02 * i, 2) for i in range(21))  # x the median impostor distance
SPREAD_WEIGHTS = (0.0, 0.5, 1.0, 2.0)
MIN_GAIN = 0.02  # share of known probes a margin/spread term must add to be kept
MIN_TAIL_EVENTS = 10  # below far * unknown trials, the FAR tail is extrapolated
BOOTSTRAP_ROUNDS = 200  # resamples of the identities
KEEP_SHARE = 0.9  # share of resamples on which a margin/spread term must name more
INTERVAL = 0.9  # the reported intervals: 5th to 95th percentile
BOOTSTRAP_SEED = 0
PASS_CONFIDENCE = 0.95  # the margin pass rate of the tail bound: its upper bound at this level
_BLOCK = 512


# --------------------------------------------------------------------------- distances


def euclidean(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(Q, N) euclidean distances between the rows of ``a`` (Q, D) and ``b`` (N, D), float64."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return np.sqrt(np.maximum(sq, 0.0))


def person_distances(queries: np.ndarray, templates: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """(Q, P) distance from each query to each person's nearest template. ``templates`` (N, D)
    are grouped by person; ``starts`` (P,) is the row where each person's group begins."""
    q = np.asarray(queries, dtype=np.float64)
    if len(starts) == 0:
        return np.zeros((len(q), 0))
    out = np.empty((len(q), len(starts)))
    for s in range(0, len(q), _BLOCK):
        out[s : s + _BLOCK] = np.minimum.reduceat(
            euclidean(q[s : s + _BLOCK], templates), starts, axis=1
        )
    return out


def top_two(per_person: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(best, d1, second, d2)`` per row of a (Q, P) person-distance matrix; ``second = -1``
    and ``d2 = inf`` when there is one person (``best = -1``, ``d1 = inf`` when none)."""
    d = np.asarray(per_person, dtype=np.float64)
    q, p = d.shape
    best = np.full(q, -1, np.int64)
    second = np.full(q, -1, np.int64)
    d1 = np.full(q, np.inf)
    d2 = np.full(q, np.inf)
    if p == 0 or q == 0:
        return best, d1, second, d2
    rows = np.arange(q)
    best = d.argmin(1)
    d1 = d[rows, best]
    if p > 1:
        rest = d.copy()
        rest[rows, best] = np.inf
        second = rest.argmin(1)
        d2 = rest[rows, second]
    return best, d1, second, d2


def template_spread(templates: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """(P,) mean pairwise distance between each person's templates; NaN with fewer than two."""
    t = np.asarray(templates, dtype=np.float64)
    out = np.full(len(starts), np.nan)
    if len(starts) == 0:
        return out
    ends = np.r_[starts[1:], len(t)].astype(np.int64)
    for p, (a, b) in enumerate(zip(starts, ends, strict=True)):
        if b - a >= 2:
            d = euclidean(t[a:b], t[a:b])
            out[p] = d[np.triu_indices(b - a, 1)].mean()
    return out


def verify_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Euclidean distance between two face vectors."""
    return float(euclidean(np.reshape(a, (1, -1)), np.reshape(b, (1, -1)))[0, 0])


# --------------------------------------------------------------------------- the rule


@dataclass(frozen=True)
class DecisionRule:
    """Accept the best person ``B`` iff ``d1 <= t_B`` and ``d2 - d1 >= margin``, with
    ``t_B = min(cap, threshold + spread_weight * (spread_B - spread_ref))`` (module docstring).
    The default is dlib's plain 0.6 threshold, uncalibrated."""

    threshold: float = DEFAULT_THRESHOLD
    margin: float = 0.0
    spread_weight: float = 0.0
    spread_ref: float = 0.0
    cap: float | None = None
    #: Directions projected out of every vector before distances are taken (the light's:
    #: :mod:`vitrina.faces.light_projection`), ``(k, D)`` rows; None: vectors as they are.
    light_basis: tuple[tuple[float, ...], ...] | None = None

    def project(self, x: np.ndarray) -> np.ndarray:
        """Vectors as this rule compares them: ``x`` with :attr:`light_basis` projected out."""
        from vitrina.faces.light_projection import project

        return project(x, None if self.light_basis is None else np.asarray(self.light_basis))

    def person_thresholds(self, spread: np.ndarray) -> np.ndarray:
        """Each person's effective threshold from their template spread (NaN: none)."""
        s = np.asarray(spread, dtype=np.float64)
        s = np.where(np.isnan(s), self.spread_ref, s)
        t = self.threshold + self.spread_weight * (s - self.spread_ref)
        return np.minimum(t, self.cap) if self.cap is not None else t

    def accept(self, d1: np.ndarray, d2: np.ndarray, spread_best: np.ndarray) -> np.ndarray:
        """Boolean (Q,): is the best person named? (``d2 = inf``: no runner-up, no margin test)."""
        d1 = np.asarray(d1, dtype=np.float64)
        d2 = np.asarray(d2, dtype=np.float64)
        t = self.person_thresholds(spread_best)
        with np.errstate(invalid="ignore"):
            return (d1 <= t) & (d2 - d1 >= self.margin) & np.isfinite(d1)

    def explain(self, d1: float, d2: float, t: float, best: str, second: str | None) -> str:
        """One line: why this face was named or not."""
        if not math.isfinite(d1):
            return "the gallery is empty"
        if d1 > t:
            return f"nearest person {best} at {d1:.3f} > threshold {t:.3f}"
        if second is not None and d2 - d1 < self.margin:
            return (
                f"ambiguous: {best} at {d1:.3f}, {second} at {d2:.3f}: margin "
                f"{d2 - d1:.3f} < {self.margin:.3f}"
            )
        why = f"distance {d1:.3f} <= threshold {t:.3f}"
        if second is not None:
            why += f", margin {d2 - d1:.3f} >= {self.margin:.3f} to {second}"
        return why

    def describe(self) -> str:
        parts = [f"distance <= {self.threshold:.3f}"]
        if self.threshold < 0:  # solved below every stranger, and below every genuine face
            parts[0] += " (below 0: names no one)"
        if self.spread_weight:
            parts[0] += f" + {self.spread_weight:g} x (person spread - {self.spread_ref:.3f})"
        if self.cap is not None:
            parts[0] += f" (at most {self.cap:.3f})"
        if self.margin:
            parts.append(f"runner-up person at least {self.margin:.3f} farther")
        text = " and ".join(parts)
        if self.light_basis:
            text += f" ({len(self.light_basis)} light directions removed)"
        return text

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if d["light_basis"] is None:  # as stored before light directions existed
            del d["light_basis"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DecisionRule:
        names = set(cls.__dataclass_fields__)
        kw = {k: v for k, v in d.items() if k in names}
        if kw.get("light_basis") is not None:  # JSON lists -> the hashable tuples
            kw["light_basis"] = tuple(tuple(float(v) for v in row) for row in kw["light_basis"])
        return cls(**kw)


# --------------------------------------------------------------------------- simulation


@dataclass
class OpenSetTrials:
    """Decision inputs of every simulated probe (see :func:`simulate_open_set`).

    Each row: ``d1``, ``d2``, the spread of the best person in that temporary gallery,
    whether the best person is right (known probes), whether the probe is an unknown, its
    ``weight`` (how many of the leave-one-identity-out galleries give it these inputs) and
    the probe's ``person`` (an integer code: what the bootstrap resamples)."""

    d1: np.ndarray
    d2: np.ndarray
    spread_best: np.ndarray
    correct: np.ndarray
    unknown: np.ndarray
    weight: np.ndarray
    n_people: int
    n_faces: int
    person: np.ndarray | None = None

    def select(self, keep: np.ndarray) -> OpenSetTrials:
        """The rows ``keep`` (a mask, or indices: repeated ones repeat the row)."""
        return OpenSetTrials(
            self.d1[keep],
            self.d2[keep],
            self.spread_best[keep],
            self.correct[keep],
            self.unknown[keep],
            self.weight[keep],
            self.n_people,
            self.n_faces,
            None if self.person is None else self.person[keep],
        )


@dataclass
class OpenSetFigures:
    """What a rule does on the simulation: rates over weighted probe trials."""

    rule: DecisionRule
    far: float  # unknown probes given a name
    named: float  # known probes given their own name
    misnamed: float  # known probes given someone else's name
    rejected: float  # known probes called unknown
    n_unknown: int  # unknown probe trials
    n_known: int  # known probe trials

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["rule"] = self.rule.to_dict()
        for k in ("far", "named", "misnamed", "rejected"):
            d[k] = round(float(d[k]), 6)
        return d


@dataclass
class Uncertainty:
    """What the calibration set can and cannot promise (module docstring).

    ``far`` / ``named``: (median, low, high) over the bootstrap resamples of the chosen rule,
    its threshold solved on the people drawn and applied to the people left out (the interval
    covers :data:`INTERVAL`); ``term_support``: share of resamples on which the best margin /
    spread term named more known probes than the plain threshold (None: the grid's best was
    the plain threshold); ``term_kept``; ``promised``: the FAR asked is backed by enough
    stranger trials and the out-of-bag interval; ``warning``: a plain sentence when not."""

    rounds: int
    n_people: int
    n_unknown: int
    far: tuple[float, float, float]
    named: tuple[float, float, float]
    term_support: float | None
    term_kept: bool
    promised: bool
    warning: str | None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["far"] = [round(float(v), 6) for v in self.far]
        d["named"] = [round(float(v), 6) for v in self.named]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Uncertainty:
        d = dict(d)
        d["far"], d["named"] = tuple(d["far"]), tuple(d["named"])
        return cls(**d)


@dataclass
class OpenSetCalibration:
    """The chosen rule and, on the same simulation, the plain global threshold calibrated to
    the same FAR and dlib's uncalibrated 0.6; the bootstrap's :class:`Uncertainty`."""

    rule: DecisionRule
    chosen: OpenSetFigures
    plain: OpenSetFigures
    default: OpenSetFigures
    target_far: float
    grid: dict[str, list[float]] = field(default_factory=dict)
    uncertainty: Uncertainty | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "target_far": self.target_far,
            "rule": self.rule.to_dict(),
            "chosen": self.chosen.to_dict(),
            "plain": self.plain.to_dict(),
            "default": self.default.to_dict(),
            "grid": self.grid,
            "uncertainty": None if self.uncertainty is None else self.uncertainty.to_dict(),
        }


def _codes(labels: Sequence[Any] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    names, codes = np.unique(np.asarray(labels), return_inverse=True)
    return names, codes.reshape(-1)


def _first_two_without(
    top: np.ndarray, top_d: np.ndarray, exclude: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """From each row's 3 nearest people (best first), the first two that are not ``exclude``."""
    valid = (top >= 0) & (top != exclude[:, None])
    pos = np.argsort(~valid, axis=1, kind="stable")[:, :2]
    rows = np.arange(len(top))[:, None]
    ok = valid[rows, pos]
    people = np.where(ok, top[rows, pos], -1)
    dist = np.where(ok, top_d[rows, pos], np.inf)
    return people[:, 0], dist[:, 0], people[:, 1], dist[:, 1]


def simulate_open_set(vectors: np.ndarray, labels: Sequence[Any] | np.ndarray) -> OpenSetTrials:
    """The leave-one-identity-out trials of labelled face vectors (N, D) (module docstring).

    Exact, without building the P galleries: removing person ``u`` changes a known probe's
    inputs only when ``u`` is among its two nearest people, so each known face gives its
    ordinary row (weighted by the galleries that keep both) plus one row for each of its two
    nearest people that is not its own. Cost: one (N, N) distance pass in row blocks."""
    x = np.asarray(vectors, dtype=np.float64)
    _, codes = _codes(labels)
    order = np.argsort(codes, kind="stable")
    x, codes = x[order], codes[order]
    n, n_people = len(x), int(codes.max()) + 1 if len(codes) else 0
    counts = np.bincount(codes, minlength=n_people)
    starts = np.r_[0, np.cumsum(counts)[:-1]].astype(np.int64)
    per = np.empty((n, n_people))
    own_sum = np.empty(n)
    for s in range(0, n, _BLOCK):
        d = euclidean(x[s : s + _BLOCK], x)
        rows = np.arange(len(d))
        d[rows, s + rows] = np.inf  # a probe is never its own template
        per[s : s + _BLOCK] = np.minimum.reduceat(d, starts, axis=1)
        own = codes[None, :] == codes[s : s + _BLOCK, None]
        own_sum[s : s + _BLOCK] = np.where(own & np.isfinite(d), d, 0.0).sum(1)
    pair_sum = np.bincount(codes, own_sum, minlength=n_people) / 2.0
    with np.errstate(invalid="ignore", divide="ignore"):
        spread_all = np.where(counts >= 2, pair_sum / (counts * (counts - 1) / 2.0), np.nan)
        c = counts[codes]
        spread_without = np.where(
            c >= 3, (pair_sum[codes] - own_sum) / ((c - 1) * (c - 2) / 2.0), np.nan
        )
    k = min(3, n_people)
    top = np.argsort(per, axis=1, kind="stable")[:, :k]
    top_d = np.take_along_axis(per, top, 1)
    if k < 3:
        top = np.pad(top, ((0, 0), (0, 3 - k)), constant_values=-1)
        top_d = np.pad(top_d, ((0, 0), (0, 3 - k)), constant_values=np.inf)

    def rows_for(i: np.ndarray, exclude: np.ndarray, unknown: bool, weight: np.ndarray):
        b, d1, _, d2 = _first_two_without(top[i], top_d[i], exclude)
        mine = b == codes[i]
        spread = np.where(mine, spread_without[i], spread_all[np.maximum(b, 0)])
        spread = np.where(b < 0, np.nan, spread)
        return d1, d2, spread, mine, np.full(len(i), unknown), weight, codes[i]

    parts = []
    # Unknown probes: every face, against the gallery of everyone else.
    everyone = np.arange(n)
    parts.append(rows_for(everyone, codes, True, np.ones(n)))
    # Known probes: faces whose person keeps another template, in the P - 1 galleries.
    known = everyone[counts[codes] >= 2]
    t0, t1 = top[known, 0], top[known, 1]
    mine = codes[known]
    moved0 = t0 != mine
    moved1 = (t1 >= 0) & (t1 != mine)
    base_w = (n_people - 1) - moved0.astype(int) - moved1.astype(int)
    parts.append(rows_for(known, np.full(len(known), -1), False, base_w.astype(float)))
    parts.append(rows_for(known[moved0], t0[moved0], False, np.ones(int(moved0.sum()))))
    parts.append(rows_for(known[moved1], t1[moved1], False, np.ones(int(moved1.sum()))))
    cols = [np.concatenate([p[j] for p in parts]) for j in range(7)]
    trials = OpenSetTrials(*cols[:6], n_people=n_people, n_faces=n, person=cols[6])  # type: ignore[arg-type]
    return trials.select(trials.weight > 0)


def evaluate_rule(rule: DecisionRule, trials: OpenSetTrials) -> OpenSetFigures:
    """Apply ``rule`` to every simulated probe and count, weighted."""
    acc = rule.accept(trials.d1, trials.d2, trials.spread_best)
    w, unk = trials.weight, trials.unknown
    n_unk, n_known = float(w[unk].sum()), float(w[~unk].sum())
    known_acc = acc & ~unk
    named = float(w[known_acc & trials.correct].sum())
    misnamed = float(w[known_acc & ~trials.correct].sum())
    return OpenSetFigures(
        rule=rule,
        far=float(w[acc & unk].sum()) / max(n_unk, 1.0),
        named=named / max(n_known, 1.0),
        misnamed=misnamed / max(n_known, 1.0),
        rejected=(n_known - named - misnamed) / max(n_known, 1.0),
        n_unknown=int(n_unk),
        n_known=int(n_known),
    )


def pass_rate_bound(passed: int, trials: int, confidence: float = PASS_CONFIDENCE) -> float:
    """The one-sided upper confidence bound (Clopper-Pearson) of a rate seen ``passed`` times
    in ``trials``: 1 when every trial passed or there were none. 0 of 22 gives 0.127 at 95%,
    where add-one smoothing (this function until 6 December 2026) gave 0.042 -- and a margin
    term trusted that strangers rarely pass it: on ORL (30 people x 3 photos, one choice of
    people) the tail bound then let the threshold rise to 0.559 and 10 of 100 strangers in."""
    if trials <= 0 or passed >= trials:
        return 1.0
    from scipy.stats import beta

    return float(beta.ppf(confidence, passed + 1, trials - passed))


def _solve_threshold(
    trials: OpenSetTrials, margin: float, weight: float, spread_ref: float, cap: float, far: float
) -> float:
    """The largest global threshold whose FAR on the unknown trials is <= ``far``."""
    s = np.where(np.isnan(trials.spread_best), spread_ref, trials.spread_best)
    u = trials.d1 - weight * (s - spread_ref)  # accept iff u <= threshold (below the cap)
    with np.errstate(invalid="ignore"):
        passes_margin = trials.d2 - trials.d1 >= margin
    eligible = passes_margin & (trials.d1 <= cap)
    n_unk = float(trials.weight[trials.unknown].sum())
    allowed = math.floor(far * n_unk + 1e-9)
    bad_rows = eligible & trials.unknown
    order = np.argsort(u[bad_rows], kind="stable")
    bad, bad_w = u[bad_rows][order], trials.weight[bad_rows][order]
    t = cap
    if bad_w.sum() > allowed:  # the first unknown whose acceptance would pass the allowance
        bound = bad[int(np.searchsorted(np.cumsum(bad_w), allowed, side="right"))]
        below = u[eligible & (u < bound)]
        t = (bound + below.max()) / 2.0 if below.size else float(np.nextafter(bound, -np.inf))
    if far * n_unk < MIN_TAIL_EVENTS:  # too few unknowns to measure far: extrapolate the tail
        ua = u[trials.unknown & np.isfinite(u)]
        if len(ua) >= 3 and ua.std() > 0:
            # The share passing the margin test among the nearest quarter of the unknowns:
            # the ones the threshold decides about (look-alikes may pass it more often),
            # taken at its upper confidence bound (a few dozen trials say little of it).
            near = trials.unknown & np.isfinite(u) & (u <= np.quantile(ua, 0.25))
            passing = pass_rate_bound(int((passes_margin & near).sum()), int(near.sum()))
            q = min(far / passing, 0.5)
            t = min(t, float(ua.mean() + ua.std(ddof=1) * NormalDist().inv_cdf(q)))
    return float(min(t, cap))


def calibrate_rule(
    vectors: np.ndarray,
    labels: Sequence[Any] | np.ndarray,
    *,
    far: float,
    cap: float,
    scale: float,
    margins: Sequence[float] = MARGIN_GRID,
    spread_weights: Sequence[float] = SPREAD_WEIGHTS,
    rounds: int = BOOTSTRAP_ROUNDS,
    seed: int = BOOTSTRAP_SEED,
) -> OpenSetCalibration:
    """Choose the :class:`DecisionRule` for open-set identification (module docstring).

    ``cap``: the pairwise verification threshold at ``far``; ``scale``: the median impostor
    distance (``margins`` are fractions of it, so the grid suits any embedder's scale);
    ``rounds``: bootstrap resamples of the identities (0: none, no uncertainty figures)."""
    if not 0 < far < 1:
        raise DataError(f"far must be between 0 and 1, got {far}")
    _, codes = _codes(labels)
    counts = np.bincount(codes)
    if len(counts) < 3 or counts.max() < 2:
        raise DataError(
            f"calibration needs at least 3 people and one with 2 faces or more, got "
            f"{len(counts)} people with at most {counts.max() if len(counts) else 0} faces each"
        )
    trials = simulate_open_set(vectors, labels)
    x = np.asarray(vectors, dtype=np.float64)
    order = np.argsort(codes, kind="stable")
    starts = np.r_[0, np.cumsum(counts)[:-1]].astype(np.int64)
    spreads = template_spread(x[order], starts)
    spread_ref = float(np.nanmedian(spreads)) if np.isfinite(spreads).any() else 0.0
    weights = list(spread_weights) if np.isfinite(spreads).any() else [0.0]

    def best_for(margin_grid: Sequence[float], weight_grid: Sequence[float]) -> OpenSetFigures:
        best: tuple[Any, ...] | None = None
        for wi, wgt in enumerate(weight_grid):
            for mi, m in enumerate(margin_grid):
                m_abs = float(m) * scale
                t = _solve_threshold(trials, m_abs, float(wgt), spread_ref, cap, far)
                rule = DecisionRule(
                    threshold=t,
                    margin=m_abs,
                    spread_weight=float(wgt),
                    spread_ref=spread_ref if wgt else 0.0,
                    cap=cap,
                )
                fig = evaluate_rule(rule, trials)
                if fig.far > far + 1e-12:  # rounding at the boundary: never report a breach
                    continue
                key = (fig.named, -fig.misnamed, -mi, -wi)
                if best is None or key > best[0]:
                    best = (key, fig)
        if best is None:  # unreachable: margin 0 / weight 0 solves below every unknown
            raise DataError("calibration found no rule meeting the target FAR")
        return best[1]

    chosen = best_for(margins, weights)
    plain = best_for([0.0], [0.0])
    has_term = chosen.rule.margin > 0 or chosen.rule.spread_weight > 0
    resamples = _identity_resamples(trials, rounds, seed)

    def solved(sub: OpenSetTrials, rule: DecisionRule) -> DecisionRule:
        t = _solve_threshold(sub, rule.margin, rule.spread_weight, rule.spread_ref, cap, far)
        return DecisionRule(t, rule.margin, rule.spread_weight, rule.spread_ref, cap)

    support = None
    if has_term and resamples:
        wins = 0
        for inbag, _ in resamples:
            sub = trials.select(inbag)
            term = evaluate_rule(solved(sub, chosen.rule), sub).named
            wins += term > evaluate_rule(solved(sub, plain.rule), sub).named
        support = wins / len(resamples)
    kept = has_term and chosen.named >= plain.named + MIN_GAIN
    kept = kept and (support is None or support >= KEEP_SHARE)
    if not kept:  # within the noise, or not on other draws of the people: the simpler rule
        chosen = plain
    uncertainty = _uncertainty(trials, chosen.rule, resamples, solved, far, support, kept)
    plain = copy.copy(plain)
    plain.rule = DecisionRule(threshold=plain.rule.threshold)  # a plain threshold has no cap
    default = evaluate_rule(DecisionRule(), trials)
    return OpenSetCalibration(
        rule=chosen.rule,
        chosen=chosen,
        plain=plain,
        default=default,
        target_far=far,
        grid={"margins": [float(m) * scale for m in margins], "spread_weights": weights},
        uncertainty=uncertainty,
    )


def _identity_resamples(
    trials: OpenSetTrials, rounds: int, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``rounds`` bootstrap draws of the probe identities: (rows of the people drawn, with
    repeats; rows of the people not drawn). Empty without identities to resample."""
    if trials.person is None or rounds <= 0:
        return []
    people = np.unique(trials.person)
    if len(people) < 3:
        return []
    order = np.argsort(trials.person, kind="stable")
    bounds = np.searchsorted(trials.person[order], people)
    rows = np.split(order, bounds[1:])
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(rounds):
        drawn = rng.integers(0, len(people), len(people))
        inbag = np.concatenate([rows[i] for i in drawn])
        left = np.setdiff1d(np.arange(len(people)), drawn)
        oob = np.concatenate([rows[i] for i in left]) if len(left) else np.zeros(0, np.int64)
        out.append((inbag, oob))
    return out


def _interval(values: Sequence[float]) -> tuple[float, float, float]:
    if not len(values):
        return (math.nan, math.nan, math.nan)
    lo, hi = (1 - INTERVAL) / 2, 1 - (1 - INTERVAL) / 2
    v = np.asarray(values, dtype=np.float64)
    return (float(np.median(v)), float(np.quantile(v, lo)), float(np.quantile(v, hi)))


def _uncertainty(
    trials: OpenSetTrials,
    rule: DecisionRule,
    resamples: list[tuple[np.ndarray, np.ndarray]],
    solved: Any,
    far: float,
    support: float | None,
    kept: bool,
) -> Uncertainty:
    """Out-of-bag figures of ``rule`` (its threshold re-solved on each resample) and whether
    the set can promise ``far``."""
    fars, named = [], []
    for inbag, oob in resamples:
        out = trials.select(oob)
        if not len(oob) or not out.unknown.any():
            continue
        fig = evaluate_rule(solved(trials.select(inbag), rule), out)
        fars.append(fig.far)
        if (~out.unknown).any():
            named.append(fig.named)
    n_people = len(np.unique(trials.person)) if trials.person is not None else trials.n_people
    n_unknown = int(trials.weight[trials.unknown].sum())
    far_iv, named_iv = _interval(fars), _interval(named)
    needed = math.ceil(3.0 / far)  # the rule of three: none accepted in n -> rate < 3/n (95%)
    reasons = []
    if n_unknown < needed:
        reasons.append(
            f"{n_unknown} stranger trials from {n_people} people can show a rate below "
            f"{min(3.0 / max(n_unknown, 1), 1.0):.1%} at best (showing {far:.1%} takes "
            f"{needed} or more)"
        )
    if math.isfinite(far_iv[0]) and far_iv[0] > far:
        reasons.append(
            f"on people left out of resamples it accepted {far_iv[0]:.1%} of strangers "
            f"(median; {INTERVAL:.0%} interval {far_iv[1]:.1%}-{far_iv[2]:.1%})"
        )
    warning = None
    if reasons:
        warning = (
            f"too small to promise FAR {far:g}: " + "; ".join(reasons) + ". Calibrate on "
            "photos of more people before relying on the false-accept rate."
        )
    return Uncertainty(
        rounds=len(resamples),
        n_people=n_people,
        n_unknown=n_unknown,
        far=far_iv,
        named=named_iv,
        term_support=support,
        term_kept=kept,
        promised=not reasons,
        warning=warning,
    )
