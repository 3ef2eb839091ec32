"""The oracle adapters imagine exactly what the real worlds do, and planning on them with the true
reward solves lavakeydoor. The references are the worlds themselves (numpy), stepped env by env."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from planning import make_planner, oracle_model
from rewards import RewardSpec
from worlds.lavakeydoor import LavaKeyDoor
from worlds.pointmass import PointMass

STEPS = 40


def roll_world(world, actions_fn, steps: int):
    """Step ``world`` with ``actions_fn(t)``; returns actions ``[n T ...]``, per-step concepts and ``alive[n T]``
    (true up to and including each env's terminating step)."""
    acts, concepts, alive = [], [], []
    done = np.zeros(world.num_envs, bool)
    for t in range(steps):
        a = actions_fn(t)
        res = world.step(a)
        acts.append(a)
        concepts.append(world.concepts())
        alive.append(~done)
        done |= res.terminated
    return np.stack(acts, 1), concepts, np.stack(alive, 1)


def assert_concepts_match(oracle, imagined, concepts, alive, atol=0.0):
    values = oracle.concepts(imagined)
    for t, truth in enumerate(concepts):
        m = alive[:, t]
        for name, v in truth.items():
            got = values[name][:, t].double().numpy()[m]
            np.testing.assert_allclose(got, v.astype(np.float64)[m], atol=atol, err_msg=f"{name} at step {t}")


def test_lavakeydoor_imagine_equals_the_world():
    world = LavaKeyDoor(64, seed=3)
    oracle = oracle_model(world)
    start = oracle.state_of(world)
    rng = np.random.default_rng(0)
    # mostly the expert (so keys, doors and goals are reached), sometimes random (walls, lava, noops)
    pick = lambda t: np.where(rng.random(64) < 0.7, world.oracle_actions(), rng.integers(0, 5, 64))
    actions, concepts, alive = roll_world(world, pick, STEPS)
    assert any(c["door_open"].any() for c in concepts) and any(c["at_goal"].any() for c in concepts)
    assert any(c["in_lava"].any() for c in concepts)
    imagined = oracle.imagine(start, torch.as_tensor(actions))
    assert imagined["pos"].shape == (64, STEPS, 2) and imagined["cells"].shape == (64, STEPS, 9, 9)
    assert_concepts_match(oracle, imagined, concepts, alive)
    # after the end the state is absorbing
    done = imagined["done"]
    assert torch.all(done[:, 1:] >= done[:, :-1])
    frozen = done[:, :-1]
    assert torch.equal(imagined["pos"][:, 1:][frozen], imagined["pos"][:, :-1][frozen])


def test_lavakeydoor_state_roundtrip():
    world = LavaKeyDoor(8, seed=1)
    for _ in range(5):
        world.step(world.oracle_actions())
    snap = world.get_state()
    obs_before = world.step(world.oracle_actions()).obs
    world.set_state(snap)
    np.testing.assert_array_equal(world.step(world.oracle_actions()).obs, obs_before)
    with pytest.raises(ValueError, match="state must have cells"):
        LavaKeyDoor(2, seed=0).set_state(snap)


def test_pointmass_imagine_equals_the_world():
    world = PointMass(32, seed=5)
    world.reset()
    oracle = oracle_model(world, dtype=torch.float64)
    start = oracle.state_of(world)
    rng = np.random.default_rng(1)
    pick = lambda t: np.where(rng.random((32, 1)) < 0.6, world.oracle_actions(), rng.uniform(-1.5, 1.5, (32, 2)))
    actions, concepts, alive = roll_world(world, pick, STEPS)
    assert any(c["at_goal"].any() for c in concepts) or any(c["in_hazard"].any() for c in concepts)
    imagined = oracle.imagine(start, torch.as_tensor(actions))
    assert imagined["pos"].shape == (32, STEPS, 2) and imagined["goal"].shape == (32, STEPS, 2)
    assert_concepts_match(oracle, imagined, concepts, alive, atol=1e-9)


def test_oracle_reward_equals_the_spec_on_true_values():
    world = PointMass(16, seed=2)
    world.reset()
    oracle = oracle_model(world, dtype=torch.float64)
    spec = RewardSpec("at_goal - 10 * in_hazard - dist_to_goal", constraints=("never near_hazard",))
    out = oracle.true_reward(spec)(oracle.state_of(world), torch.zeros(16, 2))
    ref = spec.true_reward(world.schema, world.concepts())
    torch.testing.assert_close(out.reward, ref.reward)
    torch.testing.assert_close(out.cost, ref.cost)


def test_oracle_refuses_what_it_cannot_do():
    oracle = oracle_model(LavaKeyDoor(1, seed=0))
    with pytest.raises(NotImplementedError, match="state_of"):
        oracle.initial(1)
    with pytest.raises(ValueError, match="lavakeydoor world"):
        oracle.state_of(PointMass(1, seed=0))


LAVA_REWARD = RewardSpec("-0.1 * steps_to_goal - 10 * in_lava", constraints=("never in_lava",))


def run_lavakeydoor(planner_name: str, episodes: int, horizon: int, **kw) -> tuple[float, int, float]:
    """(success rate, lava entries, mean steps) of closed-loop planning on the oracle, one env per episode."""
    world = LavaKeyDoor(1, seed=0)
    oracle = oracle_model(world)
    planner = make_planner(planner_name, oracle, oracle.true_reward(LAVA_REWARD), horizon, seed=0, **kw)
    successes, lava, steps = 0, 0, []
    for ep in range(episodes):
        world.reset(seed=100 + ep)
        planner.reset()
        for t in range(world.params.time_limit):
            action, _ = planner.plan(oracle.state_of(world))
            res = world.step(np.array([int(action)]))
            if res.terminated[0] or res.truncated[0]:
                break
        successes += int(res.success[0])
        lava += int(res.violation[0])
        steps.append(t + 1)
    return successes / episodes, lava, float(np.mean(steps))


@pytest.mark.parametrize("name", ["discrete_cem", "shooting"])
def test_planning_on_the_oracle_solves_lavakeydoor(name):
    rate, lava, _ = run_lavakeydoor(name, episodes=20, horizon=15, num_samples=256, **(
        dict(num_elites=25, iterations=3) if name == "discrete_cem" else {}))
    assert rate >= 0.8 and lava == 0


def expert_steps(episodes: int) -> float:
    """Mean episode length of the world's shortest-path expert on the layouts :func:`run_lavakeydoor` uses."""
    world, steps = LavaKeyDoor(1, seed=0), []
    for ep in range(episodes):
        world.reset(seed=100 + ep)
        for t in range(world.params.time_limit):
            res = world.step(world.oracle_actions())
            if res.terminated[0] or res.truncated[0]:
                break
        assert res.success[0]
        steps.append(t + 1)
    return float(np.mean(steps))


def test_exhaustive_search_on_the_oracle_walks_the_shortest_paths():
    # -0.1 * steps_to_goal falls by 0.1 per step along a shortest path (key, door, goal), so the exact
    # optimum of even a 3-step horizon is a shortest path: exhaustive search must match the BFS expert
    rate, lava, steps = run_lavakeydoor("exhaustive", episodes=20, horizon=3)
    assert rate == 1.0 and lava == 0 and steps == expert_steps(20)


CONTINUOUS = {"cem": dict(num_samples=128, num_elites=16, iterations=3),
              "icem": dict(num_samples=128, num_elites=16, iterations=3),
              "mppi": dict(num_samples=128, iterations=3)}


@pytest.mark.parametrize("name", sorted(CONTINUOUS))
def test_continuous_planners_on_the_pointmass_oracle_reach_the_goal(name):
    world = PointMass(1, seed=0)
    oracle = oracle_model(world)
    reward_fn = oracle.true_reward(RewardSpec("-dist_to_goal - 10 * in_hazard", constraints=("never in_hazard",)))
    planner = make_planner(name, oracle, reward_fn, 15, seed=0, **CONTINUOUS[name])
    outcomes = []
    for ep in range(3):
        world.reset(seed=200 + ep)
        planner.reset()
        for _ in range(world.params.max_steps):
            action, info = planner.plan(oracle.state_of(world))
            res = world.step(action.numpy()[None].astype(np.float64))
            if res.terminated[0] or res.truncated[0]:
                break
        outcomes.append((bool(res.success[0]), bool(res.violation[0])))
    assert outcomes == [(True, False)] * 3
