"""The closed loop on tiny worlds, end to end: baselines, planners on the oracle model, the latent path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import binomtest

from dynamics import build_model
from planning import concept_reward, make_planner, oracle_model
from planning.closed_loop import (LatentFilter, ModelPlannerPolicy, OraclePolicy, PolicyStep, RandomPolicy,
                                  TrueStatePlannerPolicy, run_closed_loop, true_step_reward)
from planning.evaluation import rate, summarize, visited_accuracy
from planning.planner import PlanInfo
from probes import LinearProbe, Normalizer, Ontology, OntologyEntry
from rewards import RewardSpec
from worlds import make_world
from worlds.lavakeydoor.world import LavaKeyDoor, LavaKeyDoorParams

# Lava between the start and the goal: walking straight right dies, the way round is 6 steps.
LAYOUT = """
#######
#.....#
#A.L.G#
#..L..#
#.....#
#.....#
#######
"""
REWARD = RewardSpec("-0.1 * steps_to_goal - 10 * in_lava")


def tiny_world(num_envs: int = 4, max_steps: int = 30) -> LavaKeyDoor:
    return LavaKeyDoor.from_layouts([LAYOUT], num_envs=num_envs, params=LavaKeyDoorParams(max_steps=max_steps))


def tiny_model(world, hidden: int = 16):
    torch.manual_seed(0)
    spec = {"shape": list(world.single_observation_space.shape), "kind": world.obs_kind}
    return build_model("gru", spec, {"discrete": True, "n": 5}, deter=hidden, hidden=hidden, embed=hidden).eval()


def synthetic_ontology(schema, names, d: int, site: str = "deter", seed: int = 0) -> Ontology:
    """Linear probes with random weights on ``site`` (they read *something*: enough to drive the latent path)."""
    g = torch.Generator().manual_seed(seed)
    entries = {}
    for n in names:
        c = schema[n]
        k = c.num_classes if c.kind == "categorical" else 1
        probe = LinearProbe(c, Normalizer(torch.zeros(d), torch.ones(d)), {}, torch.randn(k, d, generator=g),
                            torch.full((k,), -1.0 if c.kind == "binary" else 5.0))
        entries[n] = OntologyEntry(c, "linear", site, (d,), probe, "r2" if c.kind == "scalar" else "balanced_accuracy", 0.9)
    return Ontology(entries)


def test_oracle_succeeds_and_random_is_worse():
    oracle = run_closed_loop(tiny_world(), OraclePolicy(), 8, seed=0)
    rand = run_closed_loop(tiny_world(), RandomPolicy(0), 8, seed=0)
    assert oracle.success.all() and (oracle.violations == 0).all()
    assert (oracle.steps == 6).all()                               # the shortest path round the lava
    np.testing.assert_allclose(oracle.true_return, 1 - 5 * 0.01)    # 5 step costs, then +1
    assert rand.success.mean() < 0.5 and rand.true_return.mean() < oracle.true_return.mean() - 0.5
    for log in (oracle, rand):                                     # every episode ran exactly once
        assert log.num_episodes == 8 and (log.steps >= 1).all() and set(log.env) <= set(range(4))
        assert ((log.success | (log.violations > 0)) | log.truncated).all()
        # visited: the start plus one state per step, for every episode
        assert np.array_equal(np.bincount(log.visited.episode, minlength=8), log.steps + 1)
        assert not log.visited.readings and len(log.decisions.episode) == 0


def test_planner_on_the_oracle_model_with_the_true_reward_reaches_the_goal():
    world = tiny_world()
    oracle = oracle_model(world)
    planner = make_planner("discrete_cem", oracle, oracle.true_reward(REWARD), 8, num_samples=64, num_elites=8,
                           iterations=3, seed=0)
    log = run_closed_loop(world, TrueStatePlannerPolicy(oracle, planner, world.num_envs), 6, seed=0)
    assert log.success.all() and (log.violations == 0).all()
    assert (log.steps <= 8).all()
    d = log.decisions
    assert len(d.episode) == log.steps.sum()                       # one decision per real step
    assert np.isfinite(d.predicted_return).all() and (d.latency_ms > 0).all() and (d.elite_spread >= 0).all()
    assert (log.ms_per_step > 0).all()


def test_latent_filter_equals_observe_on_the_whole_episode():
    """The batched step-by-step filter agrees with one observe() call on each env's episode so far."""
    world = tiny_world(num_envs=3, max_steps=5)
    model = tiny_model(world)
    f = LatentFilter(model, 3)
    rng = np.random.default_rng(0)
    obs = world.reset(seed=0)
    f.start(obs, np.ones(3, bool))
    hist = [[(o, 0)] for o in obs]
    for _ in range(7):
        a = world.sample_actions(rng)
        res = world.step(a)
        active = np.array([True, False, True])
        f.update(res.obs, a, active)
        for i in np.flatnonzero(active):
            hist[i].append((res.obs[i], int(a[i])))
        done = active & (res.terminated | res.truncated)
        if done.any():
            obs = world.reset(mask=done)
            f.start(obs, done)
            for i in np.flatnonzero(done):
                hist[i] = [(obs[i], 0)]
        for i in (0, 2):
            o = torch.as_tensor(np.stack([h[0] for h in hist[i]]))[None]
            act = torch.as_tensor([h[1] for h in hist[i]])[None]
            first = torch.zeros(act.shape, dtype=torch.bool)
            first[0, 0] = True
            with torch.inference_mode():
                ref = model.observe(o, act, first)["deter"][0, -1]
            torch.testing.assert_close(f.state["deter"][i], ref, rtol=1e-5, atol=1e-5)


