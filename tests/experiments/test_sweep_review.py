"""Review of the sweep aggregation against independent references: the interval over seeds is scipy's Student t
interval with n - 1 degrees of freedom (n = 2 and 3 seeds); the aggregate does not depend on the order of the runs
(the ontology's tie-break used to follow it); the open-loop metric of the runs is carried (it was always "accuracy")."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from experiments.sweep import T_OVER_SEEDS, aggregate, seed_interval


def est(v, lo, hi):
    return {"estimate": v, "ci_low": lo, "ci_high": hi}


def run(group, seed, acc, choice=("linear", "deter"), metric="accuracy"):
    probes = [{"method": "linear", "site": "deter", "concept": "has_key", "split": "test",
               "metric": "balanced_accuracy", **est(acc, acc - 0.05, acc + 0.05)}]
    return {"group": group, "seed": seed, "summary": {
        "probes": probes, "ontology": {"has_key": {"method": choice[0], "site": choice[1]}},
        "planning": [{"planner": "cem", "model": "learned", "reward": "latent", "probe_method": "linear",
                      "success_rate": est(acc, 0.0, 1.0)}],
        "dynamics": {"open_loop": {"metric": metric, "model": {"1": est(acc / 10, 0.0, 1.0)}}}}}


@pytest.mark.parametrize("values", [[0.8, 0.9], [0.8, 0.9, 0.7], [0.61, 0.62, 0.75, 0.7]])
def test_seed_interval_is_scipys_t_interval_with_n_minus_1_dof(values):
    n = len(values)
    lo, hi = stats.t.interval(0.95, n - 1, loc=np.mean(values), scale=stats.sem(values))
    mean, low, high = seed_interval(values)
    assert (mean, low, high) == pytest.approx((np.mean(values), lo, hi))
    agg = aggregate([run("g", s, v) for s, v in enumerate(values)])
    [row] = agg["probes"]
    assert (row["estimate"], row["ci_low"], row["ci_high"], row["n_seeds"]) == pytest.approx((np.mean(values), lo, hi, n))
    assert row["sd"] == pytest.approx(np.std(values, ddof=1)) and row["interval"] == T_OVER_SEEDS
    assert agg["planning"][0]["success_rate"]["ci_low"] == pytest.approx(lo)


def test_two_seed_interval_uses_t_with_one_degree_of_freedom_not_a_normal_quantile():
    mean, lo, hi = seed_interval([0.0, 1.0])
    # sd = sqrt(0.5), sem = 0.5, t(0.975, 1) = 12.706 (a z interval would be 0.5 +- 0.98)
    assert hi - mean == pytest.approx(12.706204736174698 * 0.5)
    assert math.isclose(mean, 0.5)


def test_aggregate_does_not_depend_on_the_order_of_the_runs():
    """Two seeds that disagree on the ontology's choice: the tie used to go to whichever run came first, so
    ``seeds=[1,0]`` and ``seeds=[0,1]`` gave different sites (and so different leaderboard rows) for the same runs."""
    runs = [run("g", 0, 0.8, ("linear", "deter")), run("g", 1, 0.9, ("mlp", "stoch"))]
    forward, backward = aggregate(runs), aggregate(runs[::-1])
    assert forward["ontology"] == backward["ontology"]
    assert forward["ontology"]["g"]["has_key"] == {"method": "linear", "site": "deter", "votes": 2}  # the lowest seed's
    assert forward["probes"] == backward["probes"]
    # a real majority still wins, whatever the order
    runs3 = [run("g", 0, 0.8, ("linear", "deter")), run("g", 1, 0.9, ("mlp", "stoch")), run("g", 2, 0.7, ("mlp", "stoch"))]
    for order in (runs3, runs3[::-1], [runs3[1], runs3[0], runs3[2]]):
        assert aggregate(order)["ontology"]["g"]["has_key"] == {"method": "mlp", "site": "stoch", "votes": 3}


def test_open_loop_metric_of_the_runs_is_kept():
    """A vector world's open-loop numbers are mean squared errors; the aggregate used to label them accuracy."""
    agg = aggregate([run("pm", s, 0.5 + s / 10, metric="mse") for s in range(3)] + [run("lkd", 0, 0.9)])
    assert agg["open_loop"]["pm"]["metric"] == "mse"
    assert agg["open_loop"]["lkd"]["metric"] == "accuracy"
    assert agg["open_loop"]["pm"]["model"]["1"]["n_seeds"] == 3
