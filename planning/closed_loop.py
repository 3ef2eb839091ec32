"""The closed loop: a policy acts in the REAL world for N episodes, vectorised across episodes.

::

    world = make_world("lavakeydoor", num_envs=16, seed=0)
    planner = make_planner("discrete_cem", model, concept_reward(spec.compile(world.schema), ontology.resolver), 15)
    policy = ModelPlannerPolicy(model, planner, world.num_envs, reader=ontology.resolver, read_names=ontology.concepts)
    log = run_closed_loop(world, policy, episodes=100, seed=0, true_reward=true_step_reward(spec, world.schema))
    log.success.mean(), log.decisions.predicted_return, log.decisions.realised_return, log.visited.readings["in_lava"]

The world steps all ``n`` envs as arrays; each env runs one episode after another until ``episodes``
episodes have finished (an env with no episode left idles: it is reset and its actions ignored). Per
real step the loop calls, for all envs at once::

    policy.act(world, obs, active)            -> actions [n *act] (+ one PlanInfo per planning env)
    world.step(actions)                       -> true reward, success, violation, termination
    policy.update(world, obs, actions, active)   filter the new observation (model-based policies)
    world.reset(mask=done); policy.start(...)    new episodes in the finished envs

Policies: :class:`RandomPolicy`, :class:`OraclePolicy` (``world.oracle_actions``: shortest path,
analytic controller), :class:`ModelPlannerPolicy` (a planner on a learned model's posterior, filtered
from the real observations by :class:`LatentFilter`) and :class:`TrueStatePlannerPolicy` (a planner on
an :class:`~planning.oracle.OracleModel`, given the world's true state). ``ms_per_step`` of an episode
is the wall time of the ``update`` + ``act`` calls of its steps divided by the number of envs acting
in them: the amortised cost of one real decision, comparable across policies.

Visited states (for the planner-induced shift): every state an episode passes through (the start,
every state reached, the terminal one) is recorded with its TRUE concept values and, when the policy
has a ``reader`` (a fitted ontology's resolver), the probes' readings of the filtered posterior.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from dynamics.base import DynamicsModel, LatentState
from planning.latent_filter import LatentFilter
from planning.planner import PlanInfo
from planning.types import ConceptReader
from rewards import RewardSpec
from worlds.base import VectorWorld
from worlds.concepts import ConceptSchema


@dataclass(frozen=True)
class PolicyStep:
    """What a policy returns for one real step."""

    actions: np.ndarray
    """``[n *act]`` actions of every env (those of inactive envs are ignored)."""
    infos: Mapping[int, PlanInfo]
    """Env index -> the planner's :class:`PlanInfo` for that env's decision (model-based policies only)."""


class Policy:
    """Base class: ``act`` is abstract; ``start``/``update`` feed an optional :class:`LatentFilter`
    (``observer``) and ``read`` returns the ``reader``'s values of ``read_names`` on its posterior."""

    name = "policy"

    def __init__(self, *, observer: LatentFilter | None = None, reader: ConceptReader | None = None,
                 read_names: Sequence[str] = ()):
        if read_names and (observer is None or reader is None):
            raise ValueError(f"reading concepts {list(read_names)} needs both an observer (LatentFilter) and a reader")
        self.observer, self.reader, self.read_names = observer, reader, tuple(read_names)

    def start(self, world: VectorWorld, obs: np.ndarray, mask: np.ndarray) -> None:
        if self.observer is not None:
            self.observer.start(obs, mask)

    def update(self, world: VectorWorld, obs: np.ndarray, actions: np.ndarray, mask: np.ndarray) -> None:
        if self.observer is not None:
            self.observer.update(obs, actions, mask)

    def act(self, world: VectorWorld, obs: np.ndarray, mask: np.ndarray) -> PolicyStep:
        raise NotImplementedError

    def read(self) -> dict[str, np.ndarray]:
        """``{name: [n]}`` the reader's hard values (``"value"`` mode) on every env's current posterior."""
        if not self.read_names or self.observer is None or self.observer.state is None:
            return {}
        with torch.inference_mode():
            resolve = self.reader(self.observer.state)
            return {k: resolve(k, "value").detach().cpu().numpy() for k in self.read_names}


class RandomPolicy(Policy):
    """Uniformly random actions (``world.sample_actions``) from a seeded generator."""

    name = "random"

    def __init__(self, seed: int = 0, **kw):
        super().__init__(**kw)
        self.rng = np.random.default_rng(seed)

    def act(self, world: VectorWorld, obs: np.ndarray, mask: np.ndarray) -> PolicyStep:
        return PolicyStep(world.sample_actions(self.rng), {})