def test_latent_path_runs_with_a_tiny_model_and_synthetic_probes():
    world = tiny_world(num_envs=2, max_steps=6)
    model = tiny_model(world)
    ontology = synthetic_ontology(world.schema, ("in_lava", "steps_to_goal", "has_key"), 16)
    reward_fn = concept_reward(REWARD.compile(world.schema), ontology.resolver)
    planner = make_planner("discrete_cem", model, reward_fn, 4, num_samples=16, num_elites=4, iterations=2, seed=0)
    policy = ModelPlannerPolicy(model, planner, world.num_envs, reader=ontology.resolver, read_names=ontology.concepts)
    log = run_closed_loop(world, policy, 3, seed=0)
    assert log.num_episodes == 3 and len(log.decisions.episode) == log.steps.sum()
    assert set(log.visited.readings) == {"in_lava", "steps_to_goal", "has_key"}
    m = log.visited.episode.size
    assert all(v.shape == (m,) for v in log.visited.readings.values())
    # the readings are the probes applied to the filtered posterior: recompute one independently
    acc = visited_accuracy(log, world.schema, n_boot=50)
    assert set(acc["in_lava"]) == {"balanced_accuracy", "accuracy"} and set(acc["steps_to_goal"]) == {"r2", "mae"}
    truth, pred = log.visited.truth["in_lava"], log.visited.readings["in_lava"]
    assert acc["in_lava"]["accuracy"].estimate == pytest.approx(np.mean(truth == pred))
    s = summarize(log, n_boot=50)
    assert s.predicted_return is not None and np.isfinite(s.predicted_return.estimate)


def test_continuous_world_runs_cem_on_the_oracle_model():
    world = make_world("pointmass", num_envs=2, seed=0, max_steps=12)
    oracle = oracle_model(world)
    spec = RewardSpec("-dist_to_goal - 10 * in_hazard")
    planner = make_planner("cem", oracle, oracle.true_reward(spec), 5, num_samples=32, num_elites=4, iterations=2, seed=0)
    log = run_closed_loop(world, TrueStatePlannerPolicy(oracle, planner, 2), 2, seed=0)
    assert log.num_episodes == 2 and (log.steps <= 12).all() and np.isfinite(log.true_return).all()
    # the planner moves the mass towards the goal: every episode ends nearer than it started
    v = log.visited
    for e in range(2):
        d = v.truth["dist_to_goal"][v.episode == e][np.argsort(v.step[v.episode == e])]
        assert d[-1] < d[0] - 0.05


