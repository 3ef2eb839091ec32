"""Per-env warm starts: one planner serving several envs never warm-starts an env from another env's search
(its shifted plan, or iCEM's kept elites), and each env gets its own warm state back."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from planning import ICEM, make_planner, oracle_model
from planning.closed_loop import TrueStatePlannerPolicy
from rewards import RewardSpec
from worlds.pointmass import PointMass


class RecordingICEM(ICEM):
    """iCEM that records the kept elites it starts each decision from and those it leaves behind."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.seen: list[torch.Tensor | None] = []
        self.left: list[torch.Tensor] = []

    def _optimise(self, state, warm, generator):
        self.seen.append(None if self._kept is None else self._kept.clone())
        out = super()._optimise(state, warm, generator)
        self.left.append(self._kept.clone())
        return out


def icem_policy(num_envs: int):
    world = PointMass(num_envs, seed=0)
    oracle = oracle_model(world)
    planner = RecordingICEM(oracle, oracle.true_reward(RewardSpec("-dist_to_goal")), 5, num_samples=32,
                            num_elites=8, iterations=2, seed=0)
    return world, planner, TrueStatePlannerPolicy(oracle, planner, num_envs)


def step(world, policy, obs):
    everyone = np.ones(world.num_envs, dtype=bool)
    out = policy.act(world, obs, everyone)
    res = world.step(out.actions.astype(np.float64))
    policy.update(world, res.obs, out.actions, everyone)
    return res.obs


def test_icem_kept_elites_stay_with_their_env():
    world, planner, policy = icem_policy(2)
    obs = world.reset(seed=0)
    policy.start(world, obs, np.ones(2, dtype=bool))
    for _ in range(3):
        obs = step(world, policy, obs)
    # decisions run env 0, env 1, env 0, env 1, ...; env A = 0 plans right before env B = 1
    seen, left = planner.seen, planner.left
    assert len(seen) == 6 and seen[0] is None
    assert seen[1] is None                                          # B's first decision: nothing of A's
    assert not torch.equal(left[0], left[1])                        # the two envs' elites differ
    for k in range(2, 6):                                           # each decision resumes its own env's elites
        torch.testing.assert_close(seen[k], left[k - 2], rtol=0, atol=0)
        assert not torch.equal(seen[k], left[k - 1])                # never the other env's (planned just before)


def test_a_single_env_gets_its_own_kept_elites_back_and_a_new_episode_forgets_them():
    world, planner, policy = icem_policy(1)
    obs = world.reset(seed=1)
    policy.start(world, obs, np.ones(1, dtype=bool))
    for _ in range(3):
        obs = step(world, policy, obs)
    for k in (1, 2):
        torch.testing.assert_close(planner.seen[k], planner.left[k - 1], rtol=0, atol=0)
    obs = world.reset(mask=np.ones(1, dtype=bool))
    policy.start(world, obs, np.ones(1, dtype=bool))                # a new episode in env 0
    step(world, policy, obs)
    assert planner.seen[3] is None


@pytest.mark.parametrize("name", ["shooting", "cem", "icem", "mppi"])
def test_warm_state_round_trip(toys, name):
    model, state = toys.linear(), toys.linear_state()
    kw = dict(num_samples=32) if name in ("shooting", "mppi") else dict(num_samples=32, num_elites=8)
    p = make_planner(name, model, toys.lq_reward, 4, low=-2.0, high=2.0, seed=0, **kw)
    assert p.warm_state() == {k: None for k in p.warm_attributes}
    p.plan(state)
    warm = p.warm_state()
    assert set(warm) == ({"last_plan", "_kept"} if name == "icem" else {"last_plan"})
    assert all(v is not None for v in warm.values())
    p.load_warm_state(None)                                         # a fresh episode, as reset()
    assert all(v is None for v in p.warm_state().values())
    p.load_warm_state(warm)
    assert all(p.warm_state()[k] is v for k, v in warm.items())
    with pytest.raises(ValueError, match=r"warm state needs keys .*pass what this planner's warm_state\(\) returned"):
        p.load_warm_state({"plan": warm["last_plan"]})
