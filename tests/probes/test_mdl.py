"""Online codelength: the structured labelling compresses, a random one does not; code length in bits with an
episode-bootstrap interval (over episodes and shuffle orders)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from probes.grids import fit_method
from probes.harness_context import HarnessContext
from probes.mdl import (
    FRACTIONS,
    MDLResult,
    block_ends,
    compression_estimate,
    discretise_scalar,
    mdl_estimates,
    online_codelength,
    sklearn_fit_predict_proba,
)
from probes.results import ResultRow
from probes.stats import bootstrap_seeds
from worlds.concepts import Concept

torch.set_num_threads(1)


def logistic(k):
    return sklearn_fit_predict_proba(lambda: LogisticRegression(max_iter=500), k)


def data(n=2000, d=8, k=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    structured = np.argmax(x @ rng.normal(size=(d, k)), axis=1)
    random = rng.integers(0, k, n)
    return x, structured, random


def test_structured_labels_compress_and_random_labels_do_not():
    x, structured, random = data()
    s = online_codelength(x, structured, logistic(3), num_classes=3, seed=0)
    r = online_codelength(x, random, logistic(3), num_classes=3, seed=0)
    assert s.compression > 2.0
    assert r.compression < 1.05
    assert s.compression > r.compression
    assert s.uniform_bits == pytest.approx(2000 * math.log2(3))


def test_block_accounting():
    x, structured, _ = data(n=1000)
    res = online_codelength(x, structured, logistic(3), num_classes=3, seed=1)
    assert isinstance(res, MDLResult)
    assert res.block_ends == block_ends(1000) and res.n == 1000
    assert res.block_ends == (1, 2, 4, 8, 16, 32, 63, 125, 250, 500, 1000)
    assert len(res.block_bits) == len(res.block_ends)
    assert sum(res.block_bits) == pytest.approx(res.online_bits)
    assert res.block_bits[0] == pytest.approx(math.log2(3))
    again = online_codelength(x, structured, logistic(3), num_classes=3, seed=1)
    assert again == res


def test_block_ends_drop_duplicates_for_small_n():
    assert block_ends(50) == (1, 2, 4, 7, 13, 25, 50)
    assert len(FRACTIONS) == 11
    with pytest.raises(ValueError, match="end at 1.0"):
        block_ends(100, (0.1, 0.5))


def test_a_probe_that_returns_the_wrong_shape_is_named():
    x, structured, _ = data(n=200)
    with pytest.raises(ValueError, match=r"fit_predict_proba must return shape"):
        online_codelength(x, structured, lambda a, b, c: np.ones((len(c), 2)) / 2, num_classes=3)


def test_scalar_concepts_must_be_discretised_first():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(500, 4))
    v = x[:, 0] + 0.1 * rng.normal(size=500)
    with pytest.raises(ValueError, match="discretise_scalar"):
        online_codelength(x, v, logistic(4))
    bins, edges = discretise_scalar(v, n_bins=4)
    assert np.all(np.bincount(bins) == 125) and len(edges) == 3
    test_bins, _ = discretise_scalar(np.array([-10.0, 10.0]), edges=edges)
    assert list(test_bins) == [0, 3]
    assert online_codelength(x, bins, logistic(4), num_classes=4).compression > 1.5


def test_compression_estimate_over_shuffling_seeds():
    x, structured, _ = data(n=600)
    results = [online_codelength(x, structured, logistic(3), num_classes=3, seed=s) for s in range(3)]
    est = compression_estimate(results)
    assert est.estimate == pytest.approx(np.mean([r.compression for r in results]))
    assert est.lower < est.estimate < est.upper and est.n_groups == 3


# ------------------------------------------------------------------ code length in bits, episode-bootstrap interval
def laplace(x_train, y_train, x_eval):
    """Send each block with the Laplace-smoothed label frequencies of the earlier blocks (ignores the latents)."""
    return np.tile((np.bincount(y_train, minlength=2) + 1) / (len(y_train) + 2), (len(x_eval), 1))


def test_codelength_equals_a_hand_computation():
    """n = 6, K = 2, blocks ends (2, 4, 6); seed 0 shuffles the rows to the order 3 2 5 4 0 1."""
    assert list(np.random.default_rng(0).permutation(6)) == [3, 2, 5, 4, 0, 1]
    y = np.array([0, 1, 1, 1, 0, 1])
    res = online_codelength(np.zeros((6, 1)), y, laplace, num_classes=2, fractions=(1 / 3, 2 / 3, 1.0), seed=0)
    # block 1, rows 3 2: uniform, 1 bit each. Block 2, rows 5 4 (y 1, 0): counts of {y3, y2} = [0, 2] ->
    # p = (1/4, 3/4): log2(4/3) + 2 bits. Block 3, rows 0 1 (y 0, 1): counts of {1, 1, 1, 0} = [1, 3] ->
    # p = (1/3, 2/3): log2(3) + log2(3/2) bits.
    by_row = [math.log2(3), math.log2(1.5), 1.0, 1.0, 2.0, math.log2(4 / 3)]
    assert res.row_bits == pytest.approx(by_row)
    assert res.block_bits == pytest.approx((2.0, 2 + math.log2(4 / 3), math.log2(3) + math.log2(1.5)))
    assert res.online_bits == pytest.approx(4 + math.log2(6))
    assert res.compression == pytest.approx(6 / (4 + math.log2(6)))
    groups = np.array([0, 0, 1, 1, 2, 2])
    est = mdl_estimates([res], groups, n_boot=50)
    assert est["codelength"].estimate == pytest.approx(4 + math.log2(6))
    assert est["compression"].estimate == pytest.approx(6 / (4 + math.log2(6)))
    # two shuffle orders: the point estimates are the means over the orders
    res1 = online_codelength(np.zeros((6, 1)), y, laplace, num_classes=2, fractions=(1 / 3, 2 / 3, 1.0), seed=1)
    both = mdl_estimates([res, res1], groups, n_boot=50)
    assert both["codelength"].estimate == pytest.approx((res.online_bits + res1.online_bits) / 2)
    assert both["compression"].estimate == pytest.approx((res.compression + res1.compression) / 2)


def _result(row_bits, k=2, seed=0):
    """An MDLResult with given per-row bits (only ``row_bits``, ``num_classes`` and ``n`` enter the interval)."""
    bits = tuple(float(b) for b in row_bits)
    return MDLResult(sum(bits), len(bits) * math.log2(k), (sum(bits),), (len(bits),), k, seed, bits)


def test_identical_episodes_give_a_zero_width_interval():
    groups = np.repeat(np.arange(8), 4)
    same = _result(np.tile([0.2, 0.5, 1.0, 0.3], 8))
    for name, e in mdl_estimates([same], groups, n_boot=200).items():
        assert e.lower == pytest.approx(e.estimate) and e.upper == pytest.approx(e.estimate), name
        assert e.n_groups == 8
    assert mdl_estimates([same], groups, n_boot=200)["codelength"].estimate == pytest.approx(8 * 2.0)
    # the same per-row bits, but the episodes differ: the interval opens
    varied = _result(np.repeat(np.linspace(0.1, 1.5, 8), 4))
    for name, e in mdl_estimates([varied], groups, n_boot=200).items():
        assert e.lower < e.estimate < e.upper, name


def test_interval_is_the_episode_bootstrap_over_episodes_and_shuffle_orders():
    """Reference: the generic (row-gathering) bootstrap of probes.stats on the per-row bits with their episode ids."""
    x, structured, _ = data(n=300)
    groups = np.repeat(np.arange(30), 10)
    rs = [online_codelength(x, structured, logistic(3), num_classes=3, seed=s) for s in range(2)]
    est = mdl_estimates(rs, groups, n_boot=300, seed=4)
    u = np.full(300, math.log2(3))
    ref_len = bootstrap_seeds(lambda b: float(np.sum(b)), [(np.array(r.row_bits),) for r in rs],
                              groups=[groups, groups], n_boot=300, seed=4)
    ref_cmp = bootstrap_seeds(lambda b, uu: float(np.sum(uu) / np.sum(b)), [(np.array(r.row_bits), u) for r in rs],
                              groups=[groups, groups], n_boot=300, seed=4)
    for got, ref in ((est["codelength"], ref_len), (est["compression"], ref_cmp)):
        assert (got.estimate, got.lower, got.upper) == pytest.approx((ref.estimate, ref.lower, ref.upper))
        assert got.lower < got.estimate < got.upper and got.n_groups == 30
    # one shuffle order still gets an interval (the old t-interval over orders was NaN with one order)
    one = mdl_estimates(rs[:1], groups, n_boot=300)
    assert math.isfinite(one["compression"].lower) and one["compression"].lower < one["compression"].upper


def test_mdl_estimates_refuses_mismatched_inputs():
    x, structured, _ = data(n=100)
    r = online_codelength(x, structured, logistic(3), num_classes=3, seed=0)
    with pytest.raises(ValueError, match=r"groups must have shape \(100,\)"):
        mdl_estimates([r], np.zeros(99))
    with pytest.raises(ValueError, match="at least one MDLResult"):
        mdl_estimates([], np.zeros(100))
    with pytest.raises(ValueError, match="same rows"):
        mdl_estimates([r, online_codelength(x[:50], structured[:50], logistic(3), num_classes=3)], np.zeros(100))


def test_harness_mdl_rows_report_codelength_beside_compression():
    """HarnessContext.mdl_rows: bits and compression for the task and the control task, CIs over test episodes."""
    rng = np.random.default_rng(0)
    n_ep, steps, d = 40, 10, 6
    x = np.repeat(rng.normal(size=(n_ep, d)), steps, 0) + 0.3 * rng.normal(size=(n_ep * steps, d))
    y = (x[:, 0] > 0).astype(np.int64)
    yc = rng.integers(0, 2, n_ep * steps)
    groups = np.repeat(np.arange(n_ep), steps)
    flag = Concept("flag", "binary", "planted")
    xt = torch.tensor(x, dtype=torch.float32)
    task = fit_method("linear", xt, {"flag": torch.tensor(y)}, xt, {"flag": torch.tensor(y)}, [flag], [{"l2": 1e-2}])
    ctx = HarnessContext({"test": {"flag": y}}, {"test": groups}, {"test": {"flag": yc}}, {}, {}, [0], 200, 0,
                         "cpu", torch.float32, {})
    rows = {r.metric: r for r in ctx.mdl_rows("linear", "site", task, task, x.astype(np.float32), 2, None, 10)}
    assert set(rows) == {"codelength", "compression", "codelength_control", "compression_control"}
    assert all(r.split == "test" and r.concept == "flag" and r.ci_low < r.estimate < r.ci_high for r in rows.values())
    assert rows["codelength"].estimate < 0.5 * len(y) < 0.9 * len(y) < rows["codelength_control"].estimate  # 1 bit a row
    assert rows["compression"].estimate > 2 > 1.1 > rows["compression_control"].estimate
    # the bits and the compression are two views of one code: compression ~ n log2 K / bits (exact per order)
    assert rows["compression"].estimate == pytest.approx(len(y) / rows["codelength"].estimate, rel=0.1)
    ResultRow("linear", "site", "flag", "test", "codelength", 1.0, 0.5, 2.0)  # an accepted metric name