class OraclePolicy(Policy):
    """The world's expert (``world.oracle_actions``): reads the true state, privileged."""

    name = "oracle"

    def act(self, world: VectorWorld, obs: np.ndarray, mask: np.ndarray) -> PolicyStep:
        return PolicyStep(world.oracle_actions(), {})


class ModelPlannerPolicy(Policy):
    """A planner (or a :class:`~planning.shield.Shield` around one) acting from a learned model's posterior.

    One planner object serves every env: its warm start (:meth:`~planning.planner.Planner.warm_state`:
    the previous plan, and iCEM's kept elites) is kept per env and loaded before each env's decision, and
    cleared when the env starts an episode, so no env is warm-started from another env's search.
    Planners plan for one state at a time, so the envs are planned in a Python loop (each decision is itself one batched
    ``imagine`` per optimiser iteration); filtering is batched over envs. On CPU the loop costs nothing
    measurable: one ``imagine`` of ``k * n`` sequences took as long as ``k`` calls of ``n`` (RSSM, 1 thread:
    173 vs 170 ms for 8 x 64, 1256 vs 1007 ms for 16 x 256, horizon 8), the work being matmul-bound. On a
    GPU, where small calls are launch-bound, planning all envs in one call would pay (not measured).
    """

    name = "model_planner"

    def __init__(self, model: DynamicsModel, planner, num_envs: int, *, context: int | None = None,
                 device: torch.device | str | None = None, reader: ConceptReader | None = None,
                 read_names: Sequence[str] = ()):
        super().__init__(observer=LatentFilter(model, num_envs, context=context, device=device),
                         reader=reader, read_names=read_names)
        self.model, self.planner = model, planner
        self._warm: list[dict[str, torch.Tensor | None] | None] = [None] * num_envs   # per env; None: fresh

    def start(self, world: VectorWorld, obs: np.ndarray, mask: np.ndarray) -> None:
        super().start(world, obs, mask)
        for i in np.flatnonzero(mask):
            self._warm[i] = None

    def states(self, world: VectorWorld) -> LatentState:
        """``[n ...]`` the latent states the planner plans from: the filtered posteriors."""
        return self.observer.state

    def act(self, world: VectorWorld, obs: np.ndarray, mask: np.ndarray) -> PolicyStep:
        states = self.states(world)
        actions = np.zeros((world.num_envs, *world.single_action_space.shape),
                           dtype=np.int64 if world.discrete_actions else np.float32)
        infos = {}
        for i in np.flatnonzero(mask):  # planners take a batch-1 state: one decision per env
            self.planner.load_warm_state(self._warm[i])
            a, info = self.planner.plan(states.at(slice(i, i + 1)))
            self._warm[i] = self.planner.warm_state()
            actions[i] = a.detach().cpu().numpy()
            infos[int(i)] = info
        return PolicyStep(actions, infos)


class TrueStatePlannerPolicy(ModelPlannerPolicy):
    """A planner on an :class:`~planning.oracle.OracleModel`: it plans from the world's TRUE state
    (``oracle.state_of(world)``), so its failures are the planner's and the reward's alone. An optional
    ``observer``/``reader`` (a learned model's filter and an ontology) still records probe readings."""

    name = "true_state_planner"

    def __init__(self, oracle, planner, num_envs: int, *, device: torch.device | str | None = None,
                 observer: LatentFilter | None = None, reader: ConceptReader | None = None,
                 read_names: Sequence[str] = ()):
        Policy.__init__(self, observer=observer, reader=reader, read_names=read_names)
        self.model, self.planner, self.device = oracle, planner, device
        self._warm = [None] * num_envs

    def states(self, world: VectorWorld) -> LatentState:
        return self.model.state_of(world, device=self.device)


