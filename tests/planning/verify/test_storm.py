"""Checking the checker: Storm's answers on random chains and MDPs equal an independent numpy reference."""

from __future__ import annotations

import sys
import time

import numpy as np
import pytest
import scipy.sparse as sp

from planning.verify.model import CountModel, ExplicitModel
from planning.verify.reference import bounded_reach, unbounded_reach
from planning.verify.storm import build, check, import_stormpy, scheduler, state_values
from planning.verify.validate import VerifyError

TOL = 1e-6


def random_model(seed: int, states: int, max_choices: int = 1) -> ExplicitModel:
    """Sparse random rows (1-4 successors, Dirichlet weights), 1..``max_choices`` choices per state,
    a few absorbing ``lava`` and ``goal`` states, every state a predecessor of some lava state."""
    rng = np.random.default_rng(seed)
    lava = np.zeros(states, dtype=bool)
    goal = np.zeros(states, dtype=bool)
    lava[rng.choice(states, 3, replace=False)] = True
    goal[rng.choice(np.flatnonzero(~lava), 3, replace=False)] = True
    choices = np.where(lava | goal, 1, rng.integers(1, max_choices + 1, size=states))
    rows, cols, vals = [], [], []
    r = 0
    for s in range(states):
        for _ in range(choices[s]):
            if lava[s] or goal[s]:
                succ, p = np.array([s]), np.array([1.0])
            else:
                k = rng.integers(1, 5)
                succ = rng.choice(states, k, replace=False)
                p = rng.dirichlet(np.ones(k))
            rows += [r] * len(succ)
            cols += succ.tolist()
            vals += p.tolist()
            r += 1
    matrix = sp.csr_array((vals, (rows, cols)), shape=(r, states))
    init = rng.dirichlet(np.ones(states)) * (rng.random(states) < 0.2)
    init = init / init.sum() if init.sum() > 0 else np.eye(1, states).ravel()
    return ExplicitModel.mdp(matrix, choices, {"lava": lava, "goal": goal}, init)


CASES = [(0, 20), (1, 50), (2, 120), pytest.param(3, 200, marks=pytest.mark.slow)]


def _bracket(lower: np.ndarray, upper: np.ndarray, ref: np.ndarray) -> None:
    """Storm's certified bounds, where given, contain the reference values."""
    has = ~np.isnan(lower) & ~np.isnan(upper)
    assert has.any()
    assert np.all(lower[has] <= ref[has] + 1e-10) and np.all(ref[has] <= upper[has] + 1e-10)


@pytest.mark.parametrize("seed,states", CASES)
@pytest.mark.parametrize("horizon", [1, 7, 40])
def test_dtmc_bounded_reachability_equals_reference(seed, states, horizon):
    model = random_model(seed, states)
    assert model.is_dtmc
    value, lower, upper = state_values(model, f'P=? [F<={horizon} "lava"]')
    ref = bounded_reach(model.matrix, model.row_groups, model.labels["lava"], horizon)
    np.testing.assert_allclose(value, ref, atol=TOL)
    _bracket(lower, upper, ref)


@pytest.mark.parametrize("seed,states", CASES)
@pytest.mark.parametrize("label", ["lava", "goal"])
def test_dtmc_unbounded_reachability_equals_reference(seed, states, label):
    model = random_model(seed, states)
    value, lower, upper = state_values(model, f'P=? [F "{label}"]')
    ref = unbounded_reach(model.matrix, model.row_groups, model.labels[label])
    assert np.any((ref > 0.01) & (ref < 0.99))                  # a non-trivial instance
    np.testing.assert_allclose(value, ref, atol=TOL)
    _bracket(lower, upper, ref)
    res = check(model, f'P=? [F "{label}"]')      # initial-distribution weighting
    assert res.probability == pytest.approx(model.initial_distribution @ ref, abs=TOL)
    assert res.lower - 1e-10 <= model.initial_distribution @ ref <= res.upper + 1e-10
    assert res.states == states


@pytest.mark.parametrize("seed,states", CASES)
@pytest.mark.parametrize("direction", ["max", "min"])
def test_mdp_reachability_equals_reference(seed, states, direction):
    model = random_model(seed, states, max_choices=3)
    assert not model.is_dtmc
    lava = model.labels["lava"]
    built = build(model)                             # build once, check several properties
    for horizon in (3, 25):
        value, lower, upper = state_values(built, f'P{direction}=? [F<={horizon} "lava"]')
        ref = bounded_reach(model.matrix, model.row_groups, lava, horizon, direction)
        np.testing.assert_allclose(value, ref, atol=TOL)
        _bracket(lower, upper, ref)
    value, lower, upper = state_values(built, f'P{direction}=? [F "lava"]')
    ref = unbounded_reach(model.matrix, model.row_groups, lava, direction)
    np.testing.assert_allclose(value, ref, atol=TOL)
    _bracket(lower, upper, ref)


