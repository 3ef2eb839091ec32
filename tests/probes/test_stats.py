"""Episode-cluster bootstrap: coverage, clustering, determinism, degenerate resamples, seeds."""

from __future__ import annotations

import math
from dataclasses import FrozenInstanceError

import numpy as np
import pytest
import torch

from probes.metrics import AUROC
from probes.stats import (
    Estimate,
    SumDecomposable,
    bootstrap,
    bootstrap_paired_difference,
    bootstrap_seeds,
    combine_seeds,
    draw_counts,
)


class Mean(SumDecomposable):
    """Batched mean, for testing the fast path against a plain callable."""

    def __call__(self, y):
        return float(np.mean(y))

    def row_stats(self, y):
        return np.stack([np.ones(len(y)), np.asarray(y, dtype=np.float64)], axis=1)

    def finish(self, totals, full):
        return totals[..., 1] / totals[..., 0]


def clustered(rng, n_groups=30, per_group=10, mu=1.0, sd_group=1.0, sd_step=1.0):
    """y = mu + episode effect + step noise; the episode effect makes steps of an episode correlated."""
    groups = np.repeat(np.arange(n_groups), per_group)
    y = mu + rng.normal(0, sd_group, n_groups)[groups] + rng.normal(0, sd_step, len(groups))
    return y, groups


def test_cluster_bootstrap_covers_the_true_mean_at_about_the_nominal_rate():
    rng = np.random.default_rng(0)
    hits = []
    for rep in range(400):  # binomial s.e. of the coverage ~0.012; measured 0.936 over 1000 reps
        y, groups = clustered(rng)
        est = bootstrap(Mean(), y, groups=groups, n_boot=400, level=0.95, seed=rep)
        hits.append(est.contains(1.0))
    coverage = np.mean(hits)
    assert 0.88 <= coverage <= 0.99, coverage


def test_iid_bootstrap_on_clustered_data_undercovers_and_is_narrower():
    rng = np.random.default_rng(1)
    hits_iid, ratios = [], []
    for rep in range(100):
        y, groups = clustered(rng)
        cl = bootstrap(Mean(), y, groups=groups, n_boot=300, seed=rep)
        iid = bootstrap(Mean(), y, groups=np.arange(len(y)), n_boot=300, seed=rep)
        hits_iid.append(iid.contains(1.0))
        ratios.append((cl.upper - cl.lower) / (iid.upper - iid.lower))
    # design effect 1 + (m - 1) * ICC = 1 + 9 * 0.5 = 5.5 -> width ratio about sqrt(5.5) = 2.3
    assert 1.8 < np.median(ratios) < 2.9, np.median(ratios)
    assert np.mean(hits_iid) < 0.8


def test_generic_path_sees_the_same_resamples_as_the_batched_path():
    rng = np.random.default_rng(2)
    y, groups = clustered(rng, n_groups=12, per_group=7)
    groups = np.random.default_rng(0).permutation(groups) * 3 + 100  # unsorted, non-contiguous ids
    fast = bootstrap(Mean(), y, groups=groups, n_boot=200, seed=5)
    slow = bootstrap(lambda a: float(np.mean(a)), y, groups=groups, n_boot=200, seed=5)
    assert fast.estimate == pytest.approx(slow.estimate, abs=1e-12)
    assert (fast.lower, fast.upper) == pytest.approx((slow.lower, slow.upper), abs=1e-12)
    assert fast.n_groups == 12 and fast.n_boot == 200


def test_deterministic_under_seed_and_accepts_torch():
    rng = np.random.default_rng(3)
    y, groups = clustered(rng)
    a = bootstrap(Mean(), y, groups=groups, seed=7)
    b = bootstrap(Mean(), torch.as_tensor(y), groups=torch.as_tensor(groups), seed=7)
    c = bootstrap(Mean(), y, groups=groups, seed=8)
    assert a == b
    assert (a.lower, a.upper) != (c.lower, c.upper)
    with pytest.raises(FrozenInstanceError):
        a.estimate = 0.0  # type: ignore[misc]


def test_draw_counts_sum_to_the_number_of_groups():
    counts = draw_counts(17, 50, seed=0)
    assert counts.shape == (50, 17) and np.all(counts.sum(axis=1) == 17)


