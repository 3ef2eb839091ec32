"""Linear probes: planted concepts recovered, noise at chance, scikit-learn agreement, batched == loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import balanced_accuracy_score, r2_score

from probes.linear import LinearFitter, choose_lambda, fit_grid
from worlds.concepts import Concept

torch.set_num_threads(1)
BIN = Concept("lit", "binary", "the lamp is lit")
CAT = Concept("room", "categorical", "which room", classes=("a", "b", "c", "d"))
CAT3 = Concept("colour", "categorical", "which colour", classes=("r", "g", "b"))
SCA = Concept("speed", "scalar", "speed", unit="m/s", low=-100.0, high=100.0)
CONCEPTS = [BIN, CAT, CAT3, SCA]
LAMBDAS = [1e-3, 1e-2, 1.0]


def planted(n: int, d: int = 10, seed: int = 0, noise_labels: bool = False, signal: float = 1.0, dtype=torch.float64):
    """Correlated, shifted latents with every concept a (noisy) linear function of them."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g, dtype=dtype) / d**0.5 + torch.eye(d, dtype=dtype)
    u = torch.randn(d, 8, generator=g, dtype=dtype)
    x = (torch.randn(n, d, generator=g, dtype=dtype) @ mix) * torch.linspace(0.5, 4, d, dtype=dtype) + 3
    s = (x - 3) @ u
    s = signal * s / s.std(0)
    ys = {
        "lit": (torch.rand(n, generator=g, dtype=dtype) < torch.sigmoid(4 * s[:, 0])).to(torch.int64),
        "room": (s[:, 1:5] + 0.1 * torch.randn(n, 4, generator=g, dtype=dtype)).argmax(1),
        "colour": (s[:, 5:8] + 0.1 * torch.randn(n, 3, generator=g, dtype=dtype)).argmax(1),
        "speed": (10 * (s[:, 0] - s[:, 2]) + 2 * torch.randn(n, generator=g, dtype=dtype)).clamp(-100, 100),
    }
    if noise_labels:
        ys = {k: v[torch.randperm(n, generator=g)] for k, v in ys.items()}
    return x, ys


def split(n: int, n_val: int, **kw):
    """Training and validation rows of ONE draw (same directions, same concepts)."""
    x, ys = planted(n + n_val, **kw)
    return x[:n], {k: v[:n] for k, v in ys.items()}, x[n:], {k: v[n:] for k, v in ys.items()}


def score(concept, p, x, y):
    pred = p.predict(x).numpy()
    return r2_score(y.numpy(), pred) if concept.kind == "scalar" else balanced_accuracy_score(y.numpy(), pred)


@pytest.mark.parametrize("concept", CONCEPTS, ids=lambda c: c.name)
def test_recovers_a_planted_linear_concept(concept):
    x, ys = planted(3000)
    p = LinearFitter(concept, l2=1e-3).fit(x[:1000].float(), ys[concept.name][:1000])
    assert score(concept, p, x[1000:].float(), ys[concept.name][1000:]) > 0.85


@pytest.mark.parametrize("concept", CONCEPTS, ids=lambda c: c.name)
def test_noise_labels_score_at_chance_on_held_out_data(concept):
    x, ys = planted(4000, noise_labels=True)
    p = LinearFitter(concept, l2=1e-2).fit(x[:2000], ys[concept.name][:2000])
    s = score(concept, p, x[2000:], ys[concept.name][2000:])
    if concept.kind == "scalar":
        assert s < 0.01
    else:
        assert abs(s - 1 / concept.num_classes) < 0.05


@pytest.mark.parametrize("lambdas", [LAMBDAS, [1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 1.0]], ids=["short", "warm_path"])
def test_batched_grid_matches_scikit_learn_for_every_concept_and_lambda(lambdas):
    # Agreement is limited by scikit-learn's own stopping (gradient ~1e-8): the error in the weights
    # is about gradient / smallest curvature, so the planted signal is moderate (curvature >> 1e-4).
    # "warm_path" is long enough that the weakest penalties start from a stronger one's solution
    # (probes.linear.WARM_LAMBDAS): they must still converge to scikit-learn's answer.
    x, ys, xv, yvs = split(600, 200, signal=0.5)
    res = fit_grid({"h": x}, ys, CONCEPTS, lambdas, {"h": xv}, yvs, dtype=torch.float64)
    n = x.shape[0]
    for c in CONCEPTS:
        for li, lam in enumerate(res.lambdas):
            p = res.probes[("h", c.name)][li]
            z = p.norm.apply(x).numpy()
            assert np.allclose(z.mean(0), 0, atol=1e-10) and np.allclose(z.std(0), 1)
            y = ys[c.name].numpy()
            if c.kind == "scalar":
                ref = Ridge(alpha=lam * n).fit(z, y)
                assert np.allclose(p.weight.numpy()[0], ref.coef_, atol=1e-9)
                assert np.allclose(p.bias.numpy(), ref.intercept_, atol=1e-9)
                assert np.allclose(p.predict(xv).numpy(), ref.predict(p.norm.apply(xv).numpy()), atol=1e-8)
                continue
            ref = LogisticRegression(C=1 / (lam * n), tol=1e-12, max_iter=20000).fit(z, y)
            w = p.weight.numpy()
            if c.kind == "binary":
                assert np.allclose(w, ref.coef_, atol=1e-5, rtol=1e-5), (c.name, lam)
                assert np.allclose(p.bias.numpy(), ref.intercept_, atol=1e-5)
            else:  # multinomial intercepts are defined up to a shared constant
                assert np.allclose(w, ref.coef_, atol=1e-5, rtol=1e-5), (c.name, lam)
                b = p.bias.numpy()
                assert np.allclose(b - b.mean(), ref.intercept_ - ref.intercept_.mean(), atol=1e-5)
            proba = ref.predict_proba(p.norm.apply(xv).numpy())
            assert np.allclose(p.predict_proba(xv).numpy(), proba, atol=1e-6)


