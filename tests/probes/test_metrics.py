"""Metrics against scikit-learn (point values and weighted resamples) and torchmetrics (ECE)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from probes.metrics import (
    AUROC,
    ECE,
    MAE,
    R2,
    BalancedAccuracy,
    MacroF1,
    concept_estimates,
    concept_metrics,
    metric_names,
    prior_baseline,
    prior_predictions,
)
from probes.stats import Estimate, draw_counts


def classification(k=4, n=600, n_groups=30, seed=0, round_to=None):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), y] += 1.2
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    if round_to is not None:
        p = np.round(p, round_to)  # creates tied scores
    return y, p, p.argmax(axis=1), rng.integers(0, n_groups, n)


def _ovr_auc(y, p, w=None):
    return np.mean([skm.roc_auc_score(y == k, p[:, k], sample_weight=w) for k in range(p.shape[1])])


SKLEARN_WEIGHTED = {
    "balanced_accuracy": lambda y, yp, p, w: skm.balanced_accuracy_score(y, yp, sample_weight=w),
    "macro_f1": lambda y, yp, p, w: skm.f1_score(y, yp, average="macro", sample_weight=w),
    "auroc": lambda y, yp, p, w: _ovr_auc(y, p, w),
}


@pytest.mark.parametrize("name", sorted(SKLEARN_WEIGHTED))
@pytest.mark.parametrize("round_to", [None, 1])
def test_batched_resamples_equal_sklearn_with_episode_weights(name, round_to):
    y, p, yp, groups = classification(round_to=round_to)
    metric = {"balanced_accuracy": BalancedAccuracy(4), "macro_f1": MacroF1(4), "auroc": AUROC(4)}[name]
    args = (y, p) if name == "auroc" else (y, yp)
    counts = draw_counts(30, 5, seed=1)
    got = metric.batched(counts, groups, *args)
    for b in range(5):
        w = counts[b, groups].astype(float)
        assert got[b] == pytest.approx(SKLEARN_WEIGHTED[name](y, yp, p, w), abs=1e-10)
    assert metric(*args) == pytest.approx(SKLEARN_WEIGHTED[name](y, yp, p, None), abs=1e-12)


def test_categorical_auroc_is_sklearn_macro_ovr():
    y, p, _, _ = classification()
    assert AUROC(4)(y, p) == pytest.approx(skm.roc_auc_score(y, p, multi_class="ovr", average="macro"))


def test_binary_auroc_accepts_positive_scores_or_two_columns():
    y, p, _, groups = classification(k=2)
    assert AUROC(2)(y, p[:, 1]) == pytest.approx(skm.roc_auc_score(y, p[:, 1]))
    assert AUROC(2)(y, p) == pytest.approx(skm.roc_auc_score(y, p[:, 1]))
    ones = np.ones((1, 30), dtype=np.int64)
    assert AUROC(2).batched(ones, groups, y, p[:, 1])[0] == pytest.approx(skm.roc_auc_score(y, p[:, 1]))


@pytest.mark.parametrize("metric,ref", [(R2(), skm.r2_score), (MAE(), skm.mean_absolute_error)])
def test_scalar_metrics_equal_sklearn_with_episode_weights(metric, ref):
    rng = np.random.default_rng(3)
    y = rng.normal(5.0, 2.0, 400)
    pred = y + rng.normal(0, 1.0, 400)
    groups = rng.integers(0, 20, 400)
    counts = draw_counts(20, 4, seed=0)
    got = metric.batched(counts, groups, y, pred)
    for b in range(4):
        assert got[b] == pytest.approx(ref(y, pred, sample_weight=counts[b, groups]), rel=1e-10)
    assert metric(y, pred) == pytest.approx(ref(y, pred))


def test_ece_matches_torchmetrics_binary_and_multiclass():
    tm = pytest.importorskip("torchmetrics.functional.classification")
    y, p, _, _ = classification(k=2, n=2000, seed=4)
    want = tm.binary_calibration_error(torch.tensor(p[:, 1]), torch.tensor(y), n_bins=10).item()
    assert ECE(2)(y, p[:, 1]) == pytest.approx(want, abs=1e-6)
    y, p, _, _ = classification(k=5, n=2000, seed=5)
    want = tm.multiclass_calibration_error(torch.tensor(p), torch.tensor(y), num_classes=5, n_bins=10).item()
    assert ECE(5)(y, p) == pytest.approx(want, abs=1e-6)


def test_ece_by_hand():
    # bin [0.1, 0.2): p = 0.15, 0.15, positives 1 of 2 -> |0.5 - 0.15| * 2 / 4
    # bin [0.9, 1.0]: p = 0.95, 1.0, positives 2 of 2 -> |1 - 0.975| * 2 / 4
    y = np.array([0, 1, 1, 1])
    p = np.array([0.15, 0.15, 0.95, 1.0])
    assert ECE(2)(y, p) == pytest.approx((0.35 * 2 + 0.025 * 2) / 4)
    assert ECE(2)(y, np.array([0.0, 1.0, 1.0, 1.0])) == pytest.approx(0.0)


def test_ece_equal_mass_bins_hold_equal_counts():
    y, p, _, _ = classification(k=2, n=1000)
    stats = ECE(2, n_bins=5, binning="equal_mass").row_stats(y, p[:, 1])
    assert np.all(stats[:, :5].sum(axis=0) == 200)


def test_concept_metrics_names_per_kind():
    y, p, yp, groups = classification()
    assert tuple(concept_metrics("categorical", y, yp, p)) == metric_names("categorical")
    assert tuple(concept_metrics("categorical", y, yp)) == ("balanced_accuracy", "macro_f1")
    yb, pb, ypb, _ = classification(k=2)
    assert set(concept_metrics("binary", yb, ypb, pb)) == {"balanced_accuracy", "auroc", "ece"}
    assert metric_names("scalar") == ("r2", "mae")
    with pytest.raises(ValueError, match="kind must be one of"):
        metric_names("ordinal")


def test_concept_estimates_carry_intervals_around_the_point_values():
    y, p, yp, groups = classification()
    points = concept_metrics("categorical", y, yp, p)
    ests = concept_estimates("categorical", y, yp, p, groups=groups, n_boot=200, seed=0)
    for name, e in ests.items():
        assert isinstance(e, Estimate) and e.n_groups == 30
        if name == "ece":  # reported bias-corrected (probes.stats.bias_corrected): below the plug-in value
            assert 0.0 <= e.estimate < points[name]
        else:
            assert e.estimate == pytest.approx(points[name])
        assert e.lower <= e.upper


def test_prior_baseline():
    rng = np.random.default_rng(6)
    y_train, y_test = rng.integers(0, 3, 500), rng.integers(0, 3, 300)
    out = prior_baseline("categorical", y_train, y_test, num_classes=3)
    assert out["balanced_accuracy"] == pytest.approx(1 / 3)
    assert out["auroc"] == pytest.approx(0.5)
    yp, proba = prior_predictions("categorical", y_train, 4, num_classes=3)
    assert np.all(yp == np.bincount(y_train).argmax())
    assert proba[0] == pytest.approx(np.bincount(y_train, minlength=3) / 500)
    ys_train, ys_test = rng.normal(1.0, 1.0, 500), rng.normal(0.0, 2.0, 300)
    s = prior_baseline("scalar", ys_train, ys_test)
    m = ys_train.mean()
    assert s["r2"] == pytest.approx(1 - np.sum((ys_test - m) ** 2) / np.sum((ys_test - ys_test.mean()) ** 2))
    assert s["mae"] == pytest.approx(np.mean(np.abs(ys_test - m)))


def test_shape_errors_name_the_expected_shape():
    y, p, _, _ = classification()
    with pytest.raises(ValueError, match=r"proba must have shape \(600, 5\)"):
        AUROC(5)(y, p)
    with pytest.raises(ValueError, match=r"y_true must be integers in \[0, 3\)"):
        BalancedAccuracy(3).row_stats(y, y)