def test_degenerate_resamples_are_skipped_and_counted():
    rng = np.random.default_rng(4)
    groups = np.repeat(np.arange(4), 25)
    y = (groups == 0).astype(np.int64)  # positives only in episode 0
    score = rng.random(100) + y
    est = bootstrap(AUROC(2), y, score, groups=groups, n_boot=500, seed=0)
    # P(episode 0 absent) = (3/4)^4 = 0.32, and those resamples have no positives
    assert 0.2 < est.n_skipped / 500 < 0.45
    assert math.isfinite(est.lower) and est.lower <= est.estimate <= est.upper


def test_paired_difference_of_a_metric_with_itself_is_exactly_zero():
    rng = np.random.default_rng(5)
    y, groups = clustered(rng)
    d = bootstrap_paired_difference(Mean(), (y,), Mean(), (y,), groups=groups, n_boot=100)
    assert (d.estimate, d.lower, d.upper) == (0.0, 0.0, 0.0)
    shifted = bootstrap_paired_difference(Mean(), (y + 0.5,), Mean(), (y,), groups=groups, n_boot=100)
    assert shifted.lower == pytest.approx(0.5) and shifted.upper == pytest.approx(0.5)


def test_bootstrap_seeds_reduces_to_bootstrap_when_seeds_agree_and_widens_when_they_do_not():
    rng = np.random.default_rng(6)
    y, groups = clustered(rng)
    one = bootstrap(Mean(), y, groups=groups, n_boot=300, seed=0)
    same = bootstrap_seeds(Mean(), [(y,), (y,), (y,)], groups=[groups] * 3, n_boot=300, seed=0)
    assert same.estimate == pytest.approx(one.estimate)
    assert (same.lower, same.upper) == pytest.approx((one.lower, one.upper))
    spread = bootstrap_seeds(Mean(), [(y - 1,), (y,), (y + 1,)], groups=[groups] * 3, n_boot=300, seed=0)
    assert spread.estimate == pytest.approx(one.estimate)
    assert spread.upper - spread.lower > 1.5 * (one.upper - one.lower)


def test_combine_seeds_matches_the_stated_normal_rule():
    z = 1.959963984540054
    ests = [Estimate(0.7, 0.7 - z * 0.01, 0.7 + z * 0.01), Estimate(0.8, 0.8 - z * 0.02, 0.8 + z * 0.02)]
    out = combine_seeds(ests)
    se = math.sqrt(np.var([0.7, 0.8], ddof=1) / 2 + (0.01**2 + 0.02**2) / 2)
    assert out.estimate == pytest.approx(0.75)
    assert (out.lower, out.upper) == pytest.approx((0.75 - z * se, 0.75 + z * se), rel=1e-6)
    assert out.n_groups == 2


def test_errors_say_what_was_expected_and_what_arrived():
    with pytest.raises(ValueError, match=r"groups must have shape \(10,\)"):
        bootstrap(Mean(), np.zeros(10), groups=np.zeros(9))
    with pytest.raises(ValueError, match="share their first axis"):
        bootstrap(lambda a, b: 0.0, np.zeros(10), np.zeros(9), groups=np.zeros(10))
    with pytest.raises(ValueError, match="level must lie in"):
        bootstrap(Mean(), np.zeros(10), groups=np.zeros(10), level=95)


def test_ece_is_reported_bias_corrected_and_its_interval_covers_a_calibrated_predictor():
    """A perfectly calibrated predictor has ECE 0, but the plug-in value on finite data is > 0 and a
    percentile interval sits above it; the bias-corrected estimate and basic interval move toward 0."""
    from probes.metrics import ECE
    from probes.stats import percentile_interval, resample_values, draw_counts, group_codes

    rng = np.random.default_rng(0)
    n = 600
    p = rng.uniform(0, 1, n)
    y = (rng.uniform(0, 1, n) < p).astype(np.int64)  # calibrated by construction: true ECE = 0
    groups = np.repeat(np.arange(60), 10)
    proba = np.stack([1 - p, p], 1)
    metric = ECE(2)
    plug_in = metric(y, proba)
    est = bootstrap(metric, y, proba, groups=groups, n_boot=400, seed=1)
    codes, g = group_codes(groups, n)
    raw = resample_values(metric, [y, proba], codes, draw_counts(g, 400, 1))
    raw_lo, _, _ = percentile_interval(raw, 0.95)
    assert plug_in > 0.01 and raw.mean() > plug_in  # the resamples are biased upward again
    assert est.estimate < plug_in and est.lower < raw_lo  # corrected toward the true value 0
    assert raw_lo > 0.02 and est.lower <= 0.02  # the percentile interval excludes the truth; the basic one does not
    assert est.lower <= est.estimate <= est.upper
