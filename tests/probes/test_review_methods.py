"""Review of the probe methods (session 8): regressions for the bugs found, each against an independent reference."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.metrics import roc_auc_score

from probes.erasure import fit_leace

torch.set_num_threads(1)


def _auroc_of_a_refitted_probe(x: np.ndarray, z: np.ndarray) -> float:
    clf = LogisticRegression(max_iter=2000).fit(x, z)
    return float(roc_auc_score(z, clf.decision_function(x)))


def test_leace_erases_a_rare_weakly_read_concept():
    # concept-erasure's default svd_tol=0.01 is absolute (units of z): a 1%-frequent label read at d' = 0.5 has a
    # whitened cross-covariance of ~0.007 and got a rank-0 eraser (nothing erased, the probe kept AUROC 0.67)
    rng = np.random.default_rng(0)
    n, d = 20000, 16
    z = (rng.random(n) < 0.01).astype(np.int64)
    x = rng.normal(size=(n, d)) * np.linspace(0.5, 3.0, d)
    x[:, -1] += 1.5 * z  # d' = 0.5 on the widest dimension
    assert _auroc_of_a_refitted_probe(x, z) > 0.62
    eraser = fit_leace(x, z, num_classes=2)
    assert eraser.rank == 1
    xe = eraser(x)
    # LEACE's defining property on its fit data: no covariance with the concept is left, so no linear probe beats chance
    cov = ((xe - xe.mean(0)) * (z - z.mean())[:, None]).mean(0)
    assert np.abs(cov).max() < 1e-10
    assert abs(_auroc_of_a_refitted_probe(xe, z) - 0.5) < 0.02


def test_leace_erases_a_scalar_concept_in_small_units():
    # the same absolute cut-off made erasure depend on the concept's unit: a scalar perfectly linear in the latents
    # but measured in units where its spread is 1e-3 was not erased at all
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4000, 8)) * np.linspace(1.0, 4.0, 8)
    s = 1e-3 * (x[:, 2] - 0.5 * x[:, 5]) / 3.0
    eraser = fit_leace(x, s)
    assert eraser.rank == 1
    xe = eraser(x)
    assert LinearRegression().fit(xe, s).score(xe, s) < 1e-8  # R^2 of the best linear readout (scikit-learn)
    assert LinearRegression().fit(x, s).score(x, s) > 0.999


def test_leace_still_drops_the_dependent_direction_of_a_one_hot_code():
    # the cut-off only drops numerically-zero directions: k one-hot columns sum to one, so the rank is k - 1
    rng = np.random.default_rng(2)
    for k in (2, 3, 5):
        y = rng.integers(0, k, 20000)
        x = (rng.normal(size=(20000, 12)) * 5 + 100 + rng.normal(size=(k, 12))[y]).astype(np.float32)
        for dtype in (torch.float64, torch.float32):
            assert fit_leace(x, y, dtype=dtype).rank == k - 1
