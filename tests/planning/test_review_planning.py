"""Regression tests from the session-8 correctness review of planning/ (each failed on the code before its fix)."""

from __future__ import annotations

import math
import time

import gymnasium as gym
import numpy as np
import pytest
import torch

from planning import RandomPolicy, colored_noise, run_closed_loop
from worlds.base import StepResult, VectorWorld


@pytest.mark.parametrize("beta", [1.0, 2.0])
@pytest.mark.parametrize("horizon", [2, 3, 8, 15])
def test_colored_noise_has_unit_variance_at_every_step(beta, horizon):
    """iCEM samples ``mean + std * eps``: for ``std`` to be the per-step deviation CEM fits, ``eps[:, t]`` must have
    unit variance over samples at every ``t``. The colorednoise normalisation (within-series deviation, DC term left
    out, Nyquist term halved) gave a per-step std of 2.0 at horizon 2 and ~1.16 at horizon 15 (beta = 2)."""
    g = torch.Generator().manual_seed(0)
    eps = colored_noise(beta, 40000, horizon, 2, generator=g, device=torch.device("cpu"), dtype=torch.float64)
    assert eps.shape == (40000, horizon, 2)
    per_step_std = eps.std(0)                                                  # [h a], over samples
    np.testing.assert_allclose(per_step_std.numpy(), 1.0, atol=0.03)
    assert abs(float(eps.mean())) < 0.03


def test_colored_noise_spectrum_still_falls_as_one_over_f_to_the_beta():
    """The normalisation is one scalar: the mean periodogram still has slope ``-beta`` in log-log (independent check
    with numpy's FFT, DC excluded: it is clamped to the lowest frequency by construction)."""
    g = torch.Generator().manual_seed(1)
    h = 64
    for beta in (1.0, 2.0):
        x = colored_noise(beta, 4000, h, 1, generator=g, device=torch.device("cpu"), dtype=torch.float64)[..., 0]
        power = (np.abs(np.fft.rfft(x.numpy(), axis=1)) ** 2).mean(0)[1:-1]
        f = np.fft.rfftfreq(h)[1:-1]
        slope = np.polyfit(np.log(f), np.log(power), 1)[0]
        assert abs(slope + beta) < 0.1, (beta, slope)


class _SlowConceptsWorld(VectorWorld):
    """Every episode lasts ``length`` steps; reading the (evaluation-only) true concepts takes ``delay`` seconds."""

    name, families = "slow_concepts", ("a",)

    def __init__(self, num_envs: int, length: int, delay: float):
        self.num_envs, self.length, self.delay = num_envs, length, delay
        self.single_action_space = gym.spaces.Discrete(2)
        self.single_observation_space = gym.spaces.Box(-1.0, 1.0, (1,))
        self.schema = None
        self.t = np.zeros(num_envs, np.int64)

    def reset(self, seed=None, mask=None):
        self.t[self._reset_mask(seed, mask)] = 0
        return self.t[:, None].astype(np.float32)

    def step(self, actions):
        self.t += 1
        end = self.t >= self.length
        n = self.num_envs
        return StepResult(self.t[:, None].astype(np.float32), np.ones(n, np.float32), end, np.zeros(n, bool),
                          end.copy(), np.zeros(n, bool))

    def concepts(self):
        time.sleep(self.delay)
        return {"t": self.t.astype(np.float64)}

    def family(self):
        return np.zeros(self.num_envs, np.int64)

    def oracle_actions(self):
        return np.zeros(self.num_envs, np.int64)


def test_ms_per_step_leaves_out_the_evaluation_only_concept_reads():
    """``ms_per_step`` is the cost of the policy's ``update`` + ``act``; the loop's reading of the true concepts
    for ``Visited`` is evaluation only. The very first read used to sit inside the timed region, charging
    100 ms / 2 envs / 3 steps ~ 17 ms to every step of the first episodes of a random policy (~0.01 ms)."""
    log = run_closed_loop(_SlowConceptsWorld(2, 3, 0.1), RandomPolicy(0), 2)
    assert (log.steps == 3).all() and (log.true_return == 3).all()
    assert log.ms_per_step.max() < 5.0, log.ms_per_step


