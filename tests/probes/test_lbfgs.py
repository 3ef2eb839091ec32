"""The shared design and the batched L-BFGS: scikit-learn agreement on raw (uncentred) latents,
gradients checked by autograd, warm starts, rank-deficient designs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression, Ridge

from probes.lbfgs import Design, glm_lbfgs
from probes.linear import fit_linear_batch
from worlds.concepts import Concept

torch.set_num_threads(1)
BIN = Concept("lit", "binary", "the lamp is lit")
CAT = Concept("room", "categorical", "which room", classes=("a", "b", "c"))
SCA = Concept("speed", "scalar", "speed", low=-1e3, high=1e3)


def raw_latents(n: int, d: int, seed: int = 0):
    """Correlated latents far from zero mean and unit scale, and labels linear in them."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) @ (torch.eye(d, dtype=torch.float64) +
                                                              0.3 * torch.randn(d, d, generator=g, dtype=torch.float64))
    x = x * torch.linspace(0.5, 3, d, dtype=torch.float64) + 5
    s = (x - 5) @ torch.randn(d, 4, generator=g, dtype=torch.float64) / d**0.5
    ys = {"lit": (torch.rand(n, generator=g, dtype=torch.float64) < torch.sigmoid(2 * s[:, 0])).long(),
          "room": (s[:, 1:4] + 0.5 * torch.randn(n, 3, generator=g, dtype=torch.float64)).argmax(1),
          "speed": 3 * s[:, 0] + torch.randn(n, generator=g, dtype=torch.float64)}
    return x, ys


def objective_grad(concept: Concept, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, b: torch.Tensor, l2: float):
    """Gradient of scikit-learn's mean objective at ``(w, b)``, by autograd (the independent reference)."""
    w, b = w.clone().requires_grad_(True), b.clone().requires_grad_(True)
    s = x @ w.T + b
    if concept.kind == "binary":
        loss = torch.nn.functional.binary_cross_entropy_with_logits(s[:, 0], y.double())
    else:
        loss = torch.nn.functional.cross_entropy(s, y)
    (loss + 0.5 * l2 * (w * w).sum()).backward()
    return torch.cat([w.grad.flatten(), b.grad.flatten()])


def test_design_ridge_matches_scikit_learn_on_uncentred_latents():
    x, ys = raw_latents(300, 8)
    y = torch.stack([ys["speed"], 2 * ys["speed"] - 7], 1)
    lambdas = torch.tensor([1e-4, 1e-1, 10.0], dtype=torch.float64)
    w, b = Design.of(x).ridge(y, lambdas)  # [c L d], [c L]
    for c in range(2):
        for li, lam in enumerate(lambdas.tolist()):
            ref = Ridge(alpha=lam * 300).fit(x.numpy(), y[:, c].numpy())
            assert np.allclose(w[c, li].numpy(), ref.coef_, atol=1e-9)
            assert np.allclose(float(b[c, li]), ref.intercept_, atol=1e-8)


@pytest.mark.parametrize("concept", [BIN, CAT], ids=lambda c: c.name)
def test_logistic_on_uncentred_latents_matches_scikit_learn_and_has_a_small_gradient(concept):
    x, ys = raw_latents(400, 6)
    lambdas = torch.tensor([1e-3, 1e-1], dtype=torch.float64)
    fits = fit_linear_batch(x, [concept], [ys[concept.name]], lambdas, tol=1e-10)[0]
    for (w, b), lam in zip(fits, lambdas.tolist()):
        g = objective_grad(concept, x, ys[concept.name], w, b, lam)
        assert g.abs().max() < 1e-6, (concept.name, lam)  # at the optimum (or where float64 stops improving it)
        ref = LogisticRegression(C=1 / (lam * 400), tol=1e-12, max_iter=20000).fit(x.numpy(), ys[concept.name].numpy())
        assert np.allclose(w.numpy().reshape(ref.coef_.shape), ref.coef_, atol=1e-4), (concept.name, lam)


def test_float32_solve_stops_at_the_tolerance_and_a_warm_start_is_already_done():
    x, ys = raw_latents(2000, 12, seed=1)
    z = ((x - x.mean(0)) / x.std(0)).float()
    design = Design.of(z)
    y = torch.stack([ys["lit"]] * 3, 1).float()  # [n m], three penalties
    l2 = torch.tensor([1e-4, 1e-2, 1.0])
    theta0 = torch.zeros(3, 1, 13)
    theta, conv, iters = glm_lbfgs(design, "binary", y, l2, theta0, tol=1e-4)
    assert bool(conv.all()) and int(iters.max()) < 50
    for j in range(3):
        w, b = theta[j, :, :12].double(), theta[j, :, 12].double() - w_mean(theta[j], design)
        assert objective_grad(BIN, z.double(), ys["lit"], w, b, float(l2[j])).abs().max() < 2e-4
    again, conv2, iters2 = glm_lbfgs(design, "binary", y, l2, theta, tol=1e-4)
    assert bool(conv2.all()) and int(iters2.max()) <= 1
    assert torch.allclose(again, theta, atol=1e-3)


def w_mean(th: torch.Tensor, design: Design) -> torch.Tensor:
    """The centred design's intercept -> the raw design's: ``b - w . mean``."""
    return (th[:, :-1] @ design.mean).double()


def test_more_dims_than_rows_is_fine():
    x, ys = raw_latents(30, 60, seed=2)
    fits = fit_linear_batch(x.float(), [BIN, SCA], [ys["lit"], ys["speed"].float()], torch.tensor([1e-2, 1.0]))
    for per_lambda in fits:
        for w, b in per_lambda:
            assert torch.isfinite(w).all() and torch.isfinite(b).all()
    (w, b) = fits[0][1]
    assert objective_grad(BIN, x, ys["lit"], w.double(), b.double(), 1.0).abs().max() < 1e-4
