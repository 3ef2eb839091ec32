"""Review tests of the robust bounds: known small chains / MDPs whose true answer is known by hand.

* Storm's bounded reachability equals a hand-written value iteration (``k = 0`` included) and the
  initial-distribution weighting;
* an action never tried in the counts must not drop out of the robust MDP bounds (``unseen``):
  ``Pmax`` upper bound >= the true maximum, ``Pmin`` lower bound <= the true minimum.
"""

from __future__ import annotations

import numpy as np
import pytest

from planning.verify.intervals import IntervalModel, robust_check
from planning.verify.model import CountModel, ExplicitModel
from planning.verify.reference import interval_bounded_reach
from planning.verify.storm import check

# 0 -> {0: .5, 1: .3, 2: .2}; 1 -> {0: .4, 2: .1, 3: .5}; 2 lava, 3 goal (absorbing)
CHAIN = np.array([[.5, .3, .2, 0], [.4, 0, .1, .5], [0, 0, 1, 0], [0, 0, 0, 1]])
CHAIN_LABELS = {"lava": np.array([0, 0, 1, 0], bool), "goal": np.array([0, 0, 0, 1], bool)}


def hand_bounded(P: np.ndarray, target: np.ndarray, k: int) -> np.ndarray:
    """``P(F<=k target)`` per state by ``k`` backward sweeps written out by hand (independent of the reference)."""
    v = target.astype(float)
    for _ in range(k):
        v = np.array([1.0 if target[s] else sum(P[s, j] * v[j] for j in range(len(v))) for s in range(len(v))])
    return v


@pytest.mark.parametrize("k", [0, 1, 2, 5, 40])
def test_storm_bounded_reach_equals_hand_value_iteration(k):
    init = np.array([0.25, 0.75, 0.0, 0.0])
    got = check(ExplicitModel.dtmc(CHAIN, CHAIN_LABELS, init), f'P=? [F<={k} "lava"]')
    want = init @ hand_bounded(CHAIN, CHAIN_LABELS["lava"], k)
    assert got.probability == pytest.approx(want, abs=1e-12)
    if k == 1:
        assert want == pytest.approx(0.25 * 0.2 + 0.75 * 0.1)          # by hand


def test_all_safe_model_and_unreachable_states():
    labels = {"lava": np.zeros(4, bool), "goal": CHAIN_LABELS["goal"]}
    assert check(ExplicitModel.dtmc(CHAIN, labels), 'P=? [F "lava"]').probability == 0.0
    # state 2 (lava) is unreachable from state 3: its value does not leak into the initial state's
    assert check(ExplicitModel.dtmc(CHAIN, CHAIN_LABELS, np.eye(1, 4, 3).ravel()), 'P=? [F "lava"]').probability == 0.0


# MDP: state 0 (start), 1 lava, 2 goal. Action 0 (counted 40 times): 0 -> 0 w.p. 1/2, -> goal w.p. 1/2.
# Action 1 was NEVER tried; in truth it goes to lava (for Pmax) -- or to goal (for Pmin, see below).
MDP_LABELS = {"lava": np.array([0, 1, 0], bool), "goal": np.array([0, 0, 1], bool), "safe": np.zeros(3, bool)}


def _never_tried_action_counts() -> CountModel:
    return CountModel.from_transitions([0] * 40, [0] * 40, [0] * 20 + [2] * 20, 3, 2, MDP_LABELS,
                                       np.array([1.0, 0.0, 0.0]))


@pytest.mark.parametrize("k", [1, 5])
def test_pmax_upper_bound_covers_an_action_never_tried(k):
    counts = _never_tried_action_counts()
    model = IntervalModel.from_counts(counts, 0.95, absorbing=["lava", "goal"], unseen="lava")
    true_pmax = 1.0                                        # action 1 -> lava at once
    upper = robust_check(model, f'Pmax=? [F<={k} "lava"]', "max").probability
    assert upper >= true_pmax - 1e-9                        # old code: 0.11 (k=1), 0.25 (k=5)
    # the new rows are plain interval rows: Storm still equals the numpy reference
    ref = interval_bounded_reach(model.upper, model.lower, model.row_groups, model.labels["lava"], k, "max", "max")
    assert upper == pytest.approx(model.initial_distribution @ ref, abs=1e-9)


def test_pmin_lower_bound_covers_an_action_never_tried():
    # the same counts, but now action 0 leads to lava and the untried action 1 (in truth) to goal: Pmin = 0
    counts = CountModel.from_transitions([0] * 40, [0] * 40, [0] * 20 + [1] * 20, 3, 2, MDP_LABELS,
                                         np.array([1.0, 0.0, 0.0]))
    model = IntervalModel.from_counts(counts, 0.95, absorbing=["lava", "goal"], unseen="safe")
    lower = robust_check(model, 'Pmin=? [F<=5 "lava"]', "min").probability
    assert lower <= 0.0 + 1e-9                              # old code: 0.68


def test_unseen_keeps_counted_actions_and_refuses_nothing_without_it():
    counts = _never_tried_action_counts()
    plain = IntervalModel.from_counts(counts, 0.95, absorbing=["lava", "goal"])
    loose = IntervalModel.from_counts(counts, 0.95, absorbing=["lava", "goal"], unseen="lava")
    assert np.diff(plain.row_groups).tolist() == [1, 1, 1]              # support assumption: counted actions only
    assert np.diff(loose.row_groups).tolist() == [2, 1, 1, 1]           # + the untried action, + the sink
    blind = loose.upper[[1]].toarray().ravel()                          # state 0's second choice
    assert blind.tolist() == [0, 0, 0, 1] and loose.labels["lava"][3]