def _forbidden_reward(states, actions):
    """The LQ reward, ``-inf`` wherever the first state coordinate exceeds 1.2 (a forbidden region)."""
    from rewards import RewardOutput

    r = -(states.feat**2).sum(-1)
    r = torch.where(states.feat[..., 0] > 1.2, -torch.inf, r)
    return RewardOutput(r, torch.zeros_like(r), {})


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_genuine_minus_inf_return_stays_minus_inf_and_elite_spread_ignores_it(toys, dtype):
    """Only NaN is documented to be replaced; ``torch.nan_to_num``'s defaults also turned ``-inf`` into -3.4e38
    (float32), so ``elite_spread`` -- documented to ignore infinities -- reported ~1.6e38."""
    from planning.rollout import elite_spread, score_sequences

    model = toys.LinearModel(np.eye(2), np.eye(2), dtype=dtype)                                # x' = x + u
    state = toys.linear_state().map(lambda v: v.to(dtype))                                  # x0 = (1, -0.5)
    actions = torch.tensor([[[1.0, 0.0]] * 3, [[-0.1, 0.0]] * 3, [[0.0, 0.0]] * 3, [[float("nan"), 0.0]] * 3],
                           dtype=dtype)
    scores = score_sequences(model, state, actions, _forbidden_reward)
    assert scores.returns[0] == -torch.inf and torch.isfinite(scores.returns[1:3]).all()
    assert scores.returns[3] == -torch.inf                                   # NaN from a broken model: -inf too
    finite = scores.returns[1:3].double()
    assert elite_spread(scores.returns) == pytest.approx(float(finite.std(unbiased=False)), rel=1e-5)


def test_mppi_weights_ignore_minus_inf_samples_and_follow_plus_inf_ones(toys):
    """Non-finite scores get finite stand-ins before the softmax: ``-inf`` samples weigh 0, ``+inf`` ones take all."""
    from planning import MPPI
    from planning.rollout import score_sequences
    from rewards import RewardOutput

    def reward(states, actions):    # x' = x + u from x0 = (1, -0.5): -inf beyond x[0] > 1.2, +inf below x[0] < 0.5
        r = -(states.feat**2).sum(-1)
        r = torch.where(states.feat[..., 0] > 1.2, -torch.inf, r)
        return RewardOutput(torch.where(states.feat[..., 0] < 0.5, torch.inf, r), torch.zeros_like(r), {})

    class Recording(type(toys.linear())):
        batches: list = []

        def imagine(self, state, actions, *, sample=False):
            self.batches.append(actions.clone())
            return super().imagine(state, actions, sample=sample)

    model = Recording(np.eye(2), np.eye(2))
    planner = MPPI(model, reward, 2, num_samples=256, noise_std=0.5, seed=0)
    planner.plan(toys.linear_state())
    w, returns = planner.last_weights, score_sequences(model, toys.linear_state(), model.batches[0], reward).returns
    assert torch.isfinite(w).all() and float(w.sum()) == pytest.approx(1.0)
    assert (returns == torch.inf).any() and (returns == -torch.inf).any()
    assert float(w[returns == torch.inf].sum()) == pytest.approx(1.0)
    assert float(w[returns == -torch.inf].sum()) == 0.0


def test_a_vetoed_decision_reports_the_imagined_return_of_the_plan_it_executes(toys):
    """At the chain's end the planner (constraints ignored) proposes 1,1,1 (8 per step, cost 1 each); the shield
    executes 0 instead and rewrites the plan to 0,1,1. PlanInfo must describe that plan (5 + 8 + 8 = 21, cost 2),
    not the vetoed proposal (24, cost 3): closed-loop Decisions pair predicted_return with the realised return."""
    from planning import Shield, make_planner
    from planning.rollout import score_sequences

    model = toys.ChainModel(danger=True)
    planner = make_planner("exhaustive", model, toys.chain_reward, 3, cost_limit=math.inf)
    _, proposed = planner.plan(model.state(4))
    assert proposed.predicted_return == 24.0 and proposed.predicted_cost == 3.0
    planner.reset()
    action, info = Shield(planner, threshold=0.0).plan(model.state(4))
    assert info.vetoed and int(action) == 0 and planner.last_plan.tolist() == [0, 1, 1]
    ref = score_sequences(model, model.state(4), planner.last_plan[None], toys.chain_reward)
    assert info.predicted_return == float(ref.returns[0]) == 21.0
    assert info.predicted_cost == float(ref.costs[0]) == 2.0
