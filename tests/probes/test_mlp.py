"""MLP probe: learns a planted XOR the linear probe cannot, noise at chance, seeded, direction = gradient."""

from __future__ import annotations

import torch
from sklearn.metrics import balanced_accuracy_score, r2_score

from probes.linear import LinearFitter
from probes.mlp import MLPFitter
from worlds.concepts import Concept

torch.set_num_threads(1)
XOR = Concept("xor", "binary", "exactly one of two switches is on")
SQ = Concept("energy", "scalar", "kinetic energy", low=0.0, high=100.0)
FAST = {"hidden": (32,), "max_epochs": 60, "patience": 8, "lr": 1e-2}


def xor_data(n: int, d: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g))
    x = torch.randn(n, d, generator=g) * 2 + 1
    a, b = (x - 1) @ q[:, 0], (x - 1) @ q[:, 1]
    return x, ((a > 0) ^ (b > 0)).to(torch.int64), (a**2 / 4).clamp(0, 100)


def bacc(p, x, y) -> float:
    return balanced_accuracy_score(y.numpy(), p.predict(x).numpy())


def test_mlp_learns_xor_that_a_linear_probe_cannot():
    x, y, _ = xor_data(3000)
    tr, te = slice(0, 2000), slice(2000, None)
    mlp = MLPFitter(XOR, **FAST).fit(x[tr], y[tr])
    lin = LinearFitter(XOR).fit(x[tr], y[tr])
    assert bacc(mlp, x[te], y[te]) > 0.9
    assert abs(bacc(lin, x[te], y[te]) - 0.5) < 0.06


def test_mlp_regresses_a_nonlinear_scalar():
    x, _, e = xor_data(3000)
    p = MLPFitter(SQ, **FAST).fit(x[:2000], e[:2000])
    assert r2_score(e[2000:].numpy(), p.predict(x[2000:]).numpy()) > 0.8


def test_noise_labels_score_at_chance_on_held_out_data():
    x, y, _ = xor_data(3000)
    y = y[torch.randperm(3000, generator=torch.Generator().manual_seed(1))]
    p = MLPFitter(XOR, **FAST).fit(x[:1500], y[:1500])
    assert abs(bacc(p, x[1500:], y[1500:]) - 0.5) < 0.05


def test_seeded_fits_are_identical_and_validation_split_is_used():
    x, y, _ = xor_data(800)
    a = MLPFitter(XOR, seed=3, max_epochs=5).fit(x, y)
    b = MLPFitter(XOR, seed=3, max_epochs=5).fit(x, y)
    c = MLPFitter(XOR, seed=4, max_epochs=5).fit(x, y)
    assert torch.equal(a.score(x), b.score(x)) and not torch.equal(a.score(x), c.score(x))
    # an explicit validation split: every training row is used, statistics from training rows only
    d = MLPFitter(XOR, seed=3, max_epochs=5).fit(x[:600], y[:600], x[600:] * 5 + 2, y[600:])
    assert torch.allclose(d.norm.mean, x[:600].mean(0))


def test_direction_is_the_input_gradient_at_the_training_mean():
    x, y, _ = xor_data(600)
    p = MLPFitter(XOR, max_epochs=3).fit(x, y)
    mu = p.norm.mean.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(p.score(mu[None])[0], mu)
    assert torch.allclose(p.direction(), grad, atol=1e-6)
    assert p.direction().shape == (8,)
