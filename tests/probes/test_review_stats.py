"""Correctness review of the reported statistics (session 8): each test pins a bug that was fixed, or a reference
value (scikit-learn, scipy, torchmetrics, the papers) that a future edit must keep."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn import metrics as skm

from probes.codelength import coded_concept
from probes.control import control_labels
from probes.mdl import FRACTIONS, block_ends, online_codelength
from probes.metrics import ECE, R2, BalancedAccuracy, MacroF1, concept_estimates
from probes.stats import bootstrap, bootstrap_paired_difference, bootstrap_seeds, clopper_pearson
from worlds.concepts import Concept


def _calibrated(seed: int = 1, episodes: int = 30, per: int = 10):
    rng = np.random.default_rng(seed)
    p = rng.random(episodes * per)
    return (rng.random(p.size) < p).astype(np.int64), p, np.repeat(np.arange(episodes), per)


# ------------------------------------------------------------------------------------------- fixed bugs
def test_several_probe_seeds_report_ece_bias_corrected_like_one_seed():
    """Two identical probe seeds must report what one seed reports. Before the fix bootstrap_seeds gave the plug-in
    ECE with a percentile interval (0.038 [0.039, 0.105]: the interval did not even hold the estimate) where
    bootstrap gave the bias-corrected 0.008 [0, 0.037] -- the harness's ECE rows changed meaning with len(seeds)."""
    y, p, g = _calibrated()
    one = bootstrap(ECE(2), y, p, groups=g, n_boot=300)
    two = bootstrap_seeds(ECE(2), [(y, p), (y, p)], groups=[g, g], n_boot=300)
    assert (two.estimate, two.lower, two.upper) == pytest.approx((one.estimate, one.lower, one.upper))
    assert two.lower <= two.estimate <= two.upper


@pytest.mark.parametrize("path", ["bootstrap", "paired", "seeds"])
def test_one_episode_has_no_interval(path):
    """With one episode every resample is the sample itself: the old code reported a zero-width interval
    ([x, x]: certainty) -- the between-episode variation is not estimable, so the bounds are NaN."""
    rng = np.random.default_rng(0)
    a, b, g = rng.normal(size=40), rng.normal(size=40), np.full(40, 7)
    if path == "bootstrap":
        est, point = bootstrap(np.mean, a, groups=g, n_boot=50), a.mean()
    elif path == "paired":
        est, point = bootstrap_paired_difference(np.mean, [a], np.mean, [b], groups=g, n_boot=50), a.mean() - b.mean()
    else:
        est, point = bootstrap_seeds(np.mean, [(a,), (b,)], groups=[g, g], n_boot=50), (a.mean() + b.mean()) / 2
    assert est.estimate == pytest.approx(point) and est.n_groups == 1
    assert math.isnan(est.lower) and math.isnan(est.upper)
    two = bootstrap(np.mean, a, groups=np.repeat([0, 1], 20), n_boot=50)  # two episodes: an interval again
    assert two.lower < two.upper


def _frequency_code(k: int):
    """A 'probe' that ignores the latent: Laplace label frequencies of the earlier blocks."""
    return lambda xt, yt, xe: np.tile((np.bincount(yt, minlength=k) + 1) / (len(yt) + k), (len(xe), 1))


def test_integer_scalar_is_coded_on_its_occupied_bins_only():
    """agent_row-like values 1..5 in 10 quantile bins: the edges are [1 2 3 4 5] and a value equal to an edge goes to
    the bin above, so bin 0 is always empty. Coding with K = len(edges) + 1 = 6 made the uniform code log2 6 instead
    of log2 5, and a latent-blind frequency code 'compressed' the labels 1.11x (noise looked informative)."""
    rng = np.random.default_rng(0)
    row = rng.integers(1, 6, 2000).astype(np.float32)
    concept = Concept("agent_row", "scalar", "row", unit="cells", low=0, high=6)
    coded, yk, _ = coded_concept(concept, row, None, 10)
    assert coded.num_classes == 5 and set(np.unique(yk)) == set(range(5))
    assert np.array_equal(yk, row.astype(np.int64) - 1)  # order of the values kept
    k = coded.num_classes
    r = online_codelength(rng.normal(size=(2000, 3)), yk, _frequency_code(k), num_classes=k)
    assert 0.98 < r.compression < 1.01  # a latent-blind code is no better than uniform
    # the control labels share the task's bins (same edges, same ids for the same value)
    ctrl = rng.permutation(row)
    coded2, yk2, yc2 = coded_concept(concept, row, ctrl, 10)
    assert coded2.num_classes == 5 and np.array_equal(yc2, ctrl.astype(np.int64) - 1)


def test_constant_scalar_codes_one_bin_so_the_harness_skips_it():
    """A constant coded scalar was a 'two-class' problem with one empty bin (compression ~ n / first block)."""
    concept = Concept("agent_row", "scalar", "row", unit="cells", low=0, high=6)
    coded, yk, _ = coded_concept(concept, np.full(100, 3.0, np.float32), None, 10)
    assert coded.num_classes < 2 and np.all(yk == 0)  # the harness's skip rule (mdl_rows: "one bin")


