"""Planners find known optima of toy problems (see conftest.py), with independent references:
a brute-force Python enumeration for the chain, a least-squares solution for the linear-quadratic system."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from planning import PLANNER_NAMES, PlanInfo, Scores, colored_noise, make_planner, rank

H_CHAIN, H_LQ = 7, 10


def brute_force_chain(key: tuple[int, ...], danger: bool, h: int, cost_limit: float) -> tuple[float, tuple[int, ...]]:
    """Best (return, sequence) over all 4**h sequences, with the chain's rules re-stated in plain Python."""
    best: tuple[float, tuple[int, ...]] = (-math.inf, ())
    for seq in itertools.product(range(4), repeat=h):
        s, ret, cost = 0, 0.0, 0.0
        for a in seq:
            if s == len(key):
                ret += 5.0 if a == 0 else (8.0 if danger and a == 1 else 0.0)
                cost += 1.0 if danger and a == 1 else 0.0
            elif a == key[s]:
                s, ret = s + 1, ret + 0.5
            else:
                s, ret = 0, ret + 0.3
        if cost <= cost_limit and ret > best[0] + 1e-9:
            best = (ret, seq)
    return best


@pytest.mark.parametrize("danger", [False, True])
def test_exhaustive_and_discrete_cem_find_the_chain_optimum(toys, danger):
    model = toys.ChainModel(danger=danger)
    ret, seq = brute_force_chain((2, 0, 3, 1), danger, H_CHAIN, cost_limit=0.0)
    assert seq == (2, 0, 3, 1, 0, 0, 0) and ret == pytest.approx(17.0)
    ex = make_planner("exhaustive", model, toys.chain_reward, H_CHAIN)
    action, info = ex.plan(model.state())
    assert tuple(ex.last_plan.tolist()) == seq and int(action) == 2
    assert info.predicted_return == pytest.approx(ret, abs=1e-5) and info.feasible and info.samples == 4**H_CHAIN
    for seed in range(4):
        cem = make_planner("discrete_cem", model, toys.chain_reward, H_CHAIN, num_samples=2000, num_elites=100, seed=seed)
        _, info = cem.plan(model.state())
        assert tuple(cem.last_plan.tolist()) == seq, f"seed {seed}"
        assert info.predicted_return == pytest.approx(ret, abs=1e-5)


def test_ignoring_constraints_takes_the_dangerous_reward(toys):
    model = toys.ChainModel(danger=True)
    ex = make_planner("exhaustive", model, toys.chain_reward, H_CHAIN, cost_limit=math.inf)
    _, info = ex.plan(model.state())
    assert tuple(ex.last_plan.tolist()) == (2, 0, 3, 1, 1, 1, 1)
    assert info.predicted_return == pytest.approx(2.0 + 3 * 8.0, abs=1e-5) and info.predicted_cost == 3.0


def test_feasible_first_ranking(toys):
    # returns 10, 5, 1, 8; costs 1, 0, 0, 0.5 -> with limit 0: feasible 5, 1 first, then 8 (less violation), then 10
    s = Scores(torch.tensor([10.0, 5.0, 1.0, 8.0]), torch.tensor([1.0, 0.0, 0.0, 0.5]))
    assert rank(s, 0.0).tolist() == [1, 2, 3, 0]
    assert rank(s, math.inf).tolist() == [0, 3, 1, 2]
    assert rank(s, 0.5).tolist() == [3, 1, 2, 0]


def test_feasible_first_planners_prefer_a_feasible_lower_reward_plan(toys):
    model = toys.ChainModel(danger=True)
    for name in ("discrete_cem", "shooting"):
        p = make_planner(name, model, toys.chain_reward, 3, num_samples=500, seed=0)
        _, info = p.plan(model.state(4))                # at the end: action 1 pays 8 but violates, 0 pays 5
        assert p.last_plan.tolist() == [0, 0, 0] and info.feasible and info.predicted_return == pytest.approx(15.0)


