"""Tiny fake worlds for tests of datasets, collection and later stages.

``CorridorWorld``: a vectorised 1-D corridor of ``length`` cells. Cell 0 is a cliff (stepping on it
is a violation and ends the episode), the last cell a door that opens only with the key; the key
lies at a cell chosen by the layout family. Discrete actions (0 stay, 1 left, 2 right), symbolic
uint8 observations ``[5 1 length]`` (channels floor, cliff, key, door, agent; one per cell).

``PointCorridorWorld``: the same task with a float position, float32 observations
``[x, has_key, key_x]`` and continuous actions ``Box(-1, 1, (1,))``.

Families: ``key_left``, ``key_mid`` and the held-out ``key_right`` (``ood_families``). Fixtures
``corridor`` and ``point_corridor`` are factories: ``corridor(num_envs=4, seed=0, families=None)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import pytest

from worlds.base import StepResult, VectorWorld
from worlds.concepts import Concept, ConceptSchema


@dataclass(frozen=True)
class CorridorParams:
    length: int = 8
    max_steps: int = 20
    families: tuple[str, ...] | None = None
    """Families to draw layouts from (default: the in-distribution ones)."""


class _CorridorBase(VectorWorld):
    families = ("key_left", "key_mid", "key_right")
    ood_families = ("key_right",)

    def __init__(self, num_envs: int, params: CorridorParams = CorridorParams(), seed: int | None = None):
        self.num_envs, self.params = num_envs, params
        self.L = params.length
        allowed = params.families or tuple(f for f in self.families if f not in self.ood_families)
        self._allowed = np.array([self.families.index(f) for f in allowed])
        self._rng = np.random.default_rng(seed)
        self.fam = np.zeros(num_envs, np.int64)
        self.key_x = np.zeros(num_envs)
        self.x = np.zeros(num_envs)
        self.has_key = np.zeros(num_envs, bool)
        self.t = np.zeros(num_envs, np.int64)

    def _key_cell(self, fam: np.ndarray) -> np.ndarray:
        return np.array([2, self.L // 2, self.L - 3])[fam].astype(np.float64)

    def reset(self, seed: int | None = None, mask: np.ndarray | None = None) -> np.ndarray:
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        m = np.ones(self.num_envs, bool) if mask is None else np.asarray(mask, bool)
        k = int(m.sum())
        self.fam[m] = self._rng.choice(self._allowed, size=k)
        self.key_x[m] = self._key_cell(self.fam[m])
        self.x[m] = self._start(k)
        self.has_key[m] = False
        self.t[m] = 0
        return self._obs()

    def step(self, actions: np.ndarray) -> StepResult:
        self.x = self.x + self._move(np.asarray(actions))
        self.t += 1
        self.has_key |= np.abs(self.x - self.key_x) < 0.5
        locked = (self.x >= self.L - 1) & ~self.has_key
        self.x[locked] = self.L - 2
        success = self.x >= self.L - 1
        violation = self.x < 0.5
        terminated = success | violation
        truncated = ~terminated & (self.t >= self.params.max_steps)
        reward = success.astype(np.float32) - violation.astype(np.float32)
        return StepResult(self._obs(), reward, terminated, truncated, success, violation)

    def family(self) -> np.ndarray:
        return self.fam.copy()

    def _target(self) -> np.ndarray:
        return np.where(self.has_key, self.L - 1, self.key_x)


class CorridorWorld(_CorridorBase):
    name = "corridor"
    obs_kind = "symbolic"
    schema = ConceptSchema((
        Concept("has_key", "binary", "the agent carries the key"),
        Concept("near_cliff", "binary", "the agent stands next to the cliff"),
        Concept("region", "categorical", "which third of the corridor the agent is in", classes=("left", "middle", "right")),
        Concept("dist_to_door", "scalar", "cells between the agent and the door", unit="cells", low=0.0, high=64.0),
    ))

    def __init__(self, num_envs: int, params: CorridorParams = CorridorParams(), seed: int | None = None):
        super().__init__(num_envs, params, seed)
        self.single_observation_space = gym.spaces.Box(0, 1, (5, 1, self.L), np.uint8)
        self.single_action_space = gym.spaces.Discrete(3)

    def _start(self, k: int) -> np.ndarray:
        return self._rng.integers(1, self.L - 2, size=k).astype(np.float64)

    def _move(self, a: np.ndarray) -> np.ndarray:
        return np.array([0.0, -1.0, 1.0])[a]

    def _obs(self) -> np.ndarray:
        n, L = self.num_envs, self.L
        cells = np.zeros((n, L), np.int64)  # 0 floor
        cells[:, 0], cells[:, -1] = 1, 3
        envs = np.arange(n)
        no_key = ~self.has_key
        cells[envs[no_key], self.key_x[no_key].astype(np.int64)] = 2
        cells[envs, np.clip(self.x, 0, L - 1).astype(np.int64)] = 4
        obs = (cells[:, None, :] == np.arange(5)[None, :, None]).astype(np.uint8)  # [n 5 L]
        return obs[:, :, None, :]

    def concepts(self) -> dict[str, np.ndarray]:
        return {
            "has_key": self.has_key.astype(np.uint8),
            "near_cliff": (self.x.astype(np.int64) == 1).astype(np.uint8),
            "region": np.minimum(3 * self.x.astype(np.int64) // self.L, 2).astype(np.int64),
            "dist_to_door": (self.L - 1 - self.x).astype(np.float32),
        }

    def oracle_actions(self) -> np.ndarray:
        return np.where(self._target() > self.x, 2, 1).astype(np.int64)


class PointCorridorWorld(_CorridorBase):
    name = "point_corridor"
    obs_kind = "vector"
    schema = ConceptSchema((
        Concept("has_key", "binary", "the agent carries the key"),
        Concept("x", "scalar", "position along the corridor", unit="m", low=-1.0, high=64.0),
    ))

    def __init__(self, num_envs: int, params: CorridorParams = CorridorParams(), seed: int | None = None):
        super().__init__(num_envs, params, seed)
        self.single_observation_space = gym.spaces.Box(-np.inf, np.inf, (3,), np.float32)
        self.single_action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def _start(self, k: int) -> np.ndarray:
        return self._rng.uniform(1.0, 3.0, size=k)

    def _move(self, a: np.ndarray) -> np.ndarray:
        return np.clip(a.reshape(self.num_envs), -1.0, 1.0)

    def _obs(self) -> np.ndarray:
        return np.stack([self.x, self.has_key, self.key_x], axis=1).astype(np.float32)

    def concepts(self) -> dict[str, np.ndarray]:
        return {"has_key": self.has_key.astype(np.uint8), "x": self.x.astype(np.float32)}

    def oracle_actions(self) -> np.ndarray:
        return np.clip(self._target() - self.x, -1.0, 1.0).astype(np.float32)[:, None]


@pytest.fixture
def corridor():
    """Factory: ``corridor(num_envs=4, seed=0, **CorridorParams fields) -> CorridorWorld``."""
    def make(num_envs: int = 4, seed: int | None = 0, **params) -> CorridorWorld:
        return CorridorWorld(num_envs, CorridorParams(**params), seed)
    return make


@pytest.fixture
def point_corridor():
    """Factory: ``point_corridor(num_envs=4, seed=0, **CorridorParams fields) -> PointCorridorWorld``."""
    def make(num_envs: int = 4, seed: int | None = 0, **params) -> PointCorridorWorld:
        return PointCorridorWorld(num_envs, CorridorParams(**params), seed)
    return make
