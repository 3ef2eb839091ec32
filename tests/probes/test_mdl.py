"""Online codelength: the structured labelling compresses, a random one does not."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from probes.mdl import (
    FRACTIONS,
    MDLResult,
    block_ends,
    compression_estimate,
    discretise_scalar,
    online_codelength,
    sklearn_fit_predict_proba,
)


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