def lq_plan(T, name: str, seed: int, **kw) -> tuple[float, PlanInfo]:
    model, state = T.linear(), T.linear_state()
    p = make_planner(name, model, T.lq_reward, H_LQ, low=-2.0, high=2.0,
                     generator=torch.Generator().manual_seed(seed), **kw)
    _, info = p.plan(state)
    assert model.calls <= kw.get("iterations", 1) + 1           # one batched imagine per iteration (+ final score)
    return T.lq_cost(p.last_plan.numpy()), info


BUDGET = dict(cem=dict(num_samples=500, iterations=6), icem=dict(num_samples=600, iterations=6),
              mppi=dict(num_samples=500, iterations=6, noise_std=0.3, temperature=0.05))


@pytest.mark.parametrize("name", ["cem", "icem", "mppi"])
def test_continuous_planners_approach_the_lq_optimum_and_beat_shooting(toys, name):
    U = toys.lq_optimum(H_LQ)
    assert np.abs(U).max() < 2.0                                    # the optimum lies inside the bounds
    j_star, j_zero = toys.lq_cost(U), toys.lq_cost(np.zeros_like(U))
    for seed in range(2):
        j, info = lq_plan(toys, name, seed, **BUDGET[name])
        assert (j - j_star) / (j_zero - j_star) < 0.1, f"{name} seed {seed}: cost {j:.4f} vs optimum {j_star:.4f}"
        assert info.predicted_return == pytest.approx(-j, rel=1e-9)
        j_shoot, _ = lq_plan(toys, "shooting", seed, num_samples=info.samples)
        assert j < j_shoot


def test_cem_returns_the_mean_of_its_elites(toys):
    model, state = toys.linear(), toys.linear_state()
    p = make_planner("cem", model, toys.lq_reward, H_LQ, low=-2.0, high=2.0, num_samples=200, num_elites=20, iterations=3)
    action, _ = p.plan(state)
    torch.testing.assert_close(p.last_plan, p.last_elites.mean(0))
    torch.testing.assert_close(action, p.last_elites[:, 0].mean(0))
    best = p.score(state, p.last_elites).returns.argmax()
    assert not torch.allclose(p.last_plan, p.last_elites[best])      # not the single best sample


def test_warm_start_shifts_the_plan(toys):
    model, state = toys.linear(), toys.linear_state()
    for name in ("cem", "mppi", "discrete_cem"):
        if name == "discrete_cem":
            model_, state_ = toys.ChainModel(), toys.ChainModel().state()
            p = make_planner(name, model_, toys.chain_reward, 5, num_samples=50, iterations=1, polish_rounds=0)
        else:
            model_, state_ = model, state
            p = make_planner(name, model_, toys.lq_reward, 5, low=-2.0, high=2.0, iterations=1)
        p.plan(state_)
        first = p.last_plan.clone()
        warm = p._shifted(first.device, torch.float64)
        torch.testing.assert_close(warm[:-1], first[1:].to(warm.dtype))
        if name == "discrete_cem":
            assert warm[-1] == first[-1]
        else:
            assert torch.all(warm[-1] == 0.0)
        p.reset()
        assert p.last_plan is None and p._shifted(first.device, torch.float64) is None


def test_mppi_with_a_warm_start_keeps_improving(toys):
    model, state = toys.linear(), toys.linear_state()
    p = make_planner("mppi", model, toys.lq_reward, H_LQ, low=-2.0, high=2.0, noise_std=0.3, temperature=0.05, seed=0)
    costs = []
    for _ in range(6):                          # re-plan from the same state: the warm start is the shifted plan,
        p.plan(state)                           # so undo the shift to refine the same sequence
        costs.append(toys.lq_cost(p.last_plan.numpy()))
        p.last_plan = torch.cat([p.last_plan[-1:], p.last_plan[:-1]])
    assert costs[-1] < costs[0]