@dataclass(frozen=True)
class Decisions:
    """One entry per planning decision (model-based policies), arrays ``[d]``."""

    episode: np.ndarray
    step: np.ndarray
    """Real steps taken in the episode before the decision (its state is the one after ``step`` steps)."""
    predicted_return: np.ndarray
    """Imagined return of the returned plan: ``sum_{k<h} discount**k * r(imagined state after action k)``
    (:class:`~planning.planner.PlanInfo`; ``h`` and ``discount`` are the planner's)."""
    realised_return: np.ndarray
    """What the real world then paid over the same ``h`` steps, discounted the same way:
    ``sum_{k < min(h, T - step)} discount**k * r_true(s[step + k + 1])``, where ``s[t]`` is the episode's real
    state after ``t`` steps and ``T`` its length (cut at the episode's end: no absorbing tail, unlike the oracle
    model's imagination). ``r_true`` is ``run_closed_loop``'s ``true_reward`` (e.g. the planner's reward spec
    on the true concepts, :func:`true_step_reward`), or the world's own step reward without one. The policy
    keeps re-planning, so this is the return of the closed loop, not of the single plan."""
    predicted_cost: np.ndarray
    elite_spread: np.ndarray
    latency_ms: np.ndarray
    vetoed: np.ndarray


@dataclass(frozen=True)
class Visited:
    """Every state the episodes passed through, arrays ``[m]``: true concepts and the probes' readings."""

    episode: np.ndarray
    step: np.ndarray
    truth: Mapping[str, np.ndarray]
    """``{concept: [m]}`` true values (``world.concepts()``)."""
    readings: Mapping[str, np.ndarray]
    """``{concept: [m]}`` the policy reader's values on the filtered posterior (empty without a reader)."""


@dataclass(frozen=True)
class EpisodeLog:
    """The outcome of :func:`run_closed_loop`: per-episode arrays ``[e]`` (episode ``k`` at index ``k``),
    per-decision :class:`Decisions` and the :class:`Visited` states."""

    policy: str
    true_return: np.ndarray
    """``float64[e]`` undiscounted sum of the world's true rewards."""
    success: np.ndarray
    """``bool[e]`` the task was achieved."""
    violations: np.ndarray
    """``int64[e]`` steps on which a boundary was crossed (0 or 1 when violations terminate)."""
    steps: np.ndarray
    """``int64[e]`` real steps taken."""
    truncated: np.ndarray
    """``bool[e]`` the episode hit the time limit."""
    ms_per_step: np.ndarray
    """``float64[e]`` amortised wall milliseconds per decision (see the module docstring)."""
    env: np.ndarray
    """``int64[e]`` the env that ran the episode."""
    decisions: Decisions
    visited: Visited

    @property
    def num_episodes(self) -> int:
        return int(self.true_return.shape[0])


TrueReward = Callable[[Mapping[str, np.ndarray]], np.ndarray]
"""``true_reward(concepts {name: [n]}) -> [n]``: the true reward of every env's current state, from the
world's true concept values (``world.concepts()``)."""


def true_step_reward(spec: RewardSpec, schema: ConceptSchema) -> TrueReward:
    """The :data:`TrueReward` of a reward spec: ``spec`` evaluated on the true concepts (evaluation only)."""
    true = spec.true_reward_fn(schema)  # checked and compiled once, not on every step

    def reward(concepts: Mapping[str, np.ndarray]) -> np.ndarray:
        return true(concepts).reward.detach().cpu().numpy().astype(np.float64)

    return reward


def _check_reward(r: np.ndarray, n: int) -> np.ndarray:
    r = np.asarray(r, dtype=np.float64)
    if r.shape != (n,):
        raise ValueError(f"true_reward must return one reward per env, shape ({n},), got {r.shape}")
    return r


def _realised(rewards: Sequence[float], horizon: int, discount: float) -> float:
    """``sum_k discount**k * rewards[k]`` over the first ``horizon`` entries (fewer at an episode's end)."""
    r = np.asarray(rewards[:horizon], dtype=np.float64)
    return float((r * discount ** np.arange(r.size)).sum())


