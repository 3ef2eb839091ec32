"""Mutation-audit tests of the closed loop's outcome counting with a world whose violations do NOT end the episode.

``EpisodeLog.violations`` is documented as the number of steps on which a boundary was crossed ("0 or 1 when
violations terminate"), and ``summarize(...).violation_rate`` as the fraction of episodes with at least one. Every
shipped world terminates on a violation, so the session-8 mutation audit found that capping the count at 1, or
turning the rate into "violating steps / episodes", went unnoticed. A scripted four-step world pins both down.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from planning.closed_loop import Policy, PolicyStep, run_closed_loop
from planning.evaluation import summarize
from probes.stats import clopper_pearson
from worlds.base import StepResult, VectorWorld
from worlds.concepts import Concept, ConceptSchema

LENGTH = 4


class SoftBoundaryWorld(VectorWorld):
    """Episodes of exactly ``LENGTH`` steps; action 1 crosses a boundary (reward -1) WITHOUT ending the episode;
    an episode with no violation succeeds on its last step."""

    name = "soft_boundary"
    families = ("plain",)

    def __init__(self, num_envs: int):
        self.num_envs = num_envs
        self.schema = ConceptSchema((Concept("crossed", "binary", "crossed a boundary on the last step"),))
        self.single_observation_space = gym.spaces.Box(0.0, 1.0, (1,), np.float32)
        self.single_action_space = gym.spaces.Discrete(2)
        self.t = np.zeros(num_envs, np.int64)
        self.bad = np.zeros(num_envs, np.int64)
        self.last = np.zeros(num_envs, bool)

    def _obs(self):
        return (self.t[:, None] / LENGTH).astype(np.float32)

    def reset(self, seed=None, mask=None):
        m = self._reset_mask(seed, mask)
        self.t[m], self.bad[m], self.last[m] = 0, 0, False
        return self._obs()

    def step(self, actions):
        a = np.asarray(actions, np.int64)
        self.t += 1
        violation = a == 1
        self.bad += violation
        self.last = violation
        done = self.t >= LENGTH
        success = done & (self.bad == 0)
        reward = np.where(violation, -1.0, np.where(success, 1.0, 0.0)).astype(np.float32)
        return StepResult(self._obs(), reward, done, np.zeros(self.num_envs, bool), success, violation)

    def concepts(self):
        return {"crossed": self.last.astype(np.int64)}

    def family(self):
        return np.zeros(self.num_envs, np.int64)

    def oracle_actions(self):
        return np.zeros(self.num_envs, np.int64)


class Scripted(Policy):
    """Env 0 crosses the boundary on steps 1 and 3 of its episode, env 1 on step 2 only, envs >= 2 never."""

    name = "scripted"

    def act(self, world, obs, mask):
        t = world.t
        a = np.zeros(world.num_envs, np.int64)
        a[0] = int(t[0] in (0, 2))
        if world.num_envs > 1:
            a[1] = int(t[1] == 1)
        return PolicyStep(a, {})


def test_every_violating_step_is_counted_and_the_rate_counts_episodes():
    log = run_closed_loop(SoftBoundaryWorld(4), Scripted(), 4, seed=0)
    assert log.env.tolist() == [0, 1, 2, 3]
    assert log.steps.tolist() == [LENGTH] * 4
    assert log.violations.tolist() == [2, 1, 0, 0]              # steps crossed, not "crossed at all"
    assert log.success.tolist() == [False, False, True, True]
    np.testing.assert_allclose(log.true_return, [-2.0, -1.0, 1.0, 1.0])
    s = summarize(log, n_boot=50)
    assert s.violation_rate.estimate == 0.5                    # 2 of 4 episodes had at least one violation
    lo, hi = clopper_pearson(2, 4)
    assert (s.violation_rate.lower, s.violation_rate.upper) == pytest.approx((float(lo), float(hi)))
    assert s.success_rate.estimate == 0.5


def test_rates_use_the_requested_level():
    log = run_closed_loop(SoftBoundaryWorld(4), Scripted(), 4, seed=0)
    s = summarize(log, n_boot=50, level=0.8)
    lo, hi = clopper_pearson(2, 4, 0.8)
    assert s.violation_rate.level == 0.8
    assert (s.violation_rate.lower, s.violation_rate.upper) == pytest.approx((float(lo), float(hi)))
    assert (s.success_rate.lower, s.success_rate.upper) == pytest.approx((float(lo), float(hi)))


def _hand_log(values_by_episode, truth_by_episode, reads_by_episode):
    """An :class:`EpisodeLog` built by hand: decisions and visited states grouped by episode."""
    from planning.closed_loop import Decisions, EpisodeLog, Visited

    e = len(values_by_episode)
    ep = np.concatenate([np.full(len(v), i) for i, v in enumerate(values_by_episode)])
    pred = np.concatenate(values_by_episode).astype(np.float64)
    z = np.zeros(len(ep))
    dec = Decisions(ep, np.concatenate([np.arange(len(v)) for v in values_by_episode]), pred, z, z, z, z, z.astype(bool))
    vep = np.concatenate([np.full(len(v), i) for i, v in enumerate(truth_by_episode)])
    vis = Visited(vep, np.concatenate([np.arange(len(v)) for v in truth_by_episode]),
                  {"crossed": np.concatenate(truth_by_episode)}, {"crossed": np.concatenate(reads_by_episode)})
    ones = np.ones(e)
    return EpisodeLog("hand", ones, ones.astype(bool), np.zeros(e, np.int64), np.full(e, 5), np.zeros(e, bool), ones,
                      np.arange(e), dec, vis)


def test_decision_and_visited_intervals_resample_whole_episodes():
    """Equal-sized episodes whose rows are constant within the episode: the cluster bootstrap of the rows is the
    i.i.d. bootstrap of the episode values (same seed, same draws) -- a row bootstrap would be far narrower."""
    from planning.evaluation import visited_accuracy
    from probes.stats import bootstrap

    values = [np.full(5, v) for v in (0.0, 1.0, 5.0, 2.0)]
    truth = [np.array([1, 0, 1, 0])] * 4
    right = [np.array([1, 0, 1, 0]), np.array([0, 1, 0, 1]), np.array([1, 0, 1, 0]), np.array([0, 1, 0, 1])]
    log = _hand_log(values, truth, right)
    s = summarize(log, n_boot=400, seed=3)
    ref = bootstrap(np.mean, np.array([0.0, 1.0, 5.0, 2.0]), groups=np.arange(4), n_boot=400, seed=3)
    assert s.predicted_return.n_groups == 4
    assert (s.predicted_return.lower, s.predicted_return.upper) == pytest.approx((ref.lower, ref.upper))
    acc = visited_accuracy(log, SoftBoundaryWorld(1).schema, n_boot=400, seed=3)["crossed"]["accuracy"]
    ref_acc = bootstrap(np.mean, np.array([1.0, 0.0, 1.0, 0.0]), groups=np.arange(4), n_boot=400, seed=3)
    assert acc.n_groups == 4 and acc.estimate == 0.5
    assert (acc.lower, acc.upper) == pytest.approx((ref_acc.lower, ref_acc.upper))


class Informed(Scripted):
    """:class:`Scripted` plus a :class:`PlanInfo` per acting env (horizon 2, undiscounted), so decisions are logged."""

    def act(self, world, obs, mask):
        from planning.planner import PlanInfo

        out = super().act(world, obs, mask)
        info = PlanInfo(predicted_return=0.0, predicted_cost=0.0, feasible=True, elite_spread=0.0, latency_ms=0.0,
                        samples=1, horizon=2, discount=1.0)
        return PolicyStep(out.actions, {int(i): info for i in np.flatnonzero(mask)})


def test_an_env_that_runs_several_episodes_restarts_its_step_count():
    log = run_closed_loop(SoftBoundaryWorld(1), Informed(), 3, seed=0)
    d = log.decisions
    assert log.env.tolist() == [0, 0, 0] and log.violations.tolist() == [2, 2, 2]
    assert d.episode.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert d.step.tolist() == [0, 1, 2, 3] * 3
    # world rewards of each episode: -1, 0, -1, 0; the next two of them after each decision
    np.testing.assert_allclose(d.realised_return, [-1.0, -1.0, -1.0, 0.0] * 3)
    assert log.visited.step.tolist() == [0, 1, 2, 3, 4] * 3