@pytest.mark.parametrize("direction", ["max", "min"])
def test_scheduler_attains_the_optimum(direction):
    model = random_model(5, 60, max_choices=3)
    choice = scheduler(model, f'P{direction}=? [F "lava"]')
    assert choice.shape == (60,) and np.all(choice < np.diff(model.row_groups))
    rows = model.row_groups[:-1] + choice                       # the DTMC induced by the scheduler
    induced = ExplicitModel.dtmc(model.matrix[rows], model.labels, model.initial)
    optimum = unbounded_reach(model.matrix, model.row_groups, model.labels["lava"], direction)
    np.testing.assert_allclose(unbounded_reach(induced.matrix, induced.row_groups, model.labels["lava"]),
                               optimum, atol=TOL)


def test_scheduler_refuses_bounded_properties_and_dtmcs():
    with pytest.raises(VerifyError, match="bounded"):
        scheduler(random_model(5, 30, max_choices=3), 'Pmax=? [F<=4 "lava"]')
    with pytest.raises(VerifyError, match="DTMC"):
        scheduler(random_model(5, 30), 'Pmax=? [F "lava"]')


def test_count_model_dtmc_and_mdp_match_their_definition():
    rng = np.random.default_rng(3)
    S, A = 15, 3
    src = rng.integers(0, S, 3000)
    act = rng.integers(0, A, 3000)
    nxt = (src + act + rng.integers(0, 3, 3000)) % S
    lava = np.zeros(S, dtype=bool)
    lava[7] = True
    counts = CountModel.from_transitions(src, act, nxt, S, A, {"lava": lava})
    n = np.zeros((S, A, S))
    np.add.at(n, (src, act, nxt), 1)
    est = n / n.sum(2, keepdims=True)
    pi = rng.dirichlet(np.ones(A), size=S)
    dtmc = counts.to_dtmc(pi, absorbing=["lava"])
    expected = np.einsum("sa,sat->st", pi, est)
    expected[7] = np.eye(S)[7]
    np.testing.assert_allclose(dtmc.matrix.toarray(), expected, atol=1e-12)
    mdp = counts.to_mdp(absorbing=["lava"])
    acts = counts.mdp_actions(absorbing=["lava"])
    assert np.diff(mdp.row_groups).tolist() == [1 if s == 7 else A for s in range(S)]
    for row, a in enumerate(acts):
        s = np.searchsorted(mdp.row_groups, row, side="right") - 1
        want = np.eye(S)[7] if a < 0 else est[s, a]
        np.testing.assert_allclose(mdp.matrix[[row]].toarray().ravel(), want, atol=1e-12)
    pmax = check(mdp, 'Pmax=? [F<=5 "lava"]').probability
    assert check(dtmc, 'P=? [F<=5 "lava"]').probability <= pmax + 1e-9


def test_policy_on_an_uncounted_action_is_refused():
    counts = CountModel.from_transitions([0, 1], [0, 0], [1, 1], 2, 2, {"lava": np.array([False, True])})
    with pytest.raises(VerifyError, match="action 1 in state 0"):
        counts.to_dtmc(np.array([[0.5, 0.5], [1.0, 0.0]]), absorbing=["lava"])


def test_missing_stormpy_gives_a_one_line_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "stormpy", None)        # makes `import stormpy` raise ImportError
    with pytest.raises(VerifyError, match="pip install stormpy") as info:
        import_stormpy()
    assert "\n" not in str(info.value)


@pytest.mark.slow
def test_timing_of_a_large_chain(capsys):
    """Scale note: build a 10^5-state chain and run a bounded query (the issue measured ~0.2 s / ~0.06 s)."""
    n = 100_000
    rng = np.random.default_rng(0)
    cols = (np.arange(n)[:, None] + np.array([1, 2, 3]) * rng.integers(1, 50, size=(n, 1))) % n
    cols = np.sort(cols, axis=1)
    matrix = sp.csr_array((np.full(3 * n, 1 / 3), cols.ravel(), np.arange(0, 3 * n + 1, 3)), shape=(n, n))
    lava = np.zeros(n, dtype=bool)
    lava[::97] = True
    model = ExplicitModel.dtmc(matrix, {"lava": lava})
    start = time.perf_counter()
    built = build(model)
    total_build = time.perf_counter() - start
    res = check(built, 'P=? [F<=50 "lava"]')
    with capsys.disabled():
        print(f"\n10^5-state chain: validate+build {total_build:.3f} s (Storm build {built.seconds:.3f} s), "
              f"bounded query {res.seconds:.3f} s")
    assert res.states == n and 0 <= res.probability <= 1
    assert total_build < 30 and res.seconds < 30
