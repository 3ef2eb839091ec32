"""Collection policies: oracle equality, uniform exploration, mixtures, reproducibility, errors."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from worlds.policies import EpsilonOraclePolicy, MixturePolicy, RandomPolicy, make_policy, policy_names


def test_epsilon_zero_is_the_oracle(corridor, point_corridor):
    for world in (corridor(num_envs=64), point_corridor(num_envs=64)):
        world.reset(seed=0)
        rng = np.random.default_rng(0)
        for _ in range(5):
            a = EpsilonOraclePolicy(0.0)(world, rng)
            np.testing.assert_array_equal(a, world.oracle_actions())
            res = world.step(a)
            world.reset(mask=res.terminated | res.truncated)


def test_epsilon_one_is_uniform_chi_square(corridor):
    world = corridor(num_envs=3000)
    world.reset(seed=0)
    a = EpsilonOraclePolicy(1.0)(world, np.random.default_rng(1))
    counts = np.bincount(a, minlength=3)
    assert stats.chisquare(counts).pvalue > 1e-3  # uniform over the 3 actions
    # ... and it ignores the oracle: agreement is at chance level (1/3), not 1
    assert abs((a == world.oracle_actions()).mean() - 1 / 3) < 0.05


def test_epsilon_mixes_at_the_stated_rate(corridor, point_corridor):
    world = corridor(num_envs=20000)
    world.reset(seed=0)
    a = EpsilonOraclePolicy(0.3)(world, np.random.default_rng(2))
    # disagreement = eps * P(random != oracle) = 0.3 * 2/3
    assert abs((a != world.oracle_actions()).mean() - 0.2) < 0.015
    pw = point_corridor(num_envs=5000)
    pw.reset(seed=0)
    b = EpsilonOraclePolicy(1.0)(pw, np.random.default_rng(3))
    assert b.shape == (5000, 1) and b.dtype == np.float32 and (np.abs(b) <= 1).all()
    assert stats.kstest(b[:, 0], stats.uniform(loc=-1, scale=2).cdf).pvalue > 1e-3


@pytest.mark.parametrize("name,kw", [("random", {}), ("epsilon_oracle", {"epsilon": 0.5}),
                                     ("mixture", {"components": [{"name": "random"}, {"name": "oracle"}], "weights": [1, 3]})])
def test_reproducible_with_a_seed(corridor, name, kw):
    def run(seed):
        world, policy, rng = corridor(num_envs=8, seed=0), make_policy(name, **kw), np.random.default_rng(seed)
        world.reset(seed=0)
        policy.reset(world, rng)
        out = []
        for _ in range(10):
            a = policy(world, rng)
            res = world.step(a)
            done = res.terminated | res.truncated
            world.reset(mask=done)
            policy.reset(world, rng, done)
            out.append(a)
        return np.stack(out)
    np.testing.assert_array_equal(run(4), run(4))
    if name != "oracle":
        assert not np.array_equal(run(4), run(5))


def test_mixture_keeps_one_component_per_episode_and_redraws_at_reset(corridor):
    world = corridor(num_envs=4000)
    world.reset(seed=0)
    rng = np.random.default_rng(0)
    mix = MixturePolicy([EpsilonOraclePolicy(0.0), RandomPolicy()], weights=[0.25, 0.75])
    mix.reset(world, rng)
    first = mix.assignment.copy()
    assert abs((first == 0).mean() - 0.25) < 0.03
    oracle_envs = first == 0
    for _ in range(3):
        np.testing.assert_array_equal(mix(world, rng)[oracle_envs], world.oracle_actions()[oracle_envs])
        np.testing.assert_array_equal(mix.assignment, first)  # no redraw without a reset
    mask = np.arange(4000) % 2 == 0
    mix.reset(world, rng, mask)
    np.testing.assert_array_equal(mix.assignment[~mask], first[~mask])
    assert (mix.assignment[mask] != first[mask]).any()
    only_oracle = MixturePolicy([EpsilonOraclePolicy(0.0), RandomPolicy()], weights=[1, 0])
    np.testing.assert_array_equal(only_oracle(world, rng), world.oracle_actions())


def test_make_policy_errors():
    assert policy_names() == ("epsilon_oracle", "mixture", "oracle", "random")
    with pytest.raises(ValueError, match="known policies: epsilon_oracle, mixture, oracle, random"):
        make_policy("greedy")
    with pytest.raises(ValueError, match="bad arguments"):
        make_policy("random", epsilon=0.1)
    with pytest.raises(ValueError, match=r"epsilon must lie in \[0, 1\]"):
        make_policy("epsilon_oracle", epsilon=1.5)
    with pytest.raises(ValueError, match="weights must be 2"):
        make_policy("mixture", components=[{"name": "random"}, {"name": "oracle"}], weights=[1])
    with pytest.raises(ValueError, match="pass epsilon only"):
        make_policy("mixture", components=[{"name": "random"}], epsilon=0.2)
    default = make_policy("mixture", epsilon=0.2)
    assert default.weights == (0.5, 0.5) and default.policies[0] == EpsilonOraclePolicy(0.2)
    with pytest.raises(ValueError, match="components must be"):
        make_policy("mixture", components=["random"])
