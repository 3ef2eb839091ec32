"""Gymnasium wrappers for any :class:`~worlds.base.VectorWorld`, and gym id registration.

* :class:`WorldEnv` -- the gymnasium single-env API over a world with ``num_envs=1``;
* :class:`WorldVectorEnv` -- a native ``gymnasium.vector.VectorEnv`` over a world with N envs
  (next-step autoreset, gymnasium's default: the step after an episode ends returns the first
  observation of a new one, with reward 0 and both flags false, and ignores that env's action);
* :func:`register_gym_id` / :func:`register_gym_ids` -- ``ontolab/<ClassName>-v0`` ids, so that
  ``gym.make(id, **params)`` and ``gym.make_vec(id, num_envs, vectorization_mode=...)`` work for both
  ``"vector_entry_point"`` and ``"sync"``. Keyword arguments are the world's parameters.

``info`` carries evaluation-only labels: ``concepts`` (``{name: value}``), ``success``, ``violation``
and ``family`` (index into the world's ``families``). The vector env batches them like gymnasium's
``SyncVectorEnv`` does (each key with a boolean ``_key`` mask, here always all true).

Gym ids exist once registered: ``import worlds.lavakeydoor`` (or call :func:`register_gym_ids`)
before ``gym.make("ontolab/LavaKeyDoor-v0")``, or use ``gym.make("worlds.lavakeydoor:ontolab/LavaKeyDoor-v0")``.

Next-step autoreset steps the done envs with a zero action and discards the result before
resetting them, so a world's ``step`` must accept envs that are already done.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from worlds.base import VectorWorld
from worlds.registry import get_world, make_world, world_names

_METADATA = {"render_modes": ["rgb_array"], "render_fps": 8}


def _build(world: str | VectorWorld, num_envs: int, seed: int | None, params: dict[str, Any]) -> VectorWorld:
    """A world from a registered name and params, or an already built world (then ``params`` must be empty)."""
    if isinstance(world, VectorWorld):
        if params:
            raise ValueError(f"pass parameters when building a world by name, not with an instance; got {sorted(params)}")
        if world.num_envs != num_envs:
            raise ValueError(f"the world must have num_envs={num_envs}, got {world.num_envs}")
        return world
    return make_world(world, num_envs=num_envs, seed=seed, **params)


def _render_setup(env: Any, world: VectorWorld, render_mode: str | None) -> None:
    """Set ``env.metadata`` (``rgb_array`` only if the world has ``render()``) and ``env.render_mode``."""
    modes = ["rgb_array"] if callable(getattr(world, "render", None)) else []
    env.metadata = {**env.metadata, "render_modes": modes}
    if render_mode is not None and render_mode not in modes:
        raise ValueError(f"render_mode must be None or one of {modes} for world {world.name!r}, got {render_mode!r}")
    env.render_mode = render_mode


class WorldEnv(gym.Env):
    """One environment of a registered world, behind the gymnasium single-env API.

    ``WorldEnv("lavakeydoor", seed=0, size=11)`` or ``WorldEnv(existing_world_with_one_env)``.
    ``reset(seed=s)`` reseeds the world's own generator, so a seed gives the same episodes as the
    vectorised world built with ``seed=s`` (the world, not ``self.np_random``, draws the layouts).
    """

    metadata = _METADATA
    """Class-level default; each instance lists ``rgb_array`` only if its world can render."""

    def __init__(self, world: str | VectorWorld = "lavakeydoor", seed: int | None = None,
                 render_mode: str | None = None, **params: Any):
        self.world = _build(world, 1, seed, params)
        self.observation_space = self.world.single_observation_space
        self.action_space = self.world.single_action_space
        _render_setup(self, self.world, render_mode)

    def _info(self, success: bool = False, violation: bool = False) -> dict[str, Any]:
        return {
            "concepts": {k: v[0].copy() for k, v in self.world.concepts().items()},
            "success": success,
            "violation": violation,
            "family": int(self.world.family()[0]),
        }

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        obs = self.world.reset(seed=seed)
        return obs[0].copy(), self._info()

    def step(self, action):
        res = self.world.step(np.asarray(action)[None])
        info = self._info(bool(res.success[0]), bool(res.violation[0]))
        return res.obs[0].copy(), float(res.reward[0]), bool(res.terminated[0]), bool(res.truncated[0]), info

    def render(self):
        if self.render_mode == "rgb_array":
            return self.world.render()[0]
        return None


class WorldVectorEnv(VectorEnv):
    """``num_envs`` environments of a registered world as a native gymnasium vector env (next-step autoreset).

    ``reset(options={"reset_mask": bool[n]})`` resets only the masked envs, as ``SyncVectorEnv`` does.
    """

    metadata = {**_METADATA, "autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(self, num_envs: int, world: str | VectorWorld = "lavakeydoor", seed: int | None = None,
                 render_mode: str | None = None, **params: Any):
        self.world = _build(world, num_envs, seed, params)
        self.num_envs = num_envs
        self.single_observation_space = self.world.single_observation_space
        self.single_action_space = self.world.single_action_space
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        _render_setup(self, self.world, render_mode)
        self._autoreset = np.zeros(num_envs, dtype=bool)
        sample = np.asarray(self.single_action_space.sample())
        self._zero_action = np.zeros_like(sample)

    def _info(self, success: np.ndarray, violation: np.ndarray) -> dict[str, Any]:
        ones = np.ones(self.num_envs, dtype=bool)
        concepts: dict[str, np.ndarray] = {}
        for k, v in self.world.concepts().items():
            concepts[k], concepts[f"_{k}"] = v, ones.copy()
        return {
            "concepts": concepts, "_concepts": ones.copy(),
            "success": success, "_success": ones.copy(),
            "violation": violation, "_violation": ones.copy(),
            "family": self.world.family(), "_family": ones.copy(),
        }

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        mask = None if options is None else options.get("reset_mask")
        if mask is not None:
            mask = np.asarray(mask)
            if mask.shape != (self.num_envs,) or mask.dtype != np.bool_:
                raise ValueError(f"options['reset_mask'] must be bool of shape ({self.num_envs},), got {mask.dtype} {mask.shape}")
        obs = self.world.reset(seed=seed, mask=mask)
        self._autoreset[... if mask is None else mask] = False
        zeros = np.zeros(self.num_envs, dtype=bool)
        return obs, self._info(zeros, zeros.copy())

    def step(self, actions):
        actions = np.asarray(actions)
        redo = self._autoreset.copy()
        if redo.any():
            actions = actions.copy()
            actions[redo] = self._zero_action
        res = self.world.step(actions)
        obs, reward = res.obs, res.reward.astype(np.float64)
        terminated, truncated = res.terminated.copy(), res.truncated.copy()
        success, violation = res.success.copy(), res.violation.copy()
        if redo.any():
            obs = self.world.reset(mask=redo)
            for a in (terminated, truncated, success, violation):
                a[redo] = False
            reward[redo] = 0.0
        self._autoreset = terminated | truncated
        return obs, reward, terminated, truncated, self._info(success, violation)

    def render(self):
        if self.render_mode == "rgb_array":
            return tuple(self.world.render())
        return None


def register_gym_id(world_name: str, gym_id: str) -> None:
    """Register ``gym_id`` for the world ``world_name`` (single and vector entry points; idempotent).

    The world is looked up only when the env is made, so a world package may call this at import.
    """
    existing = gym.registry.get(gym_id)
    if existing is not None and existing.kwargs.get("world") == world_name:
        return
    gym.register(
        id=gym_id,
        entry_point="worlds.gym_env:WorldEnv",
        vector_entry_point="worlds.gym_env:WorldVectorEnv",
        kwargs={"world": world_name},
    )


def register_gym_ids() -> dict[str, str]:
    """Register ``ontolab/<ClassName>-v0`` for every registered world; returns ``{world name: gym id}``."""
    ids = {name: f"ontolab/{get_world(name).cls.__name__}-v0" for name in world_names()}
    for name, gym_id in ids.items():
        register_gym_id(name, gym_id)
    return ids
