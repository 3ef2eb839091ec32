"""The interface every world implements: N environments stepped together as arrays.

A world is a vectorised environment plus its :class:`~worlds.concepts.ConceptSchema`, a labeler
(:meth:`VectorWorld.concepts`) and true reward / success / violation signals that are used for
evaluation only -- the dynamics network never sees them.

Subclasses implement
    ``reset(seed, mask) -> obs[n *obs]``       start new episodes (all envs, or those in ``mask``)
    ``step(actions[n *act]) -> StepResult``      advance every env one step; no auto-reset
    ``concepts() -> {name: values[n]}``          true concept values of the current states
    ``family() -> int[n]``                       layout family index of each env's episode
    ``oracle_actions() -> actions[n *act]``      a competent expert (shortest path, analytic controller)
and set the class attributes ``name``, ``families``, ``ood_families``, ``obs_kind`` and the instance attributes
``num_envs``, ``schema``, ``single_observation_space``, ``single_action_space``.

Episodes end with ``terminated`` (success or a boundary violation) or ``truncated`` (time limit);
the caller then resets those envs with ``reset(mask=done)``. Wrapping a world for gymnasium's
single-env and vector APIs is done once, in :mod:`worlds.gym_env`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import gymnasium as gym
import numpy as np

from worlds.concepts import ConceptSchema
from worlds.hidden import HiddenConceptTest


@dataclass(frozen=True)
class StepResult:
    """What one vectorised step returns. Every array has leading dim ``n`` (the number of envs)."""

    obs: np.ndarray
    """``[n *obs_shape]`` observation after the step."""
    reward: np.ndarray
    """``[n]`` float32 true reward -- evaluation only."""
    terminated: np.ndarray
    """``[n]`` bool: the episode ended in the world (success or violation)."""
    truncated: np.ndarray
    """``[n]`` bool: the episode hit its time limit."""
    success: np.ndarray
    """``[n]`` bool: the task was achieved on this step -- evaluation only."""
    violation: np.ndarray
    """``[n]`` bool: a boundary (safety constraint) was crossed on this step -- evaluation only."""


class VectorWorld(ABC):
    """Base class of every ontolab world (see the module docstring for the contract)."""

    name: ClassVar[str]
    """Registry name, e.g. ``"lavakeydoor"``."""
    families: ClassVar[tuple[str, ...]]
    """All layout families this world can generate."""
    ood_families: ClassVar[tuple[str, ...]] = ()
    """Families held out of training for out-of-distribution tests (a subset of ``families``)."""
    view_position_concepts: ClassVar[tuple[str, str] | None] = None
    """For an egocentric grid view that is NOT rotated with the agent: the (row, column) concepts of the
    world cell at the view's centre, so evaluation can tell cells seen before from never-seen ones."""
    cell_names: ClassVar[tuple[str, ...] | None] = None
    """For a symbolic observation: the name of each channel (cell class), so evaluation can report recall by
    class (e.g. lavakeydoor's ``("empty", "wall", "lava", ...)``)."""
    hidden_concept_tests: ClassVar[tuple["HiddenConceptTest", ...]] = ()
    """Steps where the next observation depends on a concept the current one does not show
    (:mod:`worlds.hidden`; symbolic observations), so evaluation can check whether a model *uses* it."""

    obs_kind: ClassVar[str] = "vector"
    """``"symbolic"`` (one-hot uint8 channels ``[c h w]``, exactly one channel set per cell),
    ``"image"`` (uint8 RGB ``[3 h w]``) or ``"vector"`` (float32 ``[d]``). Instances may override it
    (e.g. a world with an RGB option)."""

    num_envs: int
    schema: ConceptSchema
    single_observation_space: gym.Space
    single_action_space: gym.Space

    @abstractmethod
    def reset(self, seed: int | None = None, mask: np.ndarray | None = None) -> np.ndarray:
        """Start new episodes in every env (``mask=None``) or the envs where ``mask[n]`` is true.

        ``seed`` reseeds the world's generator before resetting. Returns observations ``[n *obs]``
        of *all* envs (unchanged ones included).
        """

    def _reset_mask(self, seed: int | None, mask: np.ndarray | None) -> np.ndarray:
        """For :meth:`reset` implementations: reseed ``self.rng`` when ``seed`` is given and return the bool
        mask ``[n]`` of the envs to reset (all when ``mask`` is None); a mask of another shape is refused."""
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        mask = np.ones(self.num_envs, bool) if mask is None else np.asarray(mask, bool)
        if mask.shape != (self.num_envs,):
            raise ValueError(f"mask must have shape ({self.num_envs},), got {mask.shape}")
        return mask

    @abstractmethod
    def step(self, actions: np.ndarray) -> StepResult:
        """Apply ``actions[n *act]`` to every env. Envs that are already done must be reset first."""

    @abstractmethod
    def concepts(self) -> dict[str, np.ndarray]:
        """True value of every schema concept in every env's current state: ``{name: [n]}``."""

    @abstractmethod
    def family(self) -> np.ndarray:
        """``int64[n]``: index into ``families`` of each env's current layout."""

    @abstractmethod
    def oracle_actions(self) -> np.ndarray:
        """``[n *act]``: what a competent expert would do now (used by collection policies and as a baseline)."""

    @property
    def discrete_actions(self) -> bool:
        """True when actions are integer indices (a ``Discrete`` action space)."""
        return isinstance(self.single_action_space, gym.spaces.Discrete)

    def sample_actions(self, rng: np.random.Generator) -> np.ndarray:
        """``[n *act]`` uniformly random actions drawn from ``rng`` (vectorised, no loop over envs)."""
        space = self.single_action_space
        if isinstance(space, gym.spaces.Discrete):
            return rng.integers(space.start, space.start + space.n, size=self.num_envs, dtype=np.int64)
        if isinstance(space, gym.spaces.Box):
            return rng.uniform(space.low, space.high, size=(self.num_envs, *space.shape)).astype(space.dtype)
        raise TypeError(f"sample_actions supports Discrete and Box action spaces, got {type(space).__name__}")
