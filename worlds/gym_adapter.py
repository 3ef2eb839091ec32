"""Any gymnasium env plus a labeler function as an ontolab world (:class:`GymAdapterWorld`).

:class:`GymAdapterWorld` holds ``num_envs`` independent copies of a gymnasium env and steps them
**in a Python loop** (it is an adapter for envs that are not vectorised: expect ``num_envs`` times
the cost of one env). You bring

* ``make_env``  -- a zero-argument env factory, or ``{family_name: factory}`` for several layout families;
* ``labeler(env) -> {concept_name: value}`` -- reads the true concepts from ``env.unwrapped``;
* a :class:`~worlds.concepts.ConceptSchema` naming those concepts;
* optionally ``encode(raw_obs) -> array`` with its ``observation_space`` (default: the env's own
  observation, cast to its space's dtype), ``outcome(env, reward, terminated) -> (success, violation)``
  (default: success = terminated with positive reward, never a violation) and
  ``oracle(env) -> action`` (default: uniformly random actions -- say so when you report a baseline).

Each reset draws the env's seed from the world's generator, so a seeded world is reproducible.
An env that is already done is not stepped (it keeps its observation, flags false) until it is reset.

The MiniGrid worlds built on it are in :mod:`worlds.minigrid_adapter`.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import gymnasium as gym
import numpy as np

from worlds.base import StepResult, VectorWorld
from worlds.concepts import ConceptSchema

Labeler = Callable[[gym.Env], Mapping[str, Any]]
"""``labeler(env.unwrapped) -> {concept_name: value}`` for one env."""
Outcome = Callable[[gym.Env, float, bool], tuple[bool, bool]]
"""``outcome(env.unwrapped, reward, terminated) -> (success, violation)`` after one step."""


def _default_outcome(env: gym.Env, reward: float, terminated: bool) -> tuple[bool, bool]:
    return bool(terminated and reward > 0), False


class GymAdapterWorld(VectorWorld):
    """``num_envs`` copies of a gymnasium env with a labeler; see the module docstring."""

    name = "gym_adapter"
    families = ("default",)

    def __init__(
        self,
        make_env: Callable[[], gym.Env] | Mapping[str, Callable[[], gym.Env]],
        labeler: Labeler,
        schema: ConceptSchema,
        num_envs: int = 1,
        seed: int | None = None,
        *,
        encode: Callable[[Any], np.ndarray] | None = None,
        observation_space: gym.Space | None = None,
        obs_kind: str = "vector",
        outcome: Outcome = _default_outcome,
        oracle: Callable[[gym.Env], Any] | None = None,
        action_space: gym.spaces.Discrete | None = None,
        sample_families: Sequence[str] | None = None,
        ood_families: Sequence[str] = (),
    ):
        makers = dict(make_env) if isinstance(make_env, Mapping) else {"default": make_env}
        self.families = tuple(makers)
        self.ood_families = tuple(ood_families)
        self.sample_families = tuple(sample_families or self.families)
        bad = [f for f in (*self.sample_families, *self.ood_families) if f not in makers]
        if bad:
            raise ValueError(f"families {bad} have no env factory; known families: {', '.join(self.families)}")
        self._makers, self.labeler, self.schema = makers, labeler, schema
        self.num_envs, self.obs_kind, self.outcome, self.oracle = num_envs, obs_kind, outcome, oracle
        self.rng = np.random.default_rng(seed)
        first = makers[self.sample_families[0]]()
        self._envs: list[dict[str, gym.Env]] = [{} for _ in range(num_envs)]
        self._envs[0][self.sample_families[0]] = first
        if encode is None:
            if observation_space is not None:
                raise ValueError("observation_space is only needed together with encode; pass both or neither")
            observation_space = first.observation_space
            encode = lambda o: np.asarray(o, dtype=first.observation_space.dtype)  # noqa: E731
        elif observation_space is None:
            raise ValueError("pass the observation_space of encode's output together with encode")
        self.encode, self.single_observation_space = encode, observation_space
        self.single_action_space = action_space or first.action_space
        env_space = first.action_space
        if action_space is not None and not (isinstance(env_space, gym.spaces.Discrete) and action_space.n <= env_space.n):
            raise ValueError(f"action_space must be a Discrete prefix of the env's {env_space}, got {action_space}")
        self._current: list[gym.Env | None] = [None] * num_envs
        self._fam = np.zeros(num_envs, np.int64)
        shape, dtype = observation_space.shape or (), observation_space.dtype or np.float32
        self._obs = np.zeros((num_envs, *shape), dtype)
        self.done = np.ones(num_envs, bool)

    def envs(self) -> list[gym.Env]:
        """The unwrapped env of each slot's current episode (for tests and labelers)."""
        if any(e is None for e in self._current):
            raise RuntimeError("call reset() before reading the envs")
        return [e.unwrapped for e in self._current]

    def reset(self, seed: int | None = None, mask: np.ndarray | None = None) -> np.ndarray:
        mask = self._reset_mask(seed, mask)
        for i in np.flatnonzero(mask):  # adapter: one Python call per env
            fam = self.sample_families[self.rng.integers(len(self.sample_families))]
            if fam not in self._envs[i]:
                self._envs[i][fam] = self._makers[fam]()
            env = self._current[i] = self._envs[i][fam]
            raw, _ = env.reset(seed=int(self.rng.integers(2**31 - 1)))
            self._obs[i], self._fam[i] = self.encode(raw), self.families.index(fam)
        self.done[mask] = False
        return self._obs.copy()

    def step(self, actions: np.ndarray) -> StepResult:
        actions = np.asarray(actions)
        if actions.shape[:1] != (self.num_envs,):
            raise ValueError(f"actions must have leading dim {self.num_envs}, got shape {actions.shape}")
        n = self.num_envs
        reward, term, trunc = np.zeros(n, np.float32), np.zeros(n, bool), np.zeros(n, bool)
        success, violation = np.zeros(n, bool), np.zeros(n, bool)
        discrete = self.discrete_actions
        for i, env in enumerate(self._current):
            if self.done[i]:  # not stepped: its result is meaningless and the caller resets it
                continue
            a = int(actions[i]) if discrete else np.asarray(actions[i], self.single_action_space.dtype)
            raw, r, term[i], trunc[i], _ = env.step(a)
            self._obs[i], reward[i] = self.encode(raw), r
            success[i], violation[i] = self.outcome(env.unwrapped, float(r), bool(term[i]))
        trunc &= ~term
        self.done |= term | trunc
        return StepResult(self._obs.copy(), reward, term, trunc, success, violation)

    def concepts(self) -> dict[str, np.ndarray]:
        rows = [self.labeler(env) for env in self.envs()]
        out = {c.name: np.array([row[c.name] for row in rows], dtype=c.dtype) for c in self.schema}
        extra = sorted(set(rows[0]) - set(self.schema.names))
        if extra:
            raise ValueError(f"labeler returned concepts {extra} that are not in the schema ({', '.join(self.schema.names)})")
        self.schema.check(out)
        return out

    def family(self) -> np.ndarray:
        return self._fam.copy()

    def oracle_actions(self) -> np.ndarray:
        """The ``oracle`` for each env, or uniformly random actions when the world has none."""
        if self.oracle is None:
            return self.sample_actions(self.rng)
        return np.stack([np.asarray(self.oracle(env)) for env in self.envs()])

    def close(self) -> None:
        for slot in self._envs:
            for env in slot.values():
                env.close()
