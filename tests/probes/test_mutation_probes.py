"""Mutation-audit tests of the probe methods and their statistics (session 8).

Each test pins down a documented behaviour that a plausible one-line bug changed without any existing fast test
noticing: a balanced-accuracy resample that lost a class must be skipped (NaN), not scored with recall 0; the
top-k sparse probe takes its units at the STRONGEST penalty with >= k units; the SAE probe's feature and sign come
from the labelled training rows even when validation rows are passed; a random-subspace null eraser is centred on
the bias it is given.
"""

from __future__ import annotations

import numpy as np
import torch

from probes.erasure import random_subspace_eraser
from probes.metrics import BalancedAccuracy
from probes.sae import SAEFitter, SAEProbeFitter
from probes.sparse import SparseFitter
from probes.stats import bootstrap, draw_counts
from worlds.concepts import Concept

torch.set_num_threads(1)


def test_balanced_accuracy_skips_resamples_that_lost_a_class():
    # class 1 occurs in episode 0 only; every resample that does not draw episode 0 is undefined
    g = 6
    groups = np.repeat(np.arange(g), 5)
    y = np.zeros(30, np.int64)
    y[:2] = 1
    pred = np.where(np.arange(30) % 3 == 0, 1 - y, y)
    n_boot, seed = 300, 4
    est = bootstrap(BalancedAccuracy(2), y, pred, groups=groups, n_boot=n_boot, seed=seed)
    lost = int((draw_counts(g, n_boot, seed)[:, 0] == 0).sum())     # independent count of the undefined resamples
    assert lost > 0 and est.n_skipped == lost


def test_top_k_takes_the_first_unit_to_enter_the_l1_path():
    """``y = x0 + x1``; ``x2`` is a noisy copy of their sum, so it is the unit most correlated with ``y`` (the first
    the L1 path admits) although least squares puts its weight on ``x0`` and ``x1``. Top-1 must pick ``x2``."""
    g = torch.Generator().manual_seed(0)
    n = 600
    a, b = torch.randn(n, generator=g), torch.randn(n, generator=g)
    noise = torch.randn(n, 3, generator=g)
    x = torch.stack([a, b, 0.9 * (a + b) / 2**0.5 + 0.3 * noise[:, 0], noise[:, 1], noise[:, 2]], 1)
    y = a + b + 0.05 * noise[:, 2]
    level = Concept("level", "scalar", "a planted level", low=-50.0, high=50.0)
    corr = [abs(float(np.corrcoef(x[:, j].numpy(), y.numpy())[0, 1])) for j in range(5)]
    assert int(np.argmax(corr)) == 2                               # the lasso's first entrant (reference)
    probe = SparseFitter(level, top_k=1).fit(x, y)
    assert probe.units().tolist() == [2]
    probe2 = SparseFitter(level, top_k=2).fit(x, y)
    assert 2 in probe2.units().tolist()


def test_sae_probe_never_reads_validation_labels():
    g = torch.Generator().manual_seed(1)
    n, d = 600, 8
    flag = torch.rand(n, generator=g) < 0.3
    x = torch.randn(n, d, generator=g) * 0.1 + flag[:, None] * torch.linspace(1, 2, d)
    y = flag.to(torch.int64)
    on = Concept("on", "binary", "a planted flag")
    sae = SAEFitter(n_features=8, epochs=3, seed=0).fit(x)
    ref = SAEProbeFitter(on, sae=sae, n_label=64).fit(x, y)
    xv, yv = x[:200], 1 - y[:200]                                    # validation rows with inverted labels
    other = SAEProbeFitter(on, sae=sae, n_label=64).fit(x, y, xv, yv)
    assert torch.equal(other.features, ref.features)
    torch.testing.assert_close(other.score(x), ref.score(x), rtol=0, atol=0)


def test_random_subspace_null_is_centred_on_its_bias():
    rng = np.random.default_rng(0)
    bias = rng.normal(size=6) + 5.0
    er = random_subspace_eraser(6, 2, seed=3, bias=bias)
    np.testing.assert_allclose(er(bias[None])[0], bias, atol=1e-12)  # the centre is a fixed point
    x = rng.normal(size=(10, 6))
    q = er.proj_left.numpy()
    np.testing.assert_allclose(er(x), x - (x - bias) @ q @ q.T, atol=1e-12)


def _separable(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    y = (torch.arange(200) % 2).to(torch.int64)
    x = torch.randn(200, 4, generator=g) * 0.1
    x[:, 0] += 4.0 * y - 2.0
    return x, y


def test_grid_ties_go_to_the_first_grid_point():
    from probes.grids import fit_method

    flag = Concept("flag", "binary", "a separable flag")
    x, y = _separable(0)
    xv, yv = _separable(1)
    for grid in ([{"l2": 1e-3}, {"l2": 1e-1}], [{"l2": 1e-1}, {"l2": 1e-3}]):
        fit = fit_method("linear", x, {"flag": y}, xv, {"flag": yv}, [flag], grid)["flag"]
        assert fit.val_scores == (1.0, 1.0)                           # separable: every grid point ties
        assert fit.best == 0 and fit.hparams["l2"] == grid[0]["l2"]


def test_ontology_ties_are_within_1e_9_only():
    from probes.linear import LinearFitter
    from probes.ontology import select_ontology

    flag = Concept("flag", "binary", "a separable flag")
    x, y = _separable(0)
    p = LinearFitter(flag).fit(x, y)
    shapes = {"a": (4,)}
    pick = lambda cands: select_ontology(cands, [flag], shapes, ["a"])["flag"].method  # noqa: E731
    assert pick({("linear", "a", "flag"): (p, 0.9), ("mlp", "a", "flag"): (p, 0.9 + 1e-3)}) == "mlp"
    assert pick({("linear", "a", "flag"): (p, 0.9), ("mlp", "a", "flag"): (p, 0.9 + 1e-10)}) == "linear"