def test_planners_are_seeded_and_report_plan_info(toys):
    model, state = toys.linear(), toys.linear_state()
    for name in ("shooting", "cem", "icem", "mppi"):
        runs = [make_planner(name, model, toys.lq_reward, 4, seed=3, num_samples=64).plan(state) for _ in range(2)]
        torch.testing.assert_close(runs[0][0], runs[1][0])
        info = runs[0][1]
        assert info.latency_ms > 0 and info.elite_spread >= 0 and info.samples > 0 and not info.vetoed
        assert runs[0][0].shape == (2,) and runs[0][0].dtype == torch.float64


def test_registry_and_errors(toys):
    assert PLANNER_NAMES == ("cem", "discrete_cem", "exhaustive", "icem", "mppi", "shooting")
    with pytest.raises(ValueError, match="unknown planner 'nope'"):
        make_planner("nope", toys.ChainModel(), toys.chain_reward, 3)
    with pytest.raises(ValueError, match="needs continuous actions"):
        make_planner("cem", toys.ChainModel(), toys.chain_reward, 3)
    with pytest.raises(ValueError, match="needs discrete actions"):
        make_planner("discrete_cem", toys.linear(), toys.lq_reward, 3)
    with pytest.raises(ValueError, match="exceeds max_sequences"):
        make_planner("exhaustive", toys.ChainModel(), toys.chain_reward, 12)
    p = make_planner("shooting", toys.ChainModel(), toys.chain_reward, 3)
    with pytest.raises(ValueError, match="batch size 1"):
        p.plan(toys.ChainModel().state().map(lambda v: v.expand(2, *v.shape[1:])))
    bad = make_planner("shooting", toys.ChainModel(), lambda s, a: toys.chain_reward(s.at((slice(None), 0)), a), 3)
    with pytest.raises(ValueError, match="reward_fn must return reward and cost of shape"):
        bad.plan(toys.ChainModel().state())


def test_colored_noise_is_unit_variance_and_smooth_for_beta_2(toys):
    g = torch.Generator().manual_seed(0)
    white = colored_noise(0.0, 4000, 16, 1, generator=g, device=torch.device("cpu"), dtype=torch.float64)
    brown = colored_noise(2.0, 4000, 16, 1, generator=g, device=torch.device("cpu"), dtype=torch.float64)
    assert white.shape == brown.shape == (4000, 16, 1)
    assert abs(float(white.std()) - 1.0) < 0.02
    # unit variance at every step, the DC term included (test_review_planning.py checks it per step and horizon)
    assert abs(float(brown.std()) - 1.0) < 0.03

    def lag1(x):
        x = x[..., 0]
        return float((x[:, 1:] * x[:, :-1]).mean() / x.var())

    assert abs(lag1(white)) < 0.05 and lag1(brown) > 0.7


def test_discrete_cem_beats_random_shooting_at_equal_budget(toys):
    """A 6-step lock with a lure, horizon 10: 4**10 ~ 1e6 sequences, one optimum (6 x 0.5 + 4 x 5 = 23).
    Random shooting gets as many imagined sequences as discrete CEM used (polish included)."""
    model = toys.ChainModel(key=(2, 0, 3, 1, 2, 0))
    cem_returns, shooting_returns = [], []
    for seed in range(6):
        cem = make_planner("discrete_cem", model, toys.chain_reward, 10, num_samples=500, num_elites=50, iterations=5,
                           seed=seed)
        _, info = cem.plan(model.state())
        shooting = make_planner("shooting", model, toys.chain_reward, 10, num_samples=info.samples, seed=seed)
        _, shot = shooting.plan(model.state())
        assert shot.samples == info.samples
        cem_returns.append(info.predicted_return)
        shooting_returns.append(shot.predicted_return)
    cem_returns, shooting_returns = np.array(cem_returns), np.array(shooting_returns)
    assert (cem_returns > shooting_returns).all(), (cem_returns, shooting_returns)
    assert (np.isclose(cem_returns, 23.0)).sum() >= 4 and not np.isclose(shooting_returns, 23.0).any()