def test_r2_of_a_constant_target_is_nan_not_zero():
    """scikit-learn's force_finite default reports 0.0 for a constant target; the batched path (and the docstring)
    say NaN. The point value now agrees: an undefined ratio is not 'as good as the mean'."""
    y, pred, g = np.full(30, 2.0), np.linspace(0, 1, 30), np.repeat(np.arange(6), 5)
    assert math.isnan(R2()(y, pred))
    assert np.isnan(R2().batched(np.ones((1, 6)), g, y, pred)).all()
    est = concept_estimates("scalar", y, pred, groups=g, n_boot=20)["r2"]
    assert math.isnan(est.estimate) and math.isnan(est.lower)
    yv = np.linspace(-1, 1, 30)
    assert R2()(yv, pred) == pytest.approx(skm.r2_score(yv, pred))  # unchanged where defined


def test_control_labels_can_be_drawn_from_training_rows_only():
    """Hewitt & Liang draw each type's control label from the TRAINING label distribution. The harness pooled the
    labels of every split (val, test, OOD); ``donors`` restricts the draw (old code: no such argument)."""
    types = np.arange(200) % 50                       # 50 types, each seen in train and in test
    y = np.r_[np.zeros(100, np.int64), np.full(100, 2)]  # train rows: label 0; held-out rows: label 2
    train = np.r_[np.ones(100, bool), np.zeros(100, bool)]
    ctrl = control_labels(types, y, "categorical", seed=3, donors=train)
    assert set(np.unique(ctrl)) == {0}
    assert len({(t, c) for t, c in zip(types, ctrl)}) == 50  # still a function of the type, across splits
    assert np.array_equal(control_labels(types, y, "categorical", seed=3),  # donors=None: the earlier draws
                          y[np.random.default_rng(3).integers(0, 200, size=50)][types])
    with pytest.raises(ValueError, match="donors must be a bool mask"):
        control_labels(types, y, "categorical", donors=np.arange(100))


# ------------------------------------------------------------------------------- reference checks (kept)
def test_voita_titov_block_schedule_and_uniform_first_block():
    """Timesteps 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.25, 12.5, 25, 50, 100 % (Voita & Titov 2020, sec. 2.2.2); the first
    block costs n_1 log2 K bits; compression = n log2 K / online bits."""
    assert block_ends(10_000) == (10, 20, 40, 80, 160, 320, 625, 1250, 2500, 5000, 10_000)
    assert FRACTIONS[0] == 0.001 and FRACTIONS[-1] == 1.0
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 1000)
    r = online_codelength(rng.normal(size=(1000, 2)), y, _frequency_code(3), num_classes=3)
    assert r.block_bits[0] == pytest.approx(1 * math.log2(3))
    assert r.compression == pytest.approx(1000 * math.log2(3) / sum(r.row_bits))


def test_class_only_predicted_matches_sklearn_in_both_paths():
    """A class that only occurs in y_pred: balanced accuracy ignores it, macro-F1 counts it with F1 = 0."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 200)
    pred = np.where(rng.random(200) < 0.8, y, rng.integers(0, 3, 200))
    pred[:5] = 3
    g, ones = np.repeat(np.arange(20), 10), np.ones((1, 20))
    with pytest.warns(UserWarning, match="y_pred contains classes not in y_true"):
        ba = skm.balanced_accuracy_score(y, pred)
    assert BalancedAccuracy(4)(y, pred) == pytest.approx(ba)
    assert BalancedAccuracy(4).batched(ones, g, y, pred)[0] == pytest.approx(ba)
    f1 = skm.f1_score(y, pred, average="macro", zero_division=0)
    assert MacroF1(4)(y, pred) == pytest.approx(f1) and MacroF1(4).batched(ones, g, y, pred)[0] == pytest.approx(f1)


def test_clopper_pearson_equals_scipy_exact_interval():
    from scipy.stats import binomtest

    lo, hi = clopper_pearson(np.array([0, 3, 10]), np.array([10, 10, 10]))
    for k, a, b in zip((0, 3, 10), lo, hi):
        ci = binomtest(k, 10).proportion_ci(method="exact")
        assert (a, b) == pytest.approx((ci.low, ci.high))


def test_harness_control_labels_are_drawn_from_training_rows_only():
    """The harness's control task (one label per observation type, shared across splits) takes its labels from the
    train split: a label value that occurs only in held-out splits never appears as a control label."""
    from probes.harness import _control_labels
    from worlds.concepts import Concept

    rng = np.random.default_rng(0)

    class Store:
        splits = ("train", "val", "test")
        obs_ = {s: rng.integers(0, 2, size=(n, 3, 2, 2)).astype(np.uint8) for s, n in (("train", 60), ("val", 30), ("test", 40))}
        y_ = {"train": np.zeros(60, bool), "val": np.ones(30, bool), "test": np.ones(40, bool)}  # held-out: all True

        def obs(self, s):
            return self.obs_[s]

        def n(self, s):
            return len(self.y_[s])

        def concepts(self, s):
            return {"c": self.y_[s]}

    out = _control_labels(Store(), [Concept("c", "binary", "a concept")], ("train", "val", "test"), seed=0)
    assert set(out) == {"train", "val", "test"}
    assert all(not out[s]["c"].any() for s in out)  # every control label came from a (False) training row
    assert [len(out[s]["c"]) for s in ("train", "val", "test")] == [60, 30, 40]
