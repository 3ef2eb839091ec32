"""Interval models from counts: Clopper-Pearson intervals, Storm's robust check vs the numpy reference,
and the robust upper bound against the true model that generated the counts."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.stats import binomtest

from planning.verify.intervals import (IntervalModel, clopper_pearson, empirical_rate, robust_check,
                                       robust_state_values)
from planning.verify.model import CountModel
from planning.verify.result import PropertyReport
from planning.verify.reference import interval_bounded_reach, interval_unbounded_reach, unbounded_reach
from planning.verify.storm import check
from planning.verify.validate import VerifyError

S, A = 14, 2


def true_model(seed: int = 0) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``P[s a s']`` with 2-3 successors per (s, a), absorbing lava (state 0) and goal (state 1);
    every other state can step to lava or goal, so reachability probabilities are non-trivial."""
    rng = np.random.default_rng(seed)
    P = np.zeros((S, A, S))
    for s in range(2, S):
        for a in range(A):
            succ = np.concatenate([[rng.integers(0, 2)], rng.choice(np.arange(2, S), 2, replace=False)])
            P[s, a, succ] = 0.1 + 0.7 * rng.dirichlet(np.ones(3))      # every probability >= 0.1
    P[0, :, 0] = P[1, :, 1] = 1.0
    labels = {"lava": np.eye(1, S, 0, dtype=bool).ravel(), "goal": np.eye(1, S, 1, dtype=bool).ravel()}
    return P, labels


def draw_counts(P: np.ndarray, labels: dict, n: int, rng: np.random.Generator) -> CountModel:
    """``n`` samples of every non-terminal (s, a)."""
    counts = np.zeros_like(P)
    for s in range(2, S):
        for a in range(A):
            counts[s, a] = rng.multinomial(n, P[s, a])
    return CountModel(sp.csr_array(counts.reshape(S * A, S)), A, labels)


def test_clopper_pearson_matches_scipy_binomtest():
    for k, n in [(0, 10), (3, 10), (10, 10), (17, 250), (1, 1)]:
        lo, hi = clopper_pearson(k, n, 0.9)
        ci = binomtest(k, n).proportion_ci(confidence_level=0.9, method="exact")
        assert (float(lo), float(hi)) == pytest.approx((ci.low, ci.high), abs=1e-12)


def test_bonferroni_split_over_all_intervals():
    counts = CountModel(sp.csr_array(np.array([[0, 30, 70], [0, 0, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0]],
                                              dtype=float)), 2, {"lava": np.array([False, False, True]),
                                                                  "goal": np.array([False, True, False])})
    model = IntervalModel.from_counts(counts, confidence=0.9, policy=np.array([[1, 0], [1, 0], [1, 0]]),
                                      absorbing=["lava", "goal"])
    lo, hi = clopper_pearson(np.array([30, 70]), 100, 1 - 0.1 / 2)     # two intervals share alpha = 0.1
    row0 = slice(model.upper.indptr[0], model.upper.indptr[1])
    np.testing.assert_allclose(model.lower[row0], lo)
    np.testing.assert_allclose(model.upper.data[row0], hi)


@pytest.mark.parametrize("policy", [True, False])
@pytest.mark.parametrize("nature", ["max", "min"])
def test_storm_robust_values_equal_reference_interval_iteration(policy, nature):
    P, labels = true_model(1)
    counts = draw_counts(P, labels, 80, np.random.default_rng(1))
    pi = np.random.default_rng(2).dirichlet(np.ones(A), size=S) if policy else None
    model = IntervalModel.from_counts(counts, 0.95, policy=pi, absorbing=["lava", "goal"])
    lava = model.labels["lava"]
    for direction in ["max", "min"]:
        op = f"P{direction}" if not policy else "P"
        got, _, _ = robust_state_values(model, f'{op}=? [F "lava"]', nature)
        ref = interval_unbounded_reach(model.upper, model.lower, model.row_groups, lava, nature, direction)
        np.testing.assert_allclose(got, ref, atol=1e-6)
        got, lower, upper = robust_state_values(model, f'{op}=? [F<=6 "lava"]', nature)
        ref = interval_bounded_reach(model.upper, model.lower, model.row_groups, lava, 6, nature, direction)
        np.testing.assert_allclose(got, ref, atol=1e-6)


