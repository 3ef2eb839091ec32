"""Sparse probes: the planted units are found, Lasso agreement, KKT optimality, noise at chance."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import Lasso
from sklearn.metrics import balanced_accuracy_score, r2_score

from probes.base import Probe
from probes.batched import augment
from probes.sparse import SparseFitter, SparseProbe, l1_max
from worlds.concepts import Concept

torch.set_num_threads(1)
BIN = Concept("carrying", "binary", "the agent carries the key")
CAT = Concept("facing", "categorical", "which way the agent faces", classes=("n", "e", "s"))
SCA = Concept("height", "scalar", "height", low=-100.0, high=100.0)
UNITS = [3, 11, 17]


def planted(n: int = 2000, d: int = 24, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * torch.linspace(0.5, 3, d, dtype=torch.float64) + 2
    z = (x - 2) / torch.linspace(0.5, 3, d, dtype=torch.float64)
    s = z[:, UNITS] @ torch.tensor([2.0, -1.5, 1.0], dtype=torch.float64)
    ys = {
        "carrying": (torch.rand(n, generator=g, dtype=torch.float64) < torch.sigmoid(3 * s)).to(torch.int64),
        "facing": torch.stack([z[:, 3], z[:, 11], z[:, 17]], 1).argmax(1),
        "height": (5 * s + 0.5 * torch.randn(n, generator=g, dtype=torch.float64)).clamp(-100, 100),
    }
    return x, ys


@pytest.mark.parametrize("concept", [BIN, CAT, SCA], ids=lambda c: c.kind)
def test_top_k_finds_the_planted_units_and_predicts_well(concept):
    x, ys = planted()
    y = ys[concept.name]
    p = SparseFitter(concept, top_k=3, dtype=torch.float64).fit(x[:1000], y[:1000])
    assert p.units().tolist() == UNITS
    pred = p.predict(x[1000:]).numpy()
    s = r2_score(y[1000:], pred) if concept.kind == "scalar" else balanced_accuracy_score(y[1000:], pred)
    assert s > 0.85


@pytest.mark.parametrize("concept", [BIN, SCA], ids=lambda c: c.kind)
def test_l1_probe_keeps_the_planted_units_and_few_others(concept):
    x, ys = planted()
    p = SparseFitter(concept, l1=0.05, dtype=torch.float64).fit(x[:1000], ys[concept.name][:1000])
    units = set(p.units().tolist())
    assert set(UNITS) <= units and len(units) <= 6


def test_l1_regression_matches_scikit_learn_lasso():
    x, ys = planted(600)
    for l1 in (0.01, 0.1, 1.0):
        p = SparseFitter(SCA, l1=l1, dtype=torch.float64, tol=1e-12, max_iter=20000).fit(x, ys["height"])
        z = p.norm.apply(x).numpy()
        ref = Lasso(alpha=l1, tol=1e-12, max_iter=100000).fit(z, ys["height"].numpy())
        assert np.allclose(p.weight.numpy()[0], ref.coef_, atol=1e-6)
        assert np.allclose(p.bias.numpy(), ref.intercept_, atol=1e-6)
        assert set(p.units().tolist()) == set(np.flatnonzero(ref.coef_).tolist())


def test_l1_logistic_satisfies_the_optimality_conditions():
    x, ys = planted(800)
    l1 = 0.02
    p = SparseFitter(BIN, l1=l1, dtype=torch.float64, tol=1e-12, max_iter=20000).fit(x, ys["carrying"])
    z1 = augment(p.norm.apply(x))
    prob = torch.sigmoid(z1 @ torch.cat([p.weight[0], p.bias]))
    grad = z1.T @ (prob - ys["carrying"].double()) / x.shape[0]  # [d+1] smooth-part gradient
    w = p.weight[0]
    assert abs(grad[-1]) < 1e-8  # unpenalised intercept
    on = w != 0
    assert torch.allclose(grad[:-1][on], -l1 * torch.sign(w[on]), atol=1e-7)  # active: grad = -l1 sign(w)
    assert (grad[:-1][~on].abs() <= l1 + 1e-8).all()  # inactive: |grad| <= l1
    assert 0 < int(on.sum()) < x.shape[1]


def test_l1_max_zeroes_every_weight():
    x, ys = planted(500)
    p0 = SparseFitter(BIN, dtype=torch.float64).fit(x, ys["carrying"])
    top = l1_max(BIN, p0.norm.apply(x), ys["carrying"])
    assert SparseFitter(BIN, l1=top * 1.01, dtype=torch.float64).fit(x, ys["carrying"]).units().numel() == 0
    assert SparseFitter(BIN, l1=top * 0.9, dtype=torch.float64).fit(x, ys["carrying"]).units().numel() > 0


def test_noise_labels_score_at_chance_and_round_trip(tmp_path):
    x, ys = planted(3000)
    y = ys["carrying"][torch.randperm(3000, generator=torch.Generator().manual_seed(2))]
    p = SparseFitter(BIN, top_k=3).fit(x[:1500], y[:1500])
    assert abs(balanced_accuracy_score(y[1500:], p.predict(x[1500:]).numpy()) - 0.5) < 0.05
    p.save(tmp_path / "s.safetensors")
    q = Probe.load(tmp_path / "s.safetensors")
    assert isinstance(q, SparseProbe) and torch.equal(q.units(), p.units())