def test_rates_use_exact_clopper_pearson_intervals():
    for hits, n in ((0, 10), (3, 10), (10, 10), (17, 40)):
        ci = binomtest(hits, n).proportion_ci(0.95, method="exact")
        e = rate(hits, n)
        assert e.estimate == hits / n
        assert e.lower == pytest.approx(ci.low, abs=1e-9) and e.upper == pytest.approx(ci.high, abs=1e-9)


@pytest.mark.parametrize("name", ["gru", "rssm"])
def test_incremental_filter_leaves_closed_loop_results_unchanged(name):
    """The O(1) filter (observe from the last posterior) and the exact re-filter of each whole episode
    drive the same planner to the same decisions, returns and probe readings."""
    logs = []
    for incremental in (True, False):
        world = tiny_world(num_envs=2, max_steps=6)
        torch.manual_seed(0)
        spec = {"shape": list(world.single_observation_space.shape), "kind": world.obs_kind}
        model = build_model(name, spec, {"discrete": True, "n": 5}, deter=16, hidden=16, embed=16,
                            **({"stoch": 4, "classes": 4} if name == "rssm" else {})).eval()
        ontology = synthetic_ontology(world.schema, ("in_lava", "steps_to_goal"), 16)
        reward_fn = concept_reward(REWARD.compile(world.schema), ontology.resolver)
        planner = make_planner("discrete_cem", model, reward_fn, 3, num_samples=16, num_elites=4, iterations=2, seed=0)
        policy = ModelPlannerPolicy(model, planner, 2, reader=ontology.resolver, read_names=ontology.concepts)
        policy.observer = LatentFilter(model, 2, incremental=incremental)
        assert policy.observer.incremental is incremental
        logs.append(run_closed_loop(world, policy, 4, seed=0))
    a, b = logs
    np.testing.assert_array_equal(a.true_return, b.true_return)
    np.testing.assert_array_equal(a.steps, b.steps)
    np.testing.assert_allclose(a.decisions.predicted_return, b.decisions.predicted_return, rtol=1e-5, atol=1e-5)
    for k in a.visited.readings:   # float rounding only (batched vs per-step matmuls)
        np.testing.assert_allclose(a.visited.readings[k], b.visited.readings[k], rtol=1e-5, atol=1e-5)


def test_finite_context_uses_the_exact_refilter():
    world = tiny_world(num_envs=2)
    model = tiny_model(world)
    assert LatentFilter(model, 2).incremental and not LatentFilter(model, 2, context=3).incremental
    with pytest.raises(ValueError, match="context=3 needs the exact re-filter"):
        LatentFilter(model, 2, context=3, incremental=True)


class ScriptedPlanner(OraclePolicy):
    """The oracle's actions, each logged as the decision of a planner with horizon 3 and discount 0.9."""

    name = "scripted"

    def act(self, world, obs, mask):
        info = PlanInfo(predicted_return=0.0, predicted_cost=0.0, feasible=True, elite_spread=0.0, latency_ms=0.0,
                        samples=1, horizon=3, discount=0.9)
        return PolicyStep(world.oracle_actions(), {int(i): info for i in np.flatnonzero(mask)})


