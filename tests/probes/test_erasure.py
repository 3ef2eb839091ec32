"""LEACE puts a linear probe at chance; a random subspace of the same rank does not."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from concept_erasure import LeaceFitter
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score

from probes.erasure import Eraser, fit_leace, leace_erase, random_subspace_erase, random_subspace_eraser


def planted(k=2, n=3000, d=16, seed=0):
    """Latents with the concept planted along k directions (plus correlated noise)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    mix = rng.normal(size=(d, d)) / np.sqrt(d)
    x = rng.normal(size=(n, d)) @ mix + 3.0 * rng.normal(size=(k, d))[y]
    return x.astype(np.float32), y


def probe_score(x, y):
    clf = LogisticRegression(max_iter=1000).fit(x[:2000], y[:2000])
    return balanced_accuracy_score(y[2000:], clf.predict(x[2000:]))


@pytest.mark.parametrize("k", [2, 3])
def test_leace_puts_a_linear_probe_at_chance_and_random_erasure_does_not(k):
    x, y = planted(k=k)
    assert probe_score(x, y) > 0.9
    eraser = fit_leace(x[:2000], y[:2000])
    assert eraser.rank == k - 1  # one-hot of k classes: k - 1 independent directions
    assert abs(probe_score(eraser(x), y) - 1 / k) < 0.05
    rand = random_subspace_erase(x, eraser.rank, seed=0)
    assert probe_score(rand, y) > 0.85


def test_eraser_agrees_with_concept_erasure_and_keeps_the_input_type():
    x, y = planted()
    ours = fit_leace(x, y)
    z = torch.nn.functional.one_hot(torch.as_tensor(y), 2).double()
    ref = LeaceFitter.fit(torch.as_tensor(x, dtype=torch.float64), z).eraser
    out = ours(x)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    np.testing.assert_allclose(out, ref(torch.as_tensor(x, dtype=torch.float64)).numpy(), atol=1e-4)
    xt = torch.as_tensor(x)
    out_t = ours.to(dtype=torch.float32)(xt)
    assert isinstance(out_t, torch.Tensor) and out_t.dtype == torch.float32
    np.testing.assert_allclose(out_t.numpy(), out, atol=1e-4)
    np.testing.assert_allclose(leace_erase(x, y, x[:5]), out[:5], atol=1e-6)


def test_random_subspace_eraser_is_an_orthogonal_projection_of_the_given_rank():
    e = random_subspace_eraser(10, 3, seed=1)
    assert isinstance(e, Eraser) and e.rank == 3 and e.method == "random"
    p = torch.eye(10, dtype=torch.float64) - e.proj_left @ e.proj_right
    torch.testing.assert_close(p @ p, p)
    torch.testing.assert_close(p, p.T)
    assert torch.linalg.matrix_rank(torch.eye(10, dtype=torch.float64) - p) == 3
    e2 = random_subspace_eraser(10, 3, seed=1)
    assert torch.equal(e.proj_left, e2.proj_left)


def test_errors_name_the_expected_shapes():
    x, y = planted(n=100)
    e = fit_leace(x, y)
    with pytest.raises(ValueError, match="last dimension 16"):
        e(np.zeros((3, 5)))
    with pytest.raises(ValueError, match="same number of rows"):
        fit_leace(x, y[:50])
    with pytest.raises(ValueError, match=r"rank must lie in \[0, dim=4\]"):
        random_subspace_eraser(4, 5)