def test_batched_grid_equals_a_loop_of_single_fits():
    x, ys, xv, yvs = split(500, 200)
    x2 = torch.cat([x[:, :4] ** 2, x], 1)  # a second site of another width
    xv2 = torch.cat([xv[:, :4] ** 2, xv], 1)
    res = fit_grid({"a": x, "b": x2}, ys, CONCEPTS, LAMBDAS, {"a": xv, "b": xv2}, yvs, dtype=torch.float64, tol=1e-11)
    for site, xs in (("a", x), ("b", x2)):
        for c in CONCEPTS:
            for li, lam in enumerate(LAMBDAS):
                one = LinearFitter(c, l2=lam, dtype=torch.float64, tol=1e-11).fit(xs, ys[c.name])
                got = res.probes[(site, c.name)][li]
                # both stop at |gradient| <= 1e-11 (or when the loss stops changing)
                assert torch.allclose(got.weight, one.weight, rtol=1e-5, atol=1e-6), (site, c.name, lam)
                assert torch.allclose(got.bias, one.bias, rtol=1e-5, atol=1e-6)
                if c.kind != "scalar":
                    assert torch.allclose(got.predict_proba(xs), one.predict_proba(xs), atol=1e-7)


def test_grid_picks_best_validation_score_and_breaks_ties_towards_stronger_regularisation():
    assert choose_lambda([0.7, 0.9, 0.9, 0.8], [1e-4, 1e-3, 1e-2, 1e-1]) == 2
    assert choose_lambda([0.5, 0.5], [1.0, 0.1]) == 0
    x, ys, xv, yvs = split(400, 300)
    res = fit_grid({"h": x}, ys, CONCEPTS, [1e-3, 1e-1, 1e3], {"h": xv}, yvs, dtype=torch.float64)
    for c in CONCEPTS:
        sc = res.val_scores[("h", c.name)]
        p = res.best("h", c.name)
        assert sc[res.best_index[("h", c.name)]] == max(sc)
        assert np.isclose(score(c, p, xv, yvs[c.name]), max(sc))  # the score is balanced accuracy / R^2
    assert res.best_lambda("h", "speed") < 1e3  # the huge penalty shrinks the regression


def test_normalisation_uses_training_statistics_only():
    x, ys, xv, yvs = split(400, 200)
    a = fit_grid({"h": x}, ys, CONCEPTS, LAMBDAS, {"h": xv}, yvs, dtype=torch.float64)
    b = fit_grid({"h": x}, ys, CONCEPTS, LAMBDAS, {"h": xv * 10 + 7}, yvs, dtype=torch.float64)
    for key in a.probes:
        for p, q in zip(a.probes[key], b.probes[key]):
            assert torch.equal(p.weight, q.weight) and torch.equal(p.norm.mean, q.norm.mean)
            assert torch.allclose(p.norm.mean, x.mean(0)) and torch.allclose(p.norm.std, x.std(0, unbiased=False))


def test_direction_is_the_gradient_of_the_score():
    x, ys = planted(500)
    for c in (BIN, CAT, SCA):
        p = LinearFitter(c, dtype=torch.float64).fit(x, ys[c.name])
        x0 = x[:1].clone().requires_grad_(True)
        jac = torch.autograd.functional.jacobian(lambda v: p.score(v)[0], x0)[..., 0, :]
        assert torch.allclose(p.direction(), jac, atol=1e-10)


def test_float32_grid_agrees_with_float64():
    x, ys, xv, yvs = split(800, 200)
    r64 = fit_grid({"h": x}, ys, CONCEPTS, LAMBDAS, {"h": xv}, yvs, dtype=torch.float64)
    r32 = fit_grid({"h": x.float()}, ys, CONCEPTS, LAMBDAS, {"h": xv.float()}, yvs)
    for key, ps in r64.probes.items():
        for p, q in zip(ps, r32.probes[key]):
            if key[1] == "speed":
                assert torch.allclose(p.predict(xv), q.predict(xv.float()).double(), rtol=1e-4, atol=1e-3), key
            else:
                assert (p.predict_proba(xv) - q.predict_proba(xv.float()).double()).abs().max() < 2e-3, key