def test_realised_return_sums_the_next_horizon_true_rewards_discounted_and_cut_at_the_end():
    # the oracle's 6 steps round the lava: world rewards -0.01 x 5, then +1 at the goal;
    # the spec's true reward of the states reached: -0.1 * steps_to_goal = -0.5, -0.4, ..., -0.1, 0
    by_world = run_closed_loop(tiny_world(2), ScriptedPlanner(), 2, seed=0)
    by_spec = run_closed_loop(tiny_world(2), ScriptedPlanner(), 2, seed=0,
                              true_reward=true_step_reward(REWARD, tiny_world(1).schema))
    world_ref = [-0.0271, -0.0271, -0.0271, -0.01 - 0.009 + 0.81, -0.01 + 0.9, 1.0]     # sum_k 0.9**k r[t + k], k < 3
    spec_ref = [-0.5 - 0.36 - 0.243, -0.4 - 0.27 - 0.162, -0.3 - 0.18 - 0.081, -0.2 - 0.09, -0.1, 0.0]
    for log, ref in ((by_world, world_ref), (by_spec, spec_ref)):
        d = log.decisions
        assert (log.steps == 6).all() and len(d.step) == 12
        for e in range(2):
            order = np.argsort(d.step[d.episode == e])
            np.testing.assert_allclose(d.realised_return[d.episode == e][order], ref, atol=1e-12)
    with pytest.raises(ValueError, match=r"true_reward must return one reward per env, shape \(2,\)"):
        run_closed_loop(tiny_world(2), ScriptedPlanner(), 2, true_reward=lambda c: np.zeros(3))


def test_on_the_oracle_the_realised_return_of_the_optimal_path_is_the_predicted_one():
    world = tiny_world()
    oracle = oracle_model(world)
    planner = make_planner("exhaustive", oracle, oracle.true_reward(REWARD), 4, seed=0)
    log = run_closed_loop(world, TrueStatePlannerPolicy(oracle, planner, world.num_envs), 4, seed=0,
                          true_reward=true_step_reward(REWARD, world.schema))
    assert (log.steps == 6).all() and log.success.all()                # the shortest path, every time
    # the plan is followed and the goal's reward is 0: the real states pay what the oracle imagined
    np.testing.assert_allclose(log.decisions.realised_return, log.decisions.predicted_return, atol=1e-6)


CONSTANT = RewardSpec("-0.01")


def constant_reward_checks(log, horizon: int) -> None:
    d = log.decisions
    assert len(d.step) == log.steps.sum() > 0
    np.testing.assert_allclose(d.predicted_return, -0.01 * horizon, rtol=1e-6)
    remaining = log.steps[d.episode] - d.step                         # real steps left after each decision
    np.testing.assert_allclose(d.realised_return, -0.01 * np.minimum(horizon, remaining), rtol=1e-9)


def test_a_constant_reward_plans_on_the_oracle_and_on_the_latent_path():
    world = tiny_world(num_envs=2, max_steps=4)
    oracle = oracle_model(world)
    planner = make_planner("discrete_cem", oracle, oracle.true_reward(CONSTANT), 3, num_samples=8, num_elites=2,
                           iterations=1, seed=0)
    log = run_closed_loop(world, TrueStatePlannerPolicy(oracle, planner, 2), 2, seed=0,
                          true_reward=true_step_reward(CONSTANT, world.schema))
    constant_reward_checks(log, 3)
    model = tiny_model(world)
    ontology = synthetic_ontology(world.schema, ("in_lava",), 16)
    reward_fn = concept_reward(CONSTANT.compile(world.schema), ontology.resolver)
    out = reward_fn(model.imagine(model.initial(5), torch.zeros(5, 3, dtype=torch.long)), torch.zeros(5, 3))
    assert out.reward.shape == out.cost.shape == (5, 3) and out.reward.dtype == torch.float32
    planner = make_planner("discrete_cem", model, reward_fn, 3, num_samples=8, num_elites=2, iterations=1, seed=0)
    log = run_closed_loop(world, ModelPlannerPolicy(model, planner, 2), 2, seed=0,
                          true_reward=true_step_reward(CONSTANT, world.schema))
    constant_reward_checks(log, 3)
