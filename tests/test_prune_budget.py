"""The accuracy budget of ``vitrina optimize --prune-max-drop``: which targets are tried, in
what order, when the search stops, and what it reports (fake builds and judges here; the
real ones in test_pruning.py)."""

from __future__ import annotations

import itertools

import pytest

from vitrina.errors import VitrinaError
from vitrina.optimize.budget import (
    MIN_PRUNE,
    PRUNE_STEP,
    Judgement,
    _targets,
    change,
    check_max_drop,
    prune_within,
)


def fake_search(drop_at: dict[float, float], first: float, budget: float):
    """Run the search with a build that records the targets and a judge whose worst drop
    (on ``rescaled``; clean loses half of it) is ``drop_at[target]``."""
    built: list[float] = []
    stages: list[str] = []

    def build(target: float) -> str:
        built.append(target)
        return f"variant-{target:.1f}"

    def judge(target: float, max_drop: float) -> Judgement:
        d = drop_at[round(target, 1)]
        return Judgement(target, {"clean": d / 2, "rescaled": d}, max_drop)

    result, tried = prune_within(build, judge, first, budget, stages.append)
    return built, result, tried, stages


def test_the_search_steps_down_until_the_budget_holds() -> None:
    built, result, tried, stages = fake_search({0.5: 2.8, 0.4: 1.6, 0.3: 0.8, 0.2: 0.1}, 0.5, 1.0)
    assert built == pytest.approx([0.5, 0.4, 0.3])  # stops at the first that holds
    assert result == "variant-0.3"  # the last one built is the one on disk
    assert [j.held for j in tried] == [False, False, True]
    assert tried[-1].worst == ("rescaled", 0.8)
    assert "over the budget of 1" in stages[0] and "within the budget of 1" in stages[-1]
    assert "rescaled -2.8" in stages[0]


def test_a_target_that_holds_at_once_is_built_once() -> None:
    built, result, tried, _ = fake_search({0.5: 0.4}, 0.5, 1.0)
    assert built == [0.5] and result == "variant-0.5" and tried[0].held


def test_a_budget_nothing_meets_stops_at_the_smallest_target_and_says_so() -> None:
    built, result, tried, _ = fake_search({t / 10: 3.0 for t in range(1, 6)}, 0.5, 1.0)
    assert built == pytest.approx([0.5, 0.4, 0.3, 0.2, 0.1])
    assert min(built) >= MIN_PRUNE - 1e-9 and not tried[-1].held
    assert result == "variant-0.1"


def test_a_drop_exactly_at_the_budget_holds_and_a_gain_is_no_drop() -> None:
    assert Judgement(0.5, {"clean": 1.0}, 1.0).held
    gain = Judgement(0.5, {"clean": -0.5, "relit": 0.2}, 1.0)
    assert gain.held and gain.worst == ("relit", 0.2)
    assert "clean +0.5" in gain.describe()  # a gain prints as a gain
    d = gain.to_dict()
    assert d["held"] and d["worst"] == "relit" and d["target"] == 0.5


@pytest.mark.parametrize(
    ("first", "expected"),
    [(0.5, [0.5, 0.4, 0.3, 0.2, 0.1]), (0.15, [0.15]), (0.35, [0.35, 0.25, 0.15]), (0.1, [0.1])],
)
def test_targets_step_down_by_a_tenth_and_never_below_the_minimum(
    first: float, expected: list[float]
) -> None:
    got = _targets(first)
    assert got == pytest.approx(expected)
    assert all(a - b == pytest.approx(PRUNE_STEP) for a, b in itertools.pairwise(got))


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_a_budget_must_be_a_positive_number_of_points(bad: float) -> None:
    with pytest.raises(VitrinaError, match="--prune-max-drop is the accuracy"):
        check_max_drop(bad, pruning=True)


def test_a_budget_without_the_pruned_variant_is_refused() -> None:
    with pytest.raises(VitrinaError, match="add pruned to --variants"):
        check_max_drop(1.0, pruning=False)
    check_max_drop(None, pruning=False)  # no budget: nothing to check


@pytest.mark.parametrize(
    ("drop", "printed"),
    [(1.25, "-1.2"), (2.0, "-2.0"), (-0.5, "+0.5"), (0.0, "+0.0"), (0.03, "+0.0"), (-0.04, "+0.0")],
)
def test_a_drop_prints_as_a_signed_change_and_never_minus_zero(drop: float, printed: str) -> None:
    assert change(drop) == printed