def _true_and_point(P, labels, counts, pi):
    true = unbounded_reach(sp.csr_array(np.einsum("sa,sat->st", pi, P)), np.arange(S + 1), labels["lava"])
    point = check(counts.to_dtmc(pi, absorbing=["lava", "goal"]), 'P=? [F "lava"]')
    return true, point


def test_robust_upper_bound_covers_truth_and_point_estimate():
    P, labels = true_model(0)
    pi = np.full((S, A), 0.5)
    init = np.zeros(S)
    init[2:] = 1 / (S - 2)
    rng = np.random.default_rng(0)
    covered = 0
    for _ in range(20):
        counts = draw_counts(P, labels, 60, rng)
        counts = CountModel(counts.counts, A, labels, init)
        true, point = _true_and_point(P, labels, counts, pi)
        upper = robust_check(IntervalModel.from_counts(counts, 0.95, policy=pi, absorbing=["lava", "goal"]),
                             'P=? [F "lava"]').probability
        assert upper >= point.probability - 1e-9                  # the point estimate lies inside the intervals
        covered += upper >= init @ true
    assert covered >= 19                                          # joint 95% (Bonferroni: in practice all)


def test_robust_upper_bound_shrinks_as_counts_grow():
    P, labels = true_model(0)
    pi = np.full((S, A), 0.5)
    true = unbounded_reach(sp.csr_array(np.einsum("sa,sat->st", pi, P)), np.arange(S + 1), labels["lava"])[5]
    rng = np.random.default_rng(4)
    gaps = []
    for n in (30, 300, 3000):
        counts = draw_counts(P, labels, n, rng)
        counts = CountModel(counts.counts, A, labels, np.eye(1, S, 5).ravel())
        upper = robust_check(IntervalModel.from_counts(counts, 0.95, policy=pi, absorbing=["lava", "goal"]),
                             'P=? [F "lava"]').probability
        gaps.append(upper - true)
    assert gaps[0] > gaps[1] > gaps[2] > 0
    assert gaps[2] < 0.25 * gaps[0]


def test_unseen_successors_make_the_bound_more_conservative():
    P, labels = true_model(0)
    pi = np.full((S, A), 0.5)
    counts = draw_counts(P, labels, 200, np.random.default_rng(5))
    counts = CountModel(counts.counts, A, labels, np.eye(1, S, 5).ravel())
    plain = IntervalModel.from_counts(counts, 0.95, policy=pi, absorbing=["lava", "goal"])
    loose = IntervalModel.from_counts(counts, 0.95, policy=pi, absorbing=["lava", "goal"], unseen="lava")
    assert loose.num_states == S + 1
    b_plain = robust_check(plain, 'P=? [F<=10 "lava"]').probability
    b_loose = robust_check(loose, 'P=? [F<=10 "lava"]').probability
    assert b_loose > b_plain


def test_interval_validation():
    upper = sp.csr_array(np.array([[0.5, 0.6], [0.0, 1.0]]))
    ok = IntervalModel(upper, np.array([0.4, 0.4, 1.0]), np.arange(3), {"lava": np.array([False, True])})
    assert robust_check(ok, 'P=? [F "lava"]').probability == pytest.approx(1.0, abs=1e-6)   # lava is certain
    for lower, match in [(np.array([0.7, 0.4, 1.0]), "0 <= lower <= upper"),
                         (np.array([0.5, 0.6, 1.0]), "admits no distribution"),
                         (np.array([0.0, 0.4, 1.0]), "positive")]:
        bad = IntervalModel(upper, lower, np.arange(3), {"lava": np.array([False, True])})
        with pytest.raises(VerifyError, match=match):
            robust_check(bad, 'P=? [F "lava"]')


def test_empirical_rate():
    emp = empirical_rate(30, 1000, 0.99)
    assert emp.rate == 0.03 and emp.lower < 0.03 < emp.upper and emp.contains(0.03)


def test_property_report_matches_the_summary_schema():
    report = PropertyReport('P=? [F<=20 "lava"]', "cem", 0.12, 0.2, empirical_rate(10, 100), 40)
    row = report.to_dict()
    assert set(row) == {"property", "policy", "probability", "upper_bound", "empirical", "states"}
    assert row["empirical"]["episodes"] == 100 and row["empirical"]["lower"] < 0.1 < row["empirical"]["upper"]
    assert PropertyReport("p", "x", 0.1, None, None, 3).to_dict()["empirical"] is None