def run_closed_loop(world: VectorWorld, policy: Policy, episodes: int, *, seed: int = 0,
                    true_reward: TrueReward | None = None, progress: bool = False) -> EpisodeLog:
    """Run ``policy`` in ``world`` until ``episodes`` episodes have finished (see the module docstring).

    ``world.reset(seed=seed)`` starts the run, so two policies run with one seed see the same stream of
    layouts (assigned to episodes in the order envs finish, so pairing is approximate). ``true_reward``
    (e.g. :func:`true_step_reward` of the planner's spec) is the per-step reward ``Decisions.realised_return``
    sums; without it, the world's own reward.
    """
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    n = world.num_envs
    ret, succ, viol, steps, trunc, ms = (np.zeros(episodes) for _ in range(6))
    env_of = np.full(episodes, -1, dtype=np.int64)
    dec: dict[str, list] = {k: [] for k in Decisions.__dataclass_fields__ if k != "realised_return"}
    plans: list[tuple[int, float]] = []                       # (horizon, discount) of each decision
    paid: list[list[float]] = [[] for _ in range(episodes)]  # true reward of every step of every episode
    vis_ep, vis_step, truth, readings = [], [], {}, {}
    ep = np.full(n, -1, dtype=np.int64)                      # episode each env is running (-1: idle)
    ep[: min(n, episodes)] = np.arange(min(n, episodes))
    env_of[ep[ep >= 0]] = np.flatnonzero(ep >= 0)
    next_ep, t = min(n, episodes), np.zeros(n, dtype=np.int64)

    def record(mask: np.ndarray, concepts: Mapping[str, np.ndarray]) -> None:
        if not mask.any():
            return
        vis_ep.append(ep[mask]), vis_step.append(t[mask])
        for k, v in concepts.items():
            truth.setdefault(k, []).append(np.asarray(v)[mask])
        for k, v in policy.read().items():
            readings.setdefault(k, []).append(np.asarray(v)[mask])

    obs = world.reset(seed=seed)
    active = ep >= 0
    tic = time.perf_counter()
    policy.start(world, obs, np.ones(n, dtype=bool))
    spent = (time.perf_counter() - tic) * 1e3
    record(active, world.concepts())                         # evaluation only: not part of a decision's cost
    bar = tqdm(total=episodes, disable=not progress, desc=f"closed loop ({policy.name})", unit="episode")
    while active.any():
        tic = time.perf_counter()
        out = policy.act(world, obs, active)
        spent += (time.perf_counter() - tic) * 1e3
        for i, info in out.infos.items():
            for k, v in (("episode", ep[i]), ("step", t[i]), ("predicted_return", info.predicted_return),
                         ("predicted_cost", info.predicted_cost), ("elite_spread", info.elite_spread),
                         ("latency_ms", info.latency_ms), ("vetoed", info.vetoed)):
                dec[k].append(v)
            plans.append((info.horizon, info.discount))
        res = world.step(out.actions)
        concepts = world.concepts()                          # of the states just reached (before any reset)
        paid_now = res.reward if true_reward is None else _check_reward(true_reward(concepts), n)
        idx = ep[active]
        for i in np.flatnonzero(active):
            paid[ep[i]].append(float(paid_now[i]))
        ret[idx] += res.reward[active]
        viol[idx] += res.violation[active]
        succ[idx] = np.maximum(succ[idx], res.success[active])
        steps[idx] += 1
        ms[idx] += spent / active.sum()
        t[active] += 1
        tic = time.perf_counter()
        policy.update(world, res.obs, out.actions, active)
        spent = (time.perf_counter() - tic) * 1e3
        record(active, concepts)
        done = active & (res.terminated | res.truncated)
        trunc[ep[done]] = res.truncated[done]
        if done.any():
            bar.update(int(done.sum()))
            ep[done] = -1
            fresh = np.flatnonzero(done)[: max(episodes - next_ep, 0)]
            ep[fresh] = np.arange(next_ep, next_ep + len(fresh))
            env_of[ep[fresh]] = fresh
            next_ep += len(fresh)
            obs = world.reset(mask=done)                     # idle envs are reset too (the world's contract)
            started = np.zeros(n, dtype=bool)
            started[fresh] = True
            t[done] = 0
            tic = time.perf_counter()
            policy.start(world, obs, started)
            spent += (time.perf_counter() - tic) * 1e3
            record(started, world.concepts())
        else:
            obs = res.obs
        active = ep >= 0
    bar.close()
    cat = lambda parts, dtype=None: np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)  # noqa: E731
    realised = [_realised(paid[e][t_:], h, g) for e, t_, (h, g) in zip(dec["episode"], dec["step"], plans)]
    decisions = Decisions(**{k: np.asarray(v, dtype=bool if k == "vetoed" else np.int64 if k in ("episode", "step")
                                           else np.float64) for k, v in dec.items()},
                          realised_return=np.asarray(realised, dtype=np.float64))
    visited = Visited(cat(vis_ep, np.int64), cat(vis_step, np.int64), {k: cat(v) for k, v in truth.items()},
                      {k: cat(v) for k, v in readings.items()})
    with np.errstate(invalid="ignore", divide="ignore"):
        per_step = np.where(steps > 0, ms / np.maximum(steps, 1), 0.0)
    return EpisodeLog(policy.name, ret, succ.astype(bool), viol.astype(np.int64), steps.astype(np.int64),
                      trunc.astype(bool), per_step, env_of, decisions, visited)
