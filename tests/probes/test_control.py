"""Control tasks: labels are a function of the observation type, keep the marginal, and separate
a memorising probe (high control score) from a selective one (control harder than the task)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from probes.control import control_labels, observation_types, selectivity
from probes.metrics import BalancedAccuracy


def test_observation_types_are_equal_exactly_for_equal_bytes():
    rng = np.random.default_rng(0)
    views = rng.integers(0, 3, size=(5, 3, 3, 2), dtype=np.uint8)
    pick = rng.integers(0, 5, 200)
    types = observation_types(views[pick])
    assert types.dtype == np.int64 and types.shape == (200,)
    same_view = pick[:, None] == pick[None, :]
    assert np.array_equal(types[:, None] == types[None, :], same_view)
    floats = np.array([[0.0, 1.0], [-0.0, 1.0], [0.0, 2.0]], dtype=np.float32)
    ft = observation_types(floats)  # ids follow byte order, not value order
    assert ft[0] == ft[1] != ft[2]
    with pytest.raises(ValueError, match="obs must have shape"):
        observation_types(np.zeros((0, 3)))


def test_control_labels_are_a_function_of_the_type_and_keep_the_marginal():
    rng = np.random.default_rng(1)
    types = rng.integers(0, 400, 20_000)
    y = (rng.random(20_000) < 0.3).astype(np.uint8)
    yc = control_labels(types, y, "binary", seed=0)
    assert yc.dtype == y.dtype
    for t in np.unique(types)[:50]:
        assert len(np.unique(yc[types == t])) == 1
    assert abs(yc.mean() - 0.3) < 0.06  # 400 types: s.d. of the type-level mean ~ 0.023
    assert not np.array_equal(yc, control_labels(types, y, "binary", seed=1))
    assert np.array_equal(yc, control_labels(types, y, "binary", seed=0))
    ys = rng.normal(size=20_000).astype(np.float32)
    assert set(np.unique(control_labels(types, ys, "scalar", seed=0))) <= set(ys)
    with pytest.raises(ValueError, match="kind must be"):
        control_labels(types, y, "ordinal")


def _fit_score(x_tr, y_tr, x_te, y_te):
    pred = LogisticRegression(C=100.0, max_iter=2000).fit(x_tr, y_tr).predict(x_te)
    return pred, BalancedAccuracy(2)(y_te, pred)


def _dataset(latent_of_type, n_types, concept_of_type, seed):
    rng = np.random.default_rng(seed)
    types = rng.integers(0, n_types, 3000)
    x = latent_of_type[types] + 0.01 * rng.normal(size=(3000, latent_of_type.shape[1]))
    y = concept_of_type[types]
    yc = control_labels(types, y, "binary", seed=seed)
    groups = np.arange(3000) // 30  # 100 "episodes"
    return x, y, yc, groups


def test_memorising_latent_learns_the_control_task():
    # 40 types, each with its own random 64-d latent: any labelling of the types is separable.
    rng = np.random.default_rng(2)
    n_types = 40
    concept = rng.integers(0, 2, n_types).astype(np.int64)
    x, y, yc, _ = _dataset(rng.normal(size=(n_types, 64)), n_types, concept, seed=2)
    _, task = _fit_score(x[:2000], y[:2000], x[2000:], y[2000:])
    _, control = _fit_score(x[:2000], yc[:2000], x[2000:], yc[2000:])
    assert task > 0.95 and control > 0.95  # selectivity ~ 0: accuracy says nothing here


def test_linear_latent_is_selective():
    # 500 types in 2-d; the concept is the sign of the first coordinate, so a linear probe reads it,
    # but it cannot fit 500 arbitrary per-type labels.
    rng = np.random.default_rng(3)
    n_types = 500
    latent = rng.normal(size=(n_types, 2))
    concept = (latent[:, 0] > 0).astype(np.int64)
    x, y, yc, groups = _dataset(latent, n_types, concept, seed=3)
    pred_t, task = _fit_score(x[:2000], y[:2000], x[2000:], y[2000:])
    pred_c, control = _fit_score(x[:2000], yc[:2000], x[2000:], yc[2000:])
    assert task > 0.95 and control < 0.75
    sel = selectivity(BalancedAccuracy(2), (y[2000:], pred_t), (yc[2000:], pred_c),
                      groups=groups[2000:], n_boot=300, seed=0)
    assert sel.estimate == pytest.approx(task - control)
    assert sel.lower > 0.15 and sel.lower <= sel.estimate <= sel.upper
